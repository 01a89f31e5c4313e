"""Keyframe sampling: K frames uniformly over a video of T frames (paper: K = 7).

The video is cut into K equal spans and the middle frame of each span is taken, i.e.
frame i = floor((2i + 1) T / (2K)) for i = 0..K-1. Span centres keep the samples symmetric
(the first and last frame are no more special than any other) and distinct whenever T >= K;
a video shorter than K frames is used whole. The result depends only on (T, K), so every
worker and every re-run picks the same frames; the indices are what the segmenters put in
``Candidates.frame``.
"""

from __future__ import annotations

from rvos_ray.registry import ConfigError
from rvos_ray.types import Video


def sample_keyframes(num_frames: int, k: int) -> list[int]:
    """Sorted, distinct frame indices: ``k`` span centres over ``num_frames`` frames, or every
    frame when the video has fewer than ``k``.

    >>> sample_keyframes(14, 7)
    [1, 3, 5, 7, 9, 11, 13]
    >>> sample_keyframes(3, 7)
    [0, 1, 2]
    """
    if k < 1:
        raise ConfigError(f"keyframes.k must be >= 1, got {k}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if num_frames <= k:
        return list(range(num_frames))
    # Integer arithmetic: no float rounding can move a sample between runs or machines.
    return [((2 * i + 1) * num_frames) // (2 * k) for i in range(k)]


def keyframes_of(video: Video, k: int) -> list[int]:
    """The keyframes of ``video`` (see :func:`sample_keyframes`)."""
    return sample_keyframes(video.num_frames, k)
