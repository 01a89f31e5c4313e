"""COCO RLE masks (pycocotools): encode, decode, areas, boxes, IoU matrices and tracklet-IoU.

A mask at rest is its RLE ``counts`` (bytes) plus the frame's height and width; the
functions here take and return that form. Area, IoU and tracklet-IoU are computed on the
run-length encoding itself, never by decoding to dense arrays.

This is the project's only door to ``pycocotools.mask``: every function here is correct for any
number of masks. (pycocotools' ``area()`` sizes its result with a uint8 array built from the
mask count, which NumPy 2 refuses above 255 masks; :func:`areas` calls it in chunks of
:data:`CHUNK`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as _coco

#: masks per pycocotools call where pycocotools itself cannot take more (``area``: <= 255)
CHUNK = 255


def _rle(counts: bytes, height: int, width: int) -> dict:
    return {"size": [int(height), int(width)], "counts": counts}


def encode(mask: np.ndarray) -> bytes:
    """uint8/bool HxW mask -> COCO RLE counts (bytes)."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects an HxW mask, got shape {mask.shape}")
    return _coco.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))["counts"]


def encode_many(masks: np.ndarray) -> list[bytes]:
    """NxHxW masks -> N RLE counts, in one pycocotools call."""
    if masks.ndim != 3:
        raise ValueError(f"encode_many expects NxHxW masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(masks.astype(np.uint8, copy=False).transpose(1, 2, 0))
    return [r["counts"] for r in _coco.encode(fortran)]


def decode(counts: bytes, height: int, width: int) -> np.ndarray:
    """RLE counts -> uint8 HxW mask of 0/1."""
    return np.ascontiguousarray(_coco.decode(_rle(counts, height, width)))


def empty(height: int, width: int) -> bytes:
    """The RLE of an all-zero mask."""
    return _coco.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]["counts"]


def areas(rles: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """Pixel counts of each mask (int64), for any number of masks."""
    out = np.zeros(len(rles), dtype=np.int64)
    for s in range(0, len(rles), CHUNK):
        part = [_rle(c, height, width) for c in rles[s : s + CHUNK]]
        out[s : s + len(part)] = np.asarray(_coco.area(part), dtype=np.int64).reshape(-1)
    return out


def boxes_xywh(rles: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """(N, 4) float64 bounding boxes (x, y, w, h) of each mask; zeros for an empty mask."""
    if len(rles) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray(_coco.toBbox([_rle(c, height, width) for c in rles]), dtype=np.float64).reshape(-1, 4)


def from_uncompressed(counts: Sequence[int], height: int, width: int) -> bytes:
    """An uncompressed COCO RLE (a list of run lengths) -> compressed RLE counts."""
    return _coco.frPyObjects({"size": [int(height), int(width)], "counts": list(counts)}, height, width)["counts"]


def from_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> bytes:
    """COCO polygons (one object, possibly several parts) rasterised and merged -> RLE counts."""
    return _coco.merge(_coco.frPyObjects([list(p) for p in polygons], height, width))["counts"]


def iou_matrix(a: Sequence[bytes], b: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """len(a) x len(b) IoU of masks of one frame size (0 where both are empty)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    ra = [_rle(c, height, width) for c in a]
    rb = [_rle(c, height, width) for c in b]
    return np.asarray(_coco.iou(ra, rb, [0] * len(rb)), dtype=np.float64).reshape(len(a), len(b))


def intersection_matrix(
    a: Sequence[bytes], b: Sequence[bytes], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact pixel intersections and unions (int64 matrices) of two mask lists of one frame.

    pycocotools returns IoU = I / U; with the areas known, I = IoU (|A| + |B|) / (1 + IoU),
    which is an integer up to float rounding, so it is rounded back exactly.
    """
    area_a = areas(a, height, width)
    area_b = areas(b, height, width)
    iou = iou_matrix(a, b, height, width)
    sums = area_a[:, None] + area_b[None, :]
    inter = np.rint(iou * sums / (1.0 + iou)).astype(np.int64)
    return inter, sums - inter


def tracklet_iou(
    frames_a: Sequence[Sequence[bytes]],
    frames_b: Sequence[Sequence[bytes]],
    height: int,
    width: int,
) -> np.ndarray:
    """Tracklet-IoU matrix: tIoU(p, q) = Σ_t |M_p^t ∩ M_q^t| / Σ_t |M_p^t ∪ M_q^t|.

    ``frames_a[t]`` lists the RLEs of every tracklet of set A on frame t (same order on every
    frame); likewise ``frames_b``. Pairs whose masks are empty on every frame get 0.
    """
    if len(frames_a) != len(frames_b):
        raise ValueError(f"tracklet_iou: {len(frames_a)} frames in A but {len(frames_b)} in B")
    na = len(frames_a[0]) if frames_a else 0
    nb = len(frames_b[0]) if frames_b else 0
    inter = np.zeros((na, nb), dtype=np.int64)
    union = np.zeros((na, nb), dtype=np.int64)
    for t, (fa, fb) in enumerate(zip(frames_a, frames_b)):
        if len(fa) != na or len(fb) != nb:
            raise ValueError(f"tracklet_iou: frame {t} has {len(fa)}/{len(fb)} masks, expected {na}/{nb}")
        i, u = intersection_matrix(fa, fb, height, width)
        inter += i
        union += u
    out = np.zeros((na, nb), dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out
