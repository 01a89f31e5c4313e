"""MeViS reader: motion expressions that may refer to several objects.

Layout (``root`` local or a pyarrow.fs URI)::

    <root>/<split>/JPEGImages/<vid>/<frame>.jpg
    <root>/<split>/meta_expressions.json
        {"videos": {vid: {"expressions": {"<exp_id>": {"exp": str, "obj_id": [int, ...],
                                                       "anno_id": [int, ...]}},
                          "frames": [frame names]}}}
    <root>/<split>/mask_dict.json
        {"<anno_id>": [COCO RLE {"size": [h, w], "counts": str} or null, one per frame]}

An expression's referred mask on a frame is the union of its ``anno_id`` masks (null = the
object is absent there). :class:`Expression.obj_ids` therefore holds the **anno ids** (the keys
of ``mask_dict.json``), which is what :meth:`MeViS.object_mask` takes. ``mask_dict.json`` is
read on the first mask request, not when the reader is built.
"""

from __future__ import annotations

import numpy as np

from rvos_ray import masks
from rvos_ray.data import io as dio
from rvos_ray.data.errors import DataError
from rvos_ray.data.refytvos import MetaVideos, parse_obj_id, read_json, require
from rvos_ray.types import Expression


class MeViS(MetaVideos):
    """One split of MeViS (``train``, ``valid_u``, ``valid``): same methods as
    :class:`~rvos_ray.data.refytvos.RefYTVOS` where they make sense (no palette label maps,
    no categories)."""

    dataset = "mevis"

    def __init__(self, root: str, split: str) -> None:
        super().__init__(root, split)
        self.split_dir = dio.join(self.root, split)
        if not dio.is_dir(self.split_dir):
            have = [n for n in dio.list_dir(self.root) if dio.is_dir(dio.join(self.root, n))]
            raise DataError(f"split folder {self.split_dir} does not exist (folders: {', '.join(have) or 'none'})")
        self.meta_path = dio.join(self.split_dir, "meta_expressions.json")
        self._videos = self._load_meta(self.meta_path)
        self._ids = sorted(self._videos)
        self._idset = set(self._ids)
        self.mask_dict_path = dio.join(self.split_dir, "mask_dict.json")
        self._mask_dict: dict | None = None

    def expressions(self, vid: str) -> list[Expression]:
        """Expressions in file order; ``obj_ids`` = the expression's anno ids (empty if the
        split carries none)."""
        out = []
        for exp_id, e in self._entry(vid)["expressions"].items():
            where = f"videos.{vid}.expressions.{exp_id}"
            text = require(e, "exp", where, self.meta_path, str)
            ids: tuple[int, ...] = ()
            if "anno_id" in e:
                raw = e["anno_id"]
                raw = raw if isinstance(raw, list) else [raw]
                ids = tuple(parse_obj_id(a, f"{where}.anno_id", self.meta_path) for a in raw)
            if "obj_id" in e:  # checked too, so a malformed file fails here, not later
                raw = e["obj_id"] if isinstance(e["obj_id"], list) else [e["obj_id"]]
                for a in raw:
                    parse_obj_id(a, f"{where}.obj_id", self.meta_path)
            out.append(Expression(video_id=vid, exp_id=str(exp_id), text=text, obj_ids=ids))
        return out

    def _masks(self) -> dict:
        if self._mask_dict is None:
            d = read_json(self.mask_dict_path, "mask_dict.json")
            if not isinstance(d, dict):
                raise DataError(f"{self.mask_dict_path}: must be a JSON object of anno_id -> per-frame RLEs")
            self._mask_dict = d
        return self._mask_dict

    def annotated_frames(self, vid: str) -> list[str]:
        """Every frame when the split has ``mask_dict.json`` (MeViS annotates all frames),
        else none."""
        frames = self._entry(vid)["frames"]
        return list(frames) if dio.exists(self.mask_dict_path) else []

    def _rles(self, anno_id: int, n_frames: int) -> list:
        key = str(anno_id)
        d = self._masks()
        if key not in d:
            raise DataError(f"{self.mask_dict_path}: missing key {key!r} (anno_id)")
        rles = d[key]
        if not isinstance(rles, list) or len(rles) != n_frames:
            got = len(rles) if isinstance(rles, list) else type(rles).__name__
            raise DataError(f"{self.mask_dict_path}: key {key!r} must list {n_frames} per-frame RLEs "
                            f"(null where absent), got {got}")
        return rles

    def object_mask(self, vid: str, frame: str, obj_ids: int | tuple[int, ...] | list[int]) -> np.ndarray:
        """uint8 HxW 0/1: union of the given anno ids' masks on ``frame``."""
        frames = self._entry(vid)["frames"]
        try:
            t = frames.index(frame)
        except ValueError:
            raise DataError(f"frame {frame!r} is not a frame of video {vid!r} ({self.meta_path})") from None
        ids = [obj_ids] if isinstance(obj_ids, (int, np.integer)) else list(obj_ids)
        per_id = [self._rles(a, len(frames)) for a in ids]
        size = next((r["size"] for rles in per_id for r in rles if r is not None), None)
        if size is None:  # every object absent on every frame: the frame gives the size
            h, w = dio.read_image(self.video(vid).frame_paths[t]).shape[:2]
        else:
            h, w = int(size[0]), int(size[1])
        out = np.zeros((h, w), dtype=np.uint8)
        for a, rles in zip(ids, per_id):
            rle = rles[t]
            if rle is not None:
                out |= self._decode(rle, a, t, h, w)
        return out

    def _decode(self, rle: object, anno_id: int, t: int, h: int, w: int) -> np.ndarray:
        where = f"{self.mask_dict_path}: key '{anno_id}' frame {t}"
        if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
            raise DataError(f"{where}: expected a COCO RLE {{'size': [h, w], 'counts': ...}} or null")
        if [int(s) for s in rle["size"]] != [h, w]:
            raise DataError(f"{where}: RLE size {rle['size']} differs from the video's {h}x{w}")
        counts = rle["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            counts = masks.from_uncompressed(counts, h, w)
        elif isinstance(counts, str):
            counts = counts.encode("ascii")
        try:
            return masks.decode(counts, h, w)
        except (ValueError, TypeError) as e:
            raise DataError(f"{where}: cannot decode RLE ({e})") from e

    def __repr__(self) -> str:
        return f"MeViS({self.root!r}, {self.split!r}: {len(self._ids)} videos)"
