"""Per-stage rates for the driver's progress bar.

The driver learns a video's per-stage compute seconds from its done record
(``stage_seconds``, ``frames``), whichever executor ran it. :class:`StageRates` accumulates
them and renders a compact postfix: the run's videos/s over wall time, then each stage's
frames per second of its own compute time (what one worker of that stage sustains), e.g.
``0.41 video/s | seg 12 f/s  prop 3.1 f/s  nms 900 f/s ...``; the slowest stage is the one to
give more replicas.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

#: short names for the bar
ABBREV = {"segmentation": "seg", "pooling": "pool", "propagation": "prop", "nms": "nms", "grounding": "gnd",
          "ensemble": "ens", "writer": "write", "scoring": "score"}


class StageRates:
    """Accumulates done records; ``postfix()`` is the progress bar text."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.videos = 0
        self.frames = 0
        self.seconds: dict[str, float] = defaultdict(float)
        self.stage_frames: dict[str, int] = defaultdict(int)

    def add(self, record: Mapping[str, Any]) -> None:
        """One finished video's done record (``frames``, ``stage_seconds``)."""
        frames = int(record.get("frames", 0))
        self.videos += 1
        self.frames += frames
        for stage, sec in (record.get("stage_seconds") or {}).items():
            self.seconds[stage] += float(sec)
            self.stage_frames[stage] += frames

    def rates(self) -> dict[str, float]:
        """stage -> frames per second of that stage's compute time."""
        return {s: self.stage_frames[s] / sec for s, sec in self.seconds.items() if sec > 0}

    def videos_per_s(self) -> float:
        wall = self.clock() - self.t0
        return self.videos / wall if wall > 0 else 0.0

    def bottleneck(self) -> str | None:
        r = self.rates()
        return min(r, key=r.get) if r else None

    def postfix(self) -> str:
        if not self.videos:
            return ""
        parts = [f"{ABBREV.get(s, s)} {_num(v)} f/s" for s, v in self.rates().items()]
        return f"{_num(self.videos_per_s())} video/s | " + "  ".join(parts)


def _num(x: float) -> str:
    """Two or three significant digits: 0.042, 3.1, 12, 950, 1.2k."""
    if x >= 1000:
        return f"{x / 1000:.1f}k"
    if x >= 10:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return f"{x:.2g}"
