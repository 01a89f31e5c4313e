"""Keyframe instance segmentation: several segmenters pooled per keyframe (paper Eq. 1).

The paper pools the proposals of HTC and CondInst on every keyframe: the runtime runs each
configured model (a :class:`SegmentStage`) on the same keyframes and :class:`PoolStage`
concatenates their candidates per frame (``Candidates.concat``), each candidate keeping its
source model's name. Models are built from ``segmentation.models`` entries through
:data:`rvos_ray.registry.SEGMENTERS`:

.. code-block:: yaml

    segmentation:
      models:
        - name: htc              # the candidates' source name; unique within the list
          backend: mmdet         # registry name
          config: htc/htc_x101-64x4d-dconv-c3-c5_fpn_ms-400-1400-16xb1-20e_coco.py
          checkpoint: https://...
          calibration: {slope: 1.0, bias: 0.0}   # optional, see ScoreCalibration

Scores of different models are not on one scale (a CondInst 0.3 is not an HTC 0.3), and
tracklet-NMS ranks pooled candidates by score, so each model may carry a Platt calibration
``sigmoid(slope * logit(s) + bias)`` applied before pooling.

This module also holds the helpers both backends share: reading keyframes and turning a
model's dense masks into :class:`Candidates` (threshold, top-k, RLE at the frame size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rvos_ray import masks as rle
from rvos_ray.data import io
from rvos_ray.data.errors import DataError
from rvos_ray.registry import SEGMENTERS, ConfigError, parse_options
from rvos_ray.stages.protocols import Segmenter, Stage
from rvos_ray.stages.prune import merge_duplicates
from rvos_ray.types import Candidates, Resources, Video

__all__ = [
    "PoolStage",
    "ScoreCalibration",
    "SegmentStage",
    "BatchedSegmenter",
    "read_frames",
    "make_candidates",
]


@dataclasses.dataclass
class ScoreCalibration:
    """Platt scaling of one model's scores: ``sigmoid(slope * logit(s) + bias)``.

    The identity is slope 1, bias 0. Monotone for slope > 0, so it never reorders one model's
    own candidates; it only moves them relative to the other models'.
    """

    slope: float = 1.0  # > 0; < 1 flattens an over-confident model, > 1 sharpens
    bias: float = 0.0  # shifts the model's scores up (> 0) or down (< 0) in logit space

    def __post_init__(self) -> None:
        if not self.slope > 0:
            raise ConfigError(f"calibration.slope must be > 0, got {self.slope}")

    def is_identity(self) -> bool:
        return self.slope == 1.0 and self.bias == 0.0

    def __call__(self, scores: Sequence[float]) -> tuple[float, ...]:
        if self.is_identity() or len(scores) == 0:
            return tuple(float(s) for s in scores)
        # float64 and a clip away from 0/1 so logit stays finite; results land in (0, 1).
        s = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1.0 - 1e-7)
        z = self.slope * np.log(s / (1.0 - s)) + self.bias
        return tuple(float(v) for v in 1.0 / (1.0 + np.exp(-z)))


class SegmentStage(Stage):
    """One ``segmentation.models`` entry on a batch of keyframes: the model's candidates,
    checked to be exactly those frames, with its score calibration (if any). Pooling the
    models' candidates per keyframe is :class:`PoolStage`."""

    stage = "segmentation"

    def __init__(self, entry: Mapping[str, Any], where: str, resources: Resources | None = None) -> None:
        entry = dict(entry)
        for key in ("name", "backend"):
            if not entry.get(key):
                raise ConfigError(f"{where}: missing key {key!r} (e.g. name: htc, backend: mmdet)")
        super().__init__(resources, str(entry["name"]))
        cal = entry.pop("calibration", None)
        self.calibration = parse_options(ScoreCalibration, cal, f"{where}.calibration") if cal else None
        self.entry, self.where = entry, where
        self.model: Segmenter | None = None

    def setup(self) -> None:
        # The registry validates the remaining keys against the backend's Options dataclass; the
        # source name travels as the constructor argument ``source`` (the registry strips ``name``).
        self.model = SEGMENTERS.build(str(self.entry["backend"]), self.entry, self.where, source=self.name)

    def process(self, video: Video, frames: Sequence[int]) -> list[Candidates]:
        frames = [int(f) for f in frames]
        out = self.model.segment(video, frames)
        got = [c.frame for c in out]
        if got != frames:
            raise RuntimeError(f"segmenter {self.name!r} returned frames {got} for requested {frames} "
                               f"of video {video.video_id!r}")
        cal = self.calibration
        if cal is not None and not cal.is_identity():
            out = [dataclasses.replace(c, scores=cal(c.scores)) for c in out]
        return list(out)


class PoolStage(Stage):
    """Every model's candidates pooled per keyframe, in model order (the paper pools HTC and
    CondInst proposals); with ``propagation.avoid.duplicate_iou``, same-keyframe duplicates
    merged first (:func:`rvos_ray.stages.prune.merge_duplicates`)."""

    stage = "pooling"

    def __init__(self, models: int, duplicate_iou: float | None = None, resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.models, self.duplicate_iou = int(models), duplicate_iou

    def process(self, keyframes: Sequence[int], *batches: list[Candidates]) -> tuple[Any, ...]:
        """(each keyframe's candidates, ..., their counts). ``batches``: every model's segment
        results, model by model; each segment call returned the frames of its batch (checked
        by :class:`SegmentStage`), so a model's batches in order are the keyframes in order."""
        per = len(batches) // max(self.models, 1)
        flat = [[c for b in batches[m * per : (m + 1) * per] for c in b] for m in range(self.models)]
        pooled = [Candidates.concat([m[i] for m in flat]) for i in range(len(keyframes))]
        if self.duplicate_iou is not None:
            pooled = [merge_duplicates(c, float(self.duplicate_iou)) for c in pooled]
        return (*pooled, [len(c) for c in pooled])


# --------------------------------------------------------------------------------------------
# Helpers shared by the backends
# --------------------------------------------------------------------------------------------


class BatchedSegmenter:
    """Base of the segmentation backends: :meth:`segment` reads ``options.batch_size`` frames
    at a time (never the whole list up front) and turns each batch into candidates with the
    backend's :meth:`segment_batch`."""

    options: Any

    def segment(self, video: Video, frames: Sequence[int]) -> list[Candidates]:
        frames, bs = [int(f) for f in frames], self.options.batch_size
        return [c for s in range(0, len(frames), bs)
                for c in self.segment_batch(read_frames(video, frames[s : s + bs]), video.video_id, frames[s : s + bs])]

    def segment_batch(self, images: list[np.ndarray], video_id: str, frames: list[int]) -> list[Candidates]:
        """Candidates of RGB uint8 HxWx3 ``images`` (the video's ``frames``), one forward."""
        raise NotImplementedError


def read_frames(video: Video, frames: Sequence[int]) -> list[np.ndarray]:
    """The RGB uint8 HxWx3 pixels of ``frames`` (indices into ``video``'s frames)."""
    out = []
    for f in frames:
        if not 0 <= f < video.num_frames:
            raise DataError(
                f"video {video.video_id!r}: keyframe {f} out of range (video has {video.num_frames} frames)"
            )
        try:
            out.append(io.read_image(video.frame_paths[f]))
        except (OSError, ValueError) as e:
            raise DataError(f"video {video.video_id!r}: cannot read frame {video.frame_paths[f]}: {e}") from e
    return out


def make_candidates(
    video_id: str,
    frame: int,
    height: int,
    width: int,
    masks: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    source: str,
    score_threshold: float,
    max_per_frame: int,
) -> Candidates:
    """Candidates from one frame's dense model outputs.

    ``masks`` is N x height x width (bool or 0/1), at the frame's original size. Keeps the
    candidates scoring >= ``score_threshold``, best first, at most ``max_per_frame``, and
    drops empty masks (they cannot seed a tracklet).
    """
    masks = np.asarray(masks)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(
            f"{source}: masks of shape {masks.shape}, expected N x {height} x {width} (frame size)"
        )
    if not (len(masks) == len(scores) == len(labels)):
        raise ValueError(f"{source}: {len(masks)} masks, {len(scores)} scores, {len(labels)} labels")
    nonempty = masks.reshape(len(masks), height * width).any(axis=1)
    keep = (scores >= score_threshold) & nonempty
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-scores[idx], kind="stable")][: max(int(max_per_frame), 0)]
    kept = masks[idx].astype(np.uint8, copy=False)
    return Candidates(
        video_id=video_id,
        frame=int(frame),
        height=int(height),
        width=int(width),
        rles=tuple(rle.encode_many(kept)) if len(idx) else (),
        # Model scores are probabilities; the clip absorbs fp16 rounding just past 1.
        scores=tuple(float(s) for s in np.clip(scores[idx], 0.0, 1.0)),
        labels=tuple(int(v) for v in labels[idx]),
        sources=(source,) * len(idx),
    )
