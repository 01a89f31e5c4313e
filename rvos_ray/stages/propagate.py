"""Propagation stage: keyframe candidates -> tracklets (one per candidate, a mask on every frame).

Pure stage logic, no Ray and no model imports. A propagation backend (see
:class:`rvos_ray.stages.protocols.Propagator`) turns one chunk of a keyframe's candidates into
a tracklet table; this module

* plans a video's calls per keyframe and chunk of candidates and numbers their tracklets
  (:func:`propagation_plan`), and runs the ``propagation`` section's backend on one call
  (:class:`PropagateStage`, with the work ``propagation.avoid`` saves);

* fixes the frame order every backend follows (:func:`frame_order`: forward from the keyframe to
  the last frame, then backward to the first, both starting from the keyframe);
* turns per-frame probability maps into masks and the propagation probability
  (:func:`masks_and_probabilities`), and collects per-frame results into the
  ``TRACKLET_SCHEMA`` table as they are produced (:class:`TrackletBuilder`), checking that every
  frame got exactly one mask per candidate.

**Propagation probability** (the ``prob`` column): on a propagated frame, the mean foreground
probability over the pixels of the predicted mask (probability > threshold), and 0.0 when the
predicted mask is empty; on the keyframe itself, where the mask is the candidate, 1.0 (0.0 if
the candidate mask is empty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rvos_ray import masks as rle
from rvos_ray.registry import PROPAGATORS, ConfigError
from rvos_ray.stages.protocols import Propagator, Stage
from rvos_ray.stages.prune import masks_at, subset, uncovered
from rvos_ray.types import TRACKLET_SCHEMA, Candidates, Resources, SchemaError, Video, table_from_columns, validate


@dataclass(frozen=True)
class PropagationCall:
    """Candidates ``[start, stop)`` of keyframe number ``keyframe_index`` become tracklets
    ``first_id .. first_id + stop - start - 1``."""

    keyframe_index: int
    start: int
    stop: int
    first_id: int

    @property
    def tracklet_ids(self) -> list[int]:
        return list(range(self.first_id, self.first_id + self.stop - self.start))


def propagation_plan(counts: Sequence[int], chunk: int) -> list[PropagationCall]:
    """Calls per keyframe and per chunk of ``chunk`` candidates; tracklet ids number the
    candidates keyframe by keyframe, so they do not depend on which call finishes first."""
    if chunk < 1:
        raise ConfigError(f"propagation.candidates_per_call must be >= 1, got {chunk}")
    calls, next_id = [], 0
    for k, n in enumerate(counts):
        calls += [PropagationCall(k, s, min(s + chunk, n), next_id + s) for s in range(0, n, chunk)]
        next_id += n
    return calls


class PropagateStage(Stage):
    """The ``propagation`` section's backend (``backend`` + its typed ``options``) on one call:
    one chunk of one keyframe's candidates through the whole video. ``propagation.avoid``:
    ``covered_iou`` skips the candidates an earlier keyframe's tracklet already covers at their
    frame; ``feature_cache_frames`` keeps that many frames' features in the backend (a backend
    that cannot is a ConfigError naming the key)."""

    stage = "propagation"

    def __init__(self, section: Mapping[str, Any]) -> None:
        super().__init__(Resources.of(section))
        avoid = section.get("avoid") or {}
        self.backend, self.options = str(section["backend"]), dict(section.get("options") or {})
        self.covered_iou, self.cache_frames = avoid.get("covered_iou"), int(avoid.get("feature_cache_frames") or 0)
        self.model: Propagator | None = None

    def setup(self) -> None:
        if self.cache_frames and not hasattr(PROPAGATORS.get(self.backend), "FEATURE_CACHE"):
            raise ConfigError(f"propagation.avoid.feature_cache_frames: the {self.backend!r} backend keeps no "
                              "frame features; set it to 0")
        kwargs = {"feature_cache_frames": self.cache_frames} if self.cache_frames else {}
        self.model = PROPAGATORS.build(self.backend, self.options, "propagation.options", **kwargs)

    def process(self, video: Video, candidates: Candidates, call: PropagationCall, *earlier: pa.Table
                ) -> tuple[pa.Table, dict[str, dict[str, int]]]:
        """(tracklets, passes) of ``call`` on its keyframe's ``candidates``; ``earlier``: the
        tracklet tables of the earlier keyframes (with ``covered_iou``; their covered candidates'
        tracklet ids stay unused). The passes are ``{"propagation": {"backbone": frames the
        backbone encoded}}`` (the summary's ``encoder_passes``, with the grounders')."""
        chunk, ids = subset(candidates, range(call.start, call.stop)), call.tracklet_ids
        if self.covered_iou is not None and earlier:
            keep = uncovered(chunk, masks_at(earlier, chunk.frame), float(self.covered_iou))
            chunk, ids = subset(chunk, keep), [ids[i] for i in keep]
        before = int(getattr(self.model, "backbone_forward_passes", 0))
        table = self.model.propagate(video, chunk, ids)
        passes = int(getattr(self.model, "backbone_forward_passes", 0)) - before
        return (validate(table, TRACKLET_SCHEMA, f"propagation of {video.video_id!r} keyframe {candidates.frame}"),
                {"propagation": {"backbone": passes} if passes else {}})


def frame_order(num_frames: int, keyframe: int) -> tuple[list[int], list[int]]:
    """(forward, backward) frame indices: keyframe+1 .. T-1, then keyframe-1 .. 0."""
    if not 0 <= keyframe < num_frames:
        raise ValueError(f"keyframe {keyframe} outside a video of {num_frames} frames")
    return list(range(keyframe + 1, num_frames)), list(range(keyframe - 1, -1, -1))


def masks_and_probabilities(prob: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, list[float]]:
    """(K, H, W) foreground probabilities -> uint8 masks (prob > threshold) and, per mask, the
    propagation probability: mean probability inside the mask, 0.0 for an empty mask."""
    fg = prob > threshold
    count = fg.sum((1, 2))
    total = np.where(fg, prob, 0.0).sum((1, 2), dtype=np.float64)
    scores = np.divide(total, count, out=np.zeros(len(count), dtype=np.float64), where=count > 0)
    return fg.astype(np.uint8), [float(s) for s in scores]


class TrackletBuilder:
    """Collects one keyframe chunk's per-frame results (RLE + prob) into a tracklet table.

    ``record(frame, rles, probs)`` is called once per frame with one entry per candidate, in
    any frame order; :meth:`table` checks every frame of the video was recorded exactly once.
    Only RLE bytes are kept, so memory grows with the compressed masks, not with pixels.
    """

    def __init__(self, video: Video, candidates: Candidates, tracklet_ids: Sequence[int]) -> None:
        if len(tracklet_ids) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {len(tracklet_ids)} tracklet ids")
        if len(set(tracklet_ids)) != len(tracklet_ids):
            raise ValueError(f"tracklet ids are not unique: {list(tracklet_ids)}")
        if candidates.video_id != video.video_id:
            raise ValueError(f"candidates of {candidates.video_id!r} given with video {video.video_id!r}")
        frame_order(video.num_frames, candidates.frame)  # validates the keyframe
        self.video = video
        self.candidates = candidates
        self.ids = [int(i) for i in tracklet_ids]
        self._rles: list[list[bytes] | None] = [None] * video.num_frames
        self._probs: list[list[float] | None] = [None] * video.num_frames

    def record(self, frame: int, rles: Sequence[bytes], probs: Sequence[float]) -> None:
        k = len(self.candidates)
        if len(rles) != k or len(probs) != k:
            raise ValueError(f"frame {frame}: {len(rles)} masks / {len(probs)} probs for {k} candidates")
        if self._rles[frame] is not None:
            raise ValueError(f"frame {frame} recorded twice")
        self._rles[frame] = list(rles)
        self._probs[frame] = [float(p) for p in probs]

    def table(self) -> pa.Table:
        missing = [t for t, r in enumerate(self._rles) if r is None]
        if missing:
            raise SchemaError(f"{self.video.video_id}: no masks for frames {missing[:10]}")
        c, t_count, k = self.candidates, self.video.num_frames, len(self.candidates)
        cols = {
            "video_id": [c.video_id] * (k * t_count),
            "tracklet_id": np.repeat(np.asarray(self.ids, dtype=np.int32), t_count),
            "keyframe": np.full(k * t_count, c.frame, dtype=np.int32),
            "source": [s for s in c.sources for _ in range(t_count)],
            "det_score": np.repeat(np.asarray(c.scores, dtype=np.float32), t_count),
            "frame": np.tile(np.arange(t_count, dtype=np.int32), k),
            "height": np.full(k * t_count, c.height, dtype=np.int32),
            "width": np.full(k * t_count, c.width, dtype=np.int32),
            "rle": [self._rles[t][i] for i in range(k) for t in range(t_count)],
            "prob": np.asarray([self._probs[t][i] for i in range(k) for t in range(t_count)], dtype=np.float32),
        }
        return table_from_columns(cols, TRACKLET_SCHEMA, f"tracklets of {c.video_id}")


class ModelPropagator:
    """Base of the model backends (CFBI+, SAM 2): :meth:`propagate` builds the table from
    ``_run(video, candidates, builder)``, which records every frame's masks, under torch's
    inference mode; a chunk without candidates gives an empty table without running the model."""

    def propagate(self, video: Video, candidates: Candidates, tracklet_ids: Sequence[int]) -> pa.Table:
        """Tracklet table (``TRACKLET_SCHEMA``) for these candidates over every frame."""
        import torch

        builder = TrackletBuilder(video, candidates, tracklet_ids)
        if len(candidates) == 0:
            return TRACKLET_SCHEMA.empty_table()
        with torch.inference_mode():
            self._run(video, candidates, builder)
        return builder.table()

    def _run(self, video: Video, candidates: Candidates, builder: TrackletBuilder) -> None:
        raise NotImplementedError


def keyframe_rows(candidates: Candidates) -> tuple[list[bytes], list[float]]:
    """The keyframe's own entries: the candidate masks, propagation probability 1.0 (0.0 for
    an empty candidate mask, as on any frame)."""
    area = rle.areas(list(candidates.rles), candidates.height, candidates.width)
    return list(candidates.rles), [1.0 if a > 0 else 0.0 for a in area]


def decode_candidates(candidates: Candidates) -> np.ndarray:
    """(K, H, W) uint8 masks of the candidates at the frame's size."""
    if len(candidates) == 0:
        return np.zeros((0, candidates.height, candidates.width), dtype=np.uint8)
    return np.stack([rle.decode(r, candidates.height, candidates.width) for r in candidates.rles])
