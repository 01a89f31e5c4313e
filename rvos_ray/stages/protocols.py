"""The protocols that backends implement and the runtime calls. No Ray, no model imports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pyarrow as pa

from rvos_ray.types import Candidates, Video


@runtime_checkable
class Segmenter(Protocol):
    """Instance segmentation on keyframes."""

    name: str

    def segment(self, video: Video, frames: Sequence[int]) -> list[Candidates]:
        """One :class:`Candidates` per requested frame, masks at the frame's original size.
        Frames are read by the segmenter itself (batched over ``frames``)."""
        ...


@runtime_checkable
class Propagator(Protocol):
    """Propagates keyframe candidates forward and backward through the whole video."""

    def propagate(
        self, video: Video, candidates: Candidates, tracklet_ids: Sequence[int]
    ) -> pa.Table:
        """A tracklet table (``TRACKLET_SCHEMA``): one row per (candidate, frame) for every frame
        of the video; ``tracklet_ids[i]`` names candidate i's tracklet."""
        ...
