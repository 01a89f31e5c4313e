"""Tracklet scoring and tracklet-NMS (Eqs. 2-3 of the paper). Pure stage logic, no Ray.

* **Score** of a tracklet: its detection confidence times its propagation probability averaged
  over all T frames of the video, ``det_score * mean_t prob_t``.
* **Tracklet-IoU**: ``sum_t |M_p^t & M_q^t| / sum_t |M_p^t | M_q^t|``, computed on the RLEs by
  :func:`rvos_ray.masks.tracklet_iou` (pycocotools), never decoded to dense masks.
* **Greedy NMS**, per video: tracklets in rank order (higher score first; equal scores: lower
  ``tracklet_id`` first, so the result is deterministic); a tracklet is kept unless its
  tracklet-IoU with an already kept one is *greater than* ``iou_threshold``; at most
  ``max_tracklets`` (P, paper: 10) are kept; tracklets scoring below ``min_score`` are dropped
  first. IoUs are computed only between each kept tracklet and the still-undecided ones.

Input and output are tracklet tables (``TRACKLET_SCHEMA``); the output holds the kept
tracklets' rows, videos in input order, tracklets in rank order, frames ascending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rvos_ray.masks import tracklet_iou
from rvos_ray.registry import parse_options
from rvos_ray.stages.protocols import Stage
from rvos_ray.types import TRACKLET_SCHEMA, Resources, SchemaError, validate


@dataclass(frozen=True)
class _Video:
    """One video's tracklets, rows regrouped as [tracklet][frame]."""

    video_id: str
    ids: np.ndarray  # (N,) tracklet ids
    scores: np.ndarray  # (N,) float64 tracklet scores
    rows: np.ndarray  # (N, T) row index into the input table
    rles: list[list[bytes]]  # [t][n]
    height: int
    width: int


def _group(table: pa.Table) -> list[_Video]:
    videos = []
    vid_col = table.column("video_id").to_numpy(zero_copy_only=False)
    order = list(dict.fromkeys(vid_col.tolist()))
    tid = table.column("tracklet_id").to_numpy()
    frame = table.column("frame").to_numpy()
    det = table.column("det_score").to_numpy().astype(np.float64)
    prob = table.column("prob").to_numpy().astype(np.float64)
    height = table.column("height").to_numpy()
    width = table.column("width").to_numpy()
    rle = table.column("rle").to_pylist()
    for vid in order:
        idx = np.flatnonzero(vid_col == vid)
        where = f"tracklet table, video {vid!r}"
        hs, ws = np.unique(height[idx]), np.unique(width[idx])
        if len(hs) != 1 or len(ws) != 1:
            raise SchemaError(f"{where}: frames of different sizes {hs.tolist()}x{ws.tolist()}")
        t_count = int(frame[idx].max()) + 1
        ids = np.unique(tid[idx])
        rows = np.full((len(ids), t_count), -1, dtype=np.int64)
        pos = np.searchsorted(ids, tid[idx])
        f = frame[idx]
        if (f < 0).any():
            raise SchemaError(f"{where}: negative frame index")
        if len(idx) != len(np.unique(pos * t_count + f)):
            raise SchemaError(f"{where}: a tracklet has two rows for one frame")
        rows[pos, f] = idx
        if (rows < 0).any():
            n, t = np.argwhere(rows < 0)[0]
            raise SchemaError(f"{where}: tracklet {int(ids[n])} has no row for frame {int(t)} of {t_count}")
        dets = det[rows]
        if (dets != dets[:, :1]).any():
            n = int(np.argwhere((dets != dets[:, :1]).any(1))[0, 0])
            raise SchemaError(f"{where}: tracklet {int(ids[n])} has several det_score values")
        scores = dets[:, 0] * prob[rows].mean(1)
        rles = [[rle[r] for r in rows[:, t]] for t in range(t_count)]
        videos.append(_Video(vid, ids, scores, rows, rles, int(hs[0]), int(ws[0])))
    return videos


def tracklet_scores(table: pa.Table) -> dict[tuple[str, int], float]:
    """``{(video_id, tracklet_id): det_score * mean_t prob}`` for every tracklet of the table."""
    table = validate(table, TRACKLET_SCHEMA, "tracklet table")
    return {
        (v.video_id, int(i)): float(s) for v in _group(table) for i, s in zip(v.ids, v.scores)
    }


def rank_order(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by ascending tracklet id."""
    return np.lexsort((ids, -scores))


def _nms_video(v: _Video, iou_threshold: float, max_tracklets: int, min_score: float) -> list[int]:
    """Kept tracklet indices (into v.ids) in rank order."""
    alive = [int(i) for i in rank_order(v.ids, v.scores) if v.scores[i] >= min_score]
    kept: list[int] = []
    while alive and len(kept) < max_tracklets:
        best, rest = alive[0], alive[1:]
        kept.append(best)
        if not rest or len(kept) == max_tracklets:
            break
        iou = tracklet_iou(
            [[v.rles[t][best]] for t in range(len(v.rles))],
            [[v.rles[t][j] for j in rest] for t in range(len(v.rles))],
            v.height,
            v.width,
        )[0]
        alive = [j for j, o in zip(rest, iou) if not o > iou_threshold]
    return kept


def nms_tracklets(
    table: pa.Table, iou_threshold: float = 0.5, max_tracklets: int = 10, min_score: float = 0.0
) -> pa.Table:
    """Greedy tracklet-NMS per video (see the module docstring). Returns a tracklet table."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"nms.iou_threshold must be in [0, 1], got {iou_threshold}")
    if max_tracklets < 1:
        raise ValueError(f"nms.max_tracklets must be >= 1, got {max_tracklets}")
    table = validate(table, TRACKLET_SCHEMA, "tracklet table")
    if table.num_rows == 0:
        return table
    take = []
    for v in _group(table):
        for n in _nms_video(v, iou_threshold, max_tracklets, min_score):
            take.extend(v.rows[n].tolist())
    return table.take(pa.array(take, type=pa.int64()))


def concat_tracklets(tables: Sequence[pa.Table]) -> pa.Table:
    """All tracklets of a video, sorted by (tracklet_id, frame). Dictionaries are unified so
    tables from different calls (different ``source`` dictionaries) concatenate."""
    if not tables:
        return TRACKLET_SCHEMA.empty_table()
    t = pa.concat_tables(list(tables)).unify_dictionaries().combine_chunks()
    return t.sort_by([("tracklet_id", "ascending"), ("frame", "ascending")])


class NMSStage(Stage):
    """Tracklet-NMS with the ``nms`` section's options (``iou_threshold``, ``max_tracklets``,
    ``min_score``; absent keys: :class:`rvos_ray.config.NMSConfig`'s defaults)."""

    stage = "nms"

    def __init__(self, section: Mapping[str, Any], resources: Resources | None = None) -> None:
        from rvos_ray.config import NMSConfig

        super().__init__(resources)
        self.options = parse_options(NMSConfig, section, "nms")

    def select(self, table: pa.Table) -> pa.Table:
        o = self.options
        return nms_tracklets(table, o.iou_threshold, o.max_tracklets, o.min_score)

    def process(self, *tables: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(all tracklets of the video, from its propagation calls; the tracklets NMS keeps)."""
        every = concat_tracklets(tables)
        return every, self.select(every)


def tracklet_nms(table: pa.Table, section: Mapping[str, Any]) -> pa.Table:
    """Tracklet-NMS of ``table`` with an ``nms`` config section."""
    return NMSStage(section).select(table)


__all__ = ["NMSStage", "concat_tracklets", "nms_tracklets", "rank_order", "tracklet_nms", "tracklet_scores"]
