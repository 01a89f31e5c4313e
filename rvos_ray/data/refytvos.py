"""Ref-YouTube-VOS reader (also Ref-DAVIS17, which is distributed in the same layout).

Layout (``root`` is a local path or a pyarrow.fs URI)::

    <root>/meta_expressions/<split>/meta_expressions.json
        {"videos": {vid: {"expressions": {"<exp_id>": {"exp": str, "obj_id": "<id>"}},
                          "frames": [frame names]}}}
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg
    <root>/<split>/Annotations/<vid>/<frame>.png      palette PNG, pixel = object id
    <root>/<split>/meta.json                         {"videos": {vid: {"objects":
                                                      {"<id>": {"category": str, ...}}}}}

The valid meta also lists the test videos: when ``meta_expressions/test/meta_expressions.json``
exists, the valid split is the valid meta's videos that are *not* in the test meta (the 202
videos of Ref-YouTube-VOS 2021). The test split's frames live under ``valid/JPEGImages`` in the
official release, so a test split without its own folder reads frames from there.

Only the small JSON meta is read when the reader is built; frames and annotations are read
when asked for, one file at a time.
"""

from __future__ import annotations

import json
import numpy as np

from rvos_ray.data import io as dio
from rvos_ray.data.errors import DataError
from rvos_ray.data.palette import read_palette_png
from rvos_ray.types import Expression, Video

FRAME_EXT = ".jpg"
ANNOTATION_EXT = ".png"


def read_json(uri: str, what: str) -> object:
    """Parse a JSON file; a missing or malformed file is a DataError naming it."""
    try:
        data = dio.read_bytes(uri)
    except FileNotFoundError as e:
        raise DataError(f"{uri}: {what} does not exist") from e
    except OSError as e:
        raise DataError(f"{uri}: cannot read {what} ({e})") from e
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{uri}: {what} is not valid JSON ({e})") from e


def require(mapping: object, key: str, where: str, uri: str, kind: type = dict) -> object:
    """``mapping[key]`` checked to be of ``kind``; otherwise a DataError naming file and key."""
    if not isinstance(mapping, dict):
        raise DataError(f"{uri}: {where!r} must be a JSON object, got {type(mapping).__name__}")
    if key not in mapping:
        raise DataError(f"{uri}: missing key {where + '.' + key if where else key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        path = f"{where}.{key}" if where else key
        raise DataError(
            f"{uri}: key {path!r} must be a JSON {_json_kind(kind)}, got {type(value).__name__}"
        )
    return value


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string"}.get(kind, kind.__name__)


def parse_obj_id(value: object, key: str, uri: str) -> int:
    """An object id: an int or a string of digits ("1"); anything else is a DataError."""
    if isinstance(value, bool):
        raise DataError(f"{uri}: key {key!r} must be an integer object id, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise DataError(f"{uri}: key {key!r} must be an integer object id, got {value!r}")


class MetaVideos:
    """What the readers of this layout share: the meta file's videos (``meta_path``,
    validated by :meth:`_load_meta`; ``_ids`` the split's) and their frames under
    ``<split_dir>/JPEGImages/<vid>/``."""

    split: str
    split_dir: str
    meta_path: str
    _videos: dict[str, dict]
    _ids: list[str]
    _idset: set[str]

    def __init__(self, root: str, split: str) -> None:
        self.root, self.split = str(root), split
        if not dio.is_dir(self.root):
            raise DataError(f"data root {self.root!r} does not exist or is not a directory")
        self._video_cache: dict[str, Video] = {}

    @staticmethod
    def _load_meta(uri: str) -> dict[str, dict]:
        meta = read_json(uri, "meta_expressions.json")
        videos = require(meta, "videos", "", uri)
        for vid, entry in videos.items():
            where = f"videos.{vid}"
            require(entry, "expressions", where, uri)
            frames = require(entry, "frames", where, uri, list)
            if not all(isinstance(f, str) for f in frames):
                raise DataError(f"{uri}: key {where + '.frames'!r} must list frame names (strings)")
        return videos

    def video_ids(self) -> list[str]:
        """The split's video ids, sorted."""
        return list(self._ids)

    def _entry(self, vid: str) -> dict:
        if vid not in self._idset:
            raise DataError(f"video {vid!r} is not in split {self.split!r} ({self.meta_path})")
        return self._videos[vid]

    def video(self, vid: str) -> Video:
        """The video's frames (names from the meta, paths to ``JPEGImages/<vid>/<frame>.jpg``).

        Lists the video folder once to check it is there and holds every frame; no pixel is
        read.
        """
        if vid in self._video_cache:
            return self._video_cache[vid]
        frames = self._entry(vid)["frames"]
        folder = dio.join(self.split_dir, "JPEGImages", vid)
        if not dio.is_dir(folder):
            raise DataError(f"video folder {folder} does not exist (video {vid!r} of {self.meta_path})")
        present = set(dio.list_dir(folder))
        missing = [f for f in frames if f + FRAME_EXT not in present]
        if missing:
            raise DataError(
                f"video folder {folder} lacks {len(missing)} frame(s) listed in {self.meta_path}, "
                f"first {missing[0] + FRAME_EXT!r}"
            )
        video = Video(
            video_id=vid,
            frame_names=tuple(frames),
            frame_paths=tuple(dio.join(folder, f + FRAME_EXT) for f in frames),
        )
        self._video_cache[vid] = video
        return video


class RefYTVOS(MetaVideos):
    """One split of a Ref-YouTube-VOS-layout dataset.

    ``RefYTVOS(root, split)``: ``root`` is a local path or URI; ``split`` is ``train``,
    ``valid`` or ``test`` (any name whose meta_expressions exists works). Raises
    :class:`DataError` for a missing root, split or meta file, or a malformed meta file.
    """

    dataset = "refytvos"

    def __init__(self, root: str, split: str) -> None:
        super().__init__(root, split)
        self.meta_path = dio.join(self.root, "meta_expressions", split, "meta_expressions.json")
        if not dio.exists(self.meta_path):
            have = self._splits_with_meta()
            raise DataError(
                f"split {split!r} not found: {self.meta_path} does not exist"
                + (f" (splits with meta_expressions: {', '.join(have)})" if have else "")
            )
        self.split_dir = self._find_split_dir(split)
        self._videos = self._load_meta(self.meta_path)
        ids = list(self._videos)
        test_meta = dio.join(self.root, "meta_expressions", "test", "meta_expressions.json")
        if split == "valid" and dio.exists(test_meta):
            test_ids = set(self._load_meta(test_meta))
            ids = [v for v in ids if v not in test_ids]
        self._ids = sorted(ids)
        self._idset = set(self._ids)
        self._annotation_cache: dict[str, tuple[str, ...]] = {}

    # -- construction helpers -------------------------------------------------------------

    def _splits_with_meta(self) -> list[str]:
        base = dio.join(self.root, "meta_expressions")
        return dio.list_dir(base) if dio.is_dir(base) else []

    def _find_split_dir(self, split: str) -> str:
        own = dio.join(self.root, split)
        if dio.is_dir(own):
            return own
        # The official release ships the test videos' frames inside valid/.
        if split == "test" and dio.is_dir(dio.join(self.root, "valid", "JPEGImages")):
            return dio.join(self.root, "valid")
        raise DataError(f"split folder {own} does not exist (split {split!r} of {self.root})")

    def expressions(self, vid: str) -> list[Expression]:
        """The video's referring expressions in file order.

        ``obj_ids`` is one integer id; it is empty where the meta carries no ``obj_id`` (the
        official valid/test metas). ``kind`` comes from the synthetic benchmark's extra key.
        """
        exps = self._entry(vid)["expressions"]
        out = []
        for exp_id, e in exps.items():
            where = f"videos.{vid}.expressions.{exp_id}"
            text = require(e, "exp", where, self.meta_path, str)
            obj_ids: tuple[int, ...] = ()
            if "obj_id" in e:
                obj_ids = (parse_obj_id(e["obj_id"], where + ".obj_id", self.meta_path),)
            kind = e.get("kind")
            if kind is not None and not isinstance(kind, str):
                raise DataError(f"{self.meta_path}: key {where + '.kind'!r} must be a string")
            out.append(Expression(video_id=vid, exp_id=str(exp_id), text=text, obj_ids=obj_ids, kind=kind))
        return out

    def _annotations(self, vid: str) -> tuple[str, ...]:
        if vid not in self._annotation_cache:
            self._entry(vid)
            folder = self.annotation_dir(vid)
            names: tuple[str, ...] = ()
            if dio.is_dir(folder):
                names = tuple(
                    n[: -len(ANNOTATION_EXT)] for n in dio.list_dir(folder) if n.endswith(ANNOTATION_EXT)
                )
            self._annotation_cache[vid] = names
        return self._annotation_cache[vid]

    def annotated_frames(self, vid: str) -> list[str]:
        """Names of the frames that have a ground-truth PNG, sorted (empty for a split without
        annotations, e.g. the official valid split)."""
        return list(self._annotations(vid))

    def annotation_dir(self, vid: str) -> str:
        """The folder of ``vid``'s ground-truth PNGs (it may not exist)."""
        return dio.join(self.split_dir, "Annotations", vid)

    def annotation_path(self, vid: str, frame: str) -> str:
        return dio.join(self.split_dir, "Annotations", vid, frame + ANNOTATION_EXT)

    def label_map(self, vid: str, frame: str) -> np.ndarray:
        """uint8 HxW palette ids of one annotated frame (0 = background)."""
        if frame not in self._annotations(vid):
            raise DataError(f"{self.annotation_path(vid, frame)}: annotation PNG does not exist")
        return read_palette_png(self.annotation_path(vid, frame))

    def object_mask(self, vid: str, frame: str, obj_ids: int | tuple[int, ...] | list[int]) -> np.ndarray:
        """uint8 HxW 0/1 mask of the object(s) on one annotated frame (union for several ids)."""
        ids = [obj_ids] if isinstance(obj_ids, (int, np.integer)) else list(obj_ids)
        return np.isin(self.label_map(vid, frame), np.asarray(ids, dtype=np.int64)).astype(np.uint8)

    def categories(self) -> dict[str, dict[int, str]]:
        """``{vid: {obj_id: category}}`` from ``<split>/meta.json``."""
        uri = dio.join(self.split_dir, "meta.json")
        meta = read_json(uri, "meta.json")
        videos = require(meta, "videos", "", uri)
        out: dict[str, dict[int, str]] = {}
        for vid, entry in videos.items():
            objects = require(entry, "objects", f"videos.{vid}", uri)
            cats = {}
            for oid, obj in objects.items():
                where = f"videos.{vid}.objects.{oid}"
                cats[parse_obj_id(oid, where, uri)] = require(obj, "category", where, uri, str)
            out[vid] = cats
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r}, {self.split!r}: {len(self._ids)} videos)"


class RefDAVIS17(RefYTVOS):
    """Ref-DAVIS17 as distributed for RVOS: the Ref-YouTube-VOS layout (``valid`` split)."""

    dataset = "davis"
