"""Propagation work avoided: keyframe candidates that would only become duplicate tracklets are
dropped before they are propagated. Pure stage logic, no Ray, no model.

Tracklet-NMS keeps P tracklets of all the propagated ones (paper: P=10 of K=7 keyframes x the
pooled HTC + CondInst candidates), and most of what it removes is visible before propagation:

* **same-keyframe duplicates** (:func:`merge_duplicates`): the pooled segmenters find the same
  object on a keyframe; candidates whose masks overlap a higher-scored one above
  ``duplicate_iou`` are merged into it (the higher score is kept);
* **covered candidates** (:func:`uncovered`): an object found on keyframe k is usually already
  tracked at frame k by a tracklet propagated from an earlier keyframe; a candidate whose mask
  overlaps such a tracklet's mask at its own frame above ``covered_iou`` is not propagated
  again. This is DEVA's "merge detections into existing tracks", in keyframe order.

Both are options of ``propagation.avoid`` (off by default, and in ``configs/paper.yaml``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rvos_ray import masks as rle
from rvos_ray.types import Candidates


def subset(c: Candidates, keep: Sequence[int]) -> Candidates:
    """The candidates at positions ``keep`` (in that order)."""
    return dataclasses.replace(c, **{k: tuple(getattr(c, k)[i] for i in keep)
                                     for k in ("rles", "scores", "labels", "sources")})


def merge_duplicates(c: Candidates, duplicate_iou: float) -> Candidates:
    """``c`` without the candidates whose mask IoU with a higher-scored kept candidate is above
    ``duplicate_iou`` (greedy by score, ties by position); the kept ones stay in their order."""
    if len(c) < 2:
        return c
    iou = rle.iou_matrix(list(c.rles), list(c.rles), c.height, c.width)
    kept: list[int] = []
    for i in sorted(range(len(c)), key=lambda i: (-float(c.scores[i]), i)):
        if all(iou[i, j] <= duplicate_iou for j in kept):
            kept.append(i)
    return subset(c, sorted(kept))


def masks_at(tables: Sequence[pa.Table], frame: int) -> list[bytes]:
    """Every tracklet's mask at ``frame`` in the tracklet tables ``tables``."""
    out: list[bytes] = []
    for t in tables:
        if t.num_rows:
            out += t.filter(pc.equal(t.column("frame"), frame)).column("rle").to_pylist()
    return out


def uncovered(c: Candidates, tracked: Sequence[bytes], covered_iou: float) -> list[int]:
    """Positions of the candidates of ``c`` that no mask of ``tracked`` (earlier tracklets at the
    candidates' frame) overlaps above ``covered_iou``."""
    if not len(c) or not tracked:
        return list(range(len(c)))
    iou = rle.iou_matrix(list(c.rles), list(tracked), c.height, c.width)
    return [int(i) for i in np.flatnonzero(iou.max(axis=1) <= covered_iou)]
