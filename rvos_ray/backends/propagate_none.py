"""No propagation (registered as ``propagation.backend: none``): the image-level baseline of
the paper's ablation (Table 3, first row), where candidates are never carried to other frames.

Each keyframe candidate becomes a tracklet that holds the candidate's mask on its own keyframe
(propagation probability 1.0) and, on every other frame, an empty mask with probability 0.0
(``extend: own_frame``, the default). ``extend: static`` copies the keyframe mask to every frame
instead (probability 1.0), the zero-motion reading of "no propagation". No model, no frames
read: the tracklet table is built from the candidates alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from rvos_ray import masks as rle
from rvos_ray.registry import ConfigError
from rvos_ray.stages.propagate import TrackletBuilder, keyframe_rows
from rvos_ray.types import Candidates, Video

EXTEND = ("own_frame", "static")


class KeyframeOnlyPropagator:
    """Tracklets that are the keyframe candidates themselves (see the module docstring)."""

    @dataclass
    class Options:
        extend: str = "own_frame"  # own_frame: empty masks elsewhere | static: the mask on every frame

    def __init__(self, options: Options) -> None:
        if options.extend not in EXTEND:
            raise ConfigError(f"propagation.options.extend: {options.extend!r} is not one of {list(EXTEND)}")
        self.options = options

    def propagate(self, video: Video, candidates: Candidates, tracklet_ids: Sequence[int]) -> pa.Table:
        builder = TrackletBuilder(video, candidates, tracklet_ids)
        own, ones = keyframe_rows(candidates)
        k = len(candidates)
        if self.options.extend == "static":
            other, probs = own, ones
        else:
            other, probs = [rle.empty(candidates.height, candidates.width)] * k, [0.0] * k
        for t in range(video.num_frames):
            if t == candidates.frame:
                builder.record(t, own, ones)
            else:
                builder.record(t, other, probs)
        return builder.table()
