"""RefCOCO / RefCOCO+ / RefCOCOg in the REFER layout, for pretraining the grounder.

Layout (the REFER toolkit's)::

    <root>/<dataset>/refs(<split_by>).p     pickle: list of refs
    <root>/<dataset>/instances.json         COCO instances (images, annotations, categories)
    <image_dir>/<images[i].file_name>       COCO train2014 images

A ref is ``{ref_id, ann_id, image_id, split, category_id, sentences: [{sent_id, sent, ...}]}``.

The refs pickle is read with :class:`RestrictedUnpickler`, which builds plain containers and
scalars only (dict, list, tuple, str, bytes, int, float, bool, None, set): any pickle that
names a class or function to call (the way a pickle runs code) is refused with a
:class:`DataError`. Nothing is converted on disk; the file is read as it ships.

Each sentence becomes one :class:`RefSample`: the image as a one-frame clip whose candidates are
its instance masks (COCO RLE counts) and whose target is the referred instance.
"""

from __future__ import annotations

import io
import json
import pickle
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from rvos_ray import masks
from rvos_ray.data import io as fio
from rvos_ray.data.errors import DataError

__all__ = ["RestrictedUnpickler", "load_refs", "RefSample", "RefCOCO"]

# Globals a plain-data pickle may legitimately name: set/frozenset (protocols < 4) and
# _codecs.encode (how Python 3 writes bytes at protocol 2). None of them runs user code.
_ALLOWED_GLOBALS = {
    ("builtins", "set"), ("builtins", "frozenset"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only; a reference to any other global raises ``UnpicklingError``."""

    def find_class(self, module: str, name: str):  # noqa: D102 - see class docstring
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only plain data is allowed")

    def persistent_load(self, pid):  # noqa: D102
        raise pickle.UnpicklingError("refusing persistent ids: only plain data is allowed")


def load_refs(path: str) -> list[dict]:
    """The refs list of a ``refs(<split_by>).p`` file, via :class:`RestrictedUnpickler`.

    Python 2 pickles (as REFER ships them) store text as bytes; they are decoded as UTF-8.
    """
    data = fio.read_bytes(path)
    try:
        refs = RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a plain-data REFER refs pickle ({e})") from e
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    for i, r in enumerate(refs):
        if not isinstance(r, dict):
            raise DataError(f"{path}: ref {i} is a {type(r).__name__}, expected a dict")
        for key in ("ref_id", "ann_id", "image_id", "split", "sentences"):
            if key not in r:
                raise DataError(f"{path}: ref {i} has no {key!r}")
    return refs


@dataclass(frozen=True)
class RefSample:
    """One referring sentence on one image: candidates = the image's instances."""

    ref_id: int
    sent_id: int
    text: str
    image_id: int
    image_path: str
    height: int
    width: int
    ann_ids: tuple[int, ...]
    rles: tuple[bytes, ...]  # COCO RLE counts at height x width, one per candidate
    target: int  # index into ann_ids of the referred instance


class RefCOCO:
    """Reader of one REFER dataset folder (``refcoco``, ``refcoco+`` or ``refcocog``)."""

    def __init__(self, root: str, dataset: str = "refcoco", split_by: str = "unc", image_dir: str | None = None) -> None:
        self.folder = fio.join(root, dataset)
        self.refs_path = fio.join(self.folder, f"refs({split_by}).p")
        self.instances_path = fio.join(self.folder, "instances.json")
        self.image_dir = image_dir or fio.join(root, "images", "mscoco", "images", "train2014")
        for p in (self.refs_path, self.instances_path):
            if not fio.exists(p):
                raise DataError(f"REFER dataset {dataset!r}: {p} does not exist")
        self._refs = load_refs(self.refs_path)
        try:
            inst = json.loads(fio.read_bytes(self.instances_path))
        except json.JSONDecodeError as e:
            raise DataError(f"{self.instances_path}: not valid JSON ({e})") from e
        for key in ("images", "annotations"):
            if key not in inst:
                raise DataError(f"{self.instances_path}: no {key!r} list")
        self._images = {int(im["id"]): im for im in inst["images"]}
        self._anns = {int(a["id"]): a for a in inst["annotations"]}
        self._by_image: dict[int, list[dict]] = defaultdict(list)
        for a in inst["annotations"]:
            self._by_image[int(a["image_id"])].append(a)

    def refs(self, split: str | None = None) -> list[dict]:
        return [r for r in self._refs if split is None or r["split"] == split]

    def splits(self) -> list[str]:
        return sorted({str(r["split"]) for r in self._refs})

    def _rle(self, ann: dict, h: int, w: int) -> bytes:
        seg = ann.get("segmentation")
        if isinstance(seg, list):  # polygons
            if not seg:
                raise DataError(f"{self.instances_path}: annotation {ann['id']} has no polygon")
            return masks.from_polygons(seg, h, w)
        if isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            return masks.from_uncompressed(seg["counts"], h, w)
        if isinstance(seg, dict):
            return seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
        raise DataError(f"{self.instances_path}: annotation {ann['id']} has no segmentation")

    def samples(self, split: str, max_candidates: int | None = None) -> Iterator[RefSample]:
        """One sample per sentence of every ref in ``split``. With ``max_candidates``, the target
        and the largest other instances are kept (the grounder sees at most P tracklets)."""
        for r in self.refs(split):
            image_id, ann_id = int(r["image_id"]), int(r["ann_id"])
            im = self._images.get(image_id)
            if im is None:
                raise DataError(f"{self.refs_path}: ref {r['ref_id']} names image {image_id}, "
                                f"absent from {self.instances_path}")
            if ann_id not in self._anns:
                raise DataError(f"{self.refs_path}: ref {r['ref_id']} names annotation {ann_id}, "
                                f"absent from {self.instances_path}")
            anns = [a for a in self._by_image[image_id] if not a.get("iscrowd", 0) or int(a["id"]) == ann_id]
            others = sorted((a for a in anns if int(a["id"]) != ann_id), key=lambda a: -float(a.get("area", 0)))
            if max_candidates is not None:
                others = others[: max(0, max_candidates - 1)]
            chosen = sorted([self._anns[ann_id], *others], key=lambda a: int(a["id"]))
            h, w = int(im["height"]), int(im["width"])
            ids = tuple(int(a["id"]) for a in chosen)
            rles = tuple(self._rle(a, h, w) for a in chosen)
            for s in r["sentences"]:
                yield RefSample(
                    ref_id=int(r["ref_id"]),
                    sent_id=int(s.get("sent_id", -1)),
                    text=str(s.get("sent") or s.get("raw") or ""),
                    image_id=image_id,
                    image_path=fio.join(self.image_dir, str(im["file_name"])),
                    height=h,
                    width=w,
                    ann_ids=ids,
                    rles=rles,
                    target=ids.index(ann_id),
                )
