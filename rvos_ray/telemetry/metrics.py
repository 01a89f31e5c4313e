"""Per-stage telemetry: what every stage call did, as counters, latency histograms and gauges.

Every stage call of the pipeline reports to the process's :class:`Telemetry` (:func:`current`):
``stage_started`` before it runs, ``stage_finished`` after (with ``ok=False`` when it raised).
The driver reports ``submitted`` calls and ``video_failed``. Each report is tagged with the
stage and, where they apply, the grounder ``variant`` and the segmentation ``model``; the
stage call's event (start, end, frames, tags) is what the pipeline writes to the run's event
log, so the live metrics and the log describe the same calls.

Sinks receive the measurements:

- :class:`MemorySink` keeps totals in this process (no Ray): the in-process executor, tests,
  the driver's progress bar.
- :class:`RaySink` records through ``ray.util.metrics``, so Ray's metrics agent exports them on
  its Prometheus endpoint (``ray_rvos_stage_*``). Ray is imported there, lazily, and only
  there: stages and the pipeline stay Ray-free.

Which sink a process uses is decided on first use (:func:`current`): ``RVOS_TELEMETRY`` =
``auto`` (default: Ray's when this process is connected to Ray, else memory), ``ray``,
``memory`` or ``off``, read from this process's environment (a Ray worker inherits its
raylet's, so set it where the cluster or the local Ray is started).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: the environment variable choosing the sink of a process (see module docstring)
ENV = "RVOS_TELEMETRY"

#: tags of every metric; a value that does not apply is ""
TAG_KEYS = ("stage", "variant", "model")

#: latency histogram bucket bounds, seconds (tiny CPU models take ms, paper models minutes)
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
                  150.0, 300.0, 600.0, 1800.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name as created in Ray (Prometheus adds ``ray_`` and, for counters,
    ``_total``), its kind and its help text."""

    name: str
    kind: str  # counter | histogram | gauge
    help: str


#: every metric the telemetry records, by short key
METRICS: dict[str, MetricSpec] = {
    "submitted": MetricSpec("rvos_stage_submitted", "counter", "stage calls submitted by the driver"),
    "started": MetricSpec("rvos_stage_started", "counter", "stage calls started (first attempts)"),
    "items": MetricSpec("rvos_stage_items", "counter", "stage calls finished without error"),
    "frames": MetricSpec("rvos_stage_frames", "counter", "video frames covered by finished stage calls"),
    "videos": MetricSpec("rvos_stage_videos", "counter", "videos for which the stage finished"),
    "failures": MetricSpec("rvos_stage_failures", "counter", "stage calls that raised an error"),
    "retries": MetricSpec("rvos_stage_retries", "counter",
                          "stage calls started again after their worker died (Ray retries)"),
    "videos_failed": MetricSpec("rvos_stage_videos_failed", "counter",
                                "videos given up in this stage (failure record written)"),
    "abandoned": MetricSpec("rvos_stage_abandoned", "counter",
                            "submitted stage calls that never ran: an earlier stage of their video failed"),
    "latency": MetricSpec("rvos_stage_latency_seconds", "histogram", "wall time of one stage call"),
    "in_flight": MetricSpec("rvos_stage_in_flight", "gauge", "stage calls running in a process"),
}


def prometheus_name(key: str, suffix: str = "") -> str:
    """The name Ray's Prometheus endpoint exports a metric under (``suffix``: ``_bucket``,
    ``_sum``, ``_count`` for the histogram)."""
    spec = METRICS[key]
    name = f"ray_{spec.name}"
    if spec.kind == "counter":
        return name + "_total"
    return name + suffix


Tags = tuple[str, str, str]  # (stage, variant, model)


def tags_of(stage: str, variant: str = "", model: str = "") -> Tags:
    return (str(stage), str(variant or ""), str(model or ""))


class Sink(Protocol):
    """Receives measurements; ``key`` is a key of :data:`METRICS`."""

    def count(self, key: str, value: float, tags: Tags) -> None: ...

    def observe(self, key: str, value: float, tags: Tags) -> None: ...

    def gauge(self, key: str, value: float, tags: Tags) -> None: ...


class MemorySink:
    """Totals in this process: counters, gauges and every latency observation."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, Tags], float] = defaultdict(float)
        self.gauges: dict[tuple[str, Tags], float] = {}
        self.observations: dict[tuple[str, Tags], list[float]] = defaultdict(list)

    def count(self, key: str, value: float, tags: Tags) -> None:
        self.counters[(key, tags)] += value

    def observe(self, key: str, value: float, tags: Tags) -> None:
        self.observations[(key, tags)].append(value)

    def gauge(self, key: str, value: float, tags: Tags) -> None:
        self.gauges[(key, tags)] = value

    def total(self, key: str, stage: str | None = None, **match: str) -> float:
        """Sum of a counter over every tag set matching ``stage`` and ``variant``/``model``."""
        out = 0.0
        for (k, tags), v in self.counters.items():
            if k == key and _matches(tags, stage, match):
                out += v
        return out


def _matches(tags: Tags, stage: str | None, match: dict[str, str]) -> bool:
    if stage is not None and tags[0] != stage:
        return False
    return all(tags[TAG_KEYS.index(k)] == v for k, v in match.items())


class RaySink:
    """Records through ``ray.util.metrics``; Ray's metrics agent serves them to Prometheus.

    The metric objects are made on first use in each process (a Ray worker makes its own)."""

    def __init__(self) -> None:
        from ray.util import metrics as rm  # the one place telemetry imports Ray

        self._metrics: dict[str, Any] = {}
        for key, spec in METRICS.items():
            if spec.kind == "counter":
                m = rm.Counter(spec.name, description=spec.help, tag_keys=TAG_KEYS)
            elif spec.kind == "histogram":
                m = rm.Histogram(spec.name, description=spec.help, boundaries=list(LATENCY_BOUNDS),
                                 tag_keys=TAG_KEYS)
            else:
                m = rm.Gauge(spec.name, description=spec.help, tag_keys=TAG_KEYS)
            self._metrics[key] = m

    @staticmethod
    def _tags(tags: Tags) -> dict[str, str]:
        return dict(zip(TAG_KEYS, tags))

    def count(self, key: str, value: float, tags: Tags) -> None:
        self._metrics[key].inc(value, tags=self._tags(tags))

    def observe(self, key: str, value: float, tags: Tags) -> None:
        self._metrics[key].observe(value, tags=self._tags(tags))

    def gauge(self, key: str, value: float, tags: Tags) -> None:
        self._metrics[key].set(value, tags=self._tags(tags))


class Telemetry:
    """The stage hooks of one process, fanned out to its sinks. Thread-safe (an actor may run
    calls concurrently)."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self._in_flight: dict[Tags, int] = defaultdict(int)
        # driver: calls submitted per video and tag set, until the video is done or failed
        self._pending: dict[str, dict[Tags, int]] = defaultdict(lambda: defaultdict(int))
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    def memory(self) -> MemorySink | None:
        """This process's :class:`MemorySink`, if it has one."""
        return next((s for s in self.sinks if isinstance(s, MemorySink)), None)

    def _count(self, key: str, value: float, tags: Tags) -> None:
        for s in self.sinks:
            s.count(key, value, tags)

    # ---- driver --------------------------------------------------------------------------------

    def submitted(self, stage: str, n: int = 1, *, video_id: str = "", variant: str = "", model: str = "") -> None:
        """``n`` calls of a stage of ``video_id`` handed to the scheduler (queue depth =
        submitted - started - abandoned)."""
        if self.sinks and n:
            tags = tags_of(stage, variant, model)
            self._count("submitted", float(n), tags)
            if video_id:
                with self._lock:
                    self._pending[video_id][tags] += n

    def video_done(self, video_id: str) -> None:
        """Every call submitted for the video has run (driver)."""
        with self._lock:
            self._pending.pop(video_id, None)

    def video_failed(self, stage: str, video_id: str = "", order: Sequence[str] = ()) -> None:
        """A video given up in ``stage`` (after retries). Its submitted calls of the stages after
        ``stage`` in ``order`` (the pipeline's stage order) never run: they count as abandoned,
        so they leave the queue."""
        if not self.sinks:
            return
        self._count("videos_failed", 1.0, tags_of(stage))
        with self._lock:
            pending = self._pending.pop(video_id, {})
        after = set(order[list(order).index(stage) + 1:]) if stage in order else set()
        for tags, n in sorted(pending.items()):
            if tags[0] in after:
                self._count("abandoned", float(n), tags)

    # ---- stage calls --------------------------------------------------------------------------

    def stage_started(self, stage: str, *, variant: str = "", model: str = "", attempt: int = 0) -> None:
        """A stage call begins; ``attempt`` > 0 when Ray runs it again after a worker died (the
        executor knows)."""
        if not self.sinks:
            return
        tags = tags_of(stage, variant, model)
        self._count("retries" if attempt > 0 else "started", 1.0, tags)
        with self._lock:
            self._in_flight[tags] += 1
            n = self._in_flight[tags]
        for s in self.sinks:
            s.gauge("in_flight", float(n), tags)

    def stage_finished(self, stage: str, seconds: float, *, ok: bool = True, frames: float = 0.0,
                       videos: float = 0.0, variant: str = "", model: str = "") -> None:
        """A stage call ended after ``seconds``: counts its frames and videos when ``ok``,
        a failure otherwise."""
        if not self.sinks:
            return
        tags = tags_of(stage, variant, model)
        with self._lock:
            self._in_flight[tags] = max(self._in_flight[tags] - 1, 0)
            n = self._in_flight[tags]
        for s in self.sinks:
            s.gauge("in_flight", float(n), tags)
            s.observe("latency", float(seconds), tags)
            if ok:
                s.count("items", 1.0, tags)
                if frames:
                    s.count("frames", float(frames), tags)
                if videos:
                    s.count("videos", float(videos), tags)
            else:
                s.count("failures", 1.0, tags)

    def video_stage_done(self, stage: str, frames: float = 0.0) -> None:
        """A fan-out stage (several calls per video: segmentation, propagation, grounding)
        finished a video of ``frames`` frames. Counted once, by the call that consumes all of
        the stage's outputs, and tagged with the stage only, so that summing a stage's videos
        never counts a video once per model or variant."""
        if self.sinks:
            tags = tags_of(stage)
            self._count("videos", 1.0, tags)
            if frames:
                self._count("frames", float(frames), tags)


# --------------------------------------------------------------------------------------------
# The process's telemetry
# --------------------------------------------------------------------------------------------

_current: Telemetry | None = None
_current_lock = threading.Lock()


def _ray_connected() -> bool:
    """True when this process is connected to Ray (a Ray worker, or a driver after
    ``ray.init``). Ray is not imported here: a process that never imported it is not."""
    ray = sys.modules.get("ray")
    try:
        return ray is not None and bool(ray.is_initialized())
    except AttributeError:  # a half-imported ray module: treat as not connected
        return False


def make(mode: str | None = None) -> Telemetry:
    """The telemetry for ``mode`` (default: ``$RVOS_TELEMETRY`` or ``auto``)."""
    mode = (mode or os.environ.get(ENV) or "auto").strip().lower()
    if mode == "off":
        return Telemetry([])
    if mode == "memory":
        return Telemetry([MemorySink()])
    if mode == "ray" or (mode == "auto" and _ray_connected()):
        return Telemetry([RaySink(), MemorySink()])
    if mode == "auto":
        return Telemetry([MemorySink()])
    raise ValueError(f"{ENV}={mode!r}: expected one of auto, ray, memory, off")


_made_for_ray: bool | None = None  # auto mode: whether Ray was connected when made, else None


def current() -> Telemetry:
    """This process's telemetry, made on first use (see :func:`make`). In ``auto`` mode it is
    made again when the process connects to or disconnects from Ray (tests, notebooks)."""
    global _current, _made_for_ray
    connected = _ray_connected() if _made_for_ray is not None or _current is None else None
    if _current is None or (_made_for_ray is not None and connected != _made_for_ray):
        with _current_lock:
            auto = (os.environ.get(ENV) or "auto").strip().lower() == "auto"
            _current = make()
            _made_for_ray = bool(connected) if auto else None
    return _current


def install(telemetry: Telemetry | None) -> Telemetry | None:
    """Replace this process's telemetry (None: decide again on next use); returns the old one."""
    global _current, _made_for_ray
    with _current_lock:
        old, _current, _made_for_ray = _current, telemetry, None
    return old


# --------------------------------------------------------------------------------------------
# Summaries over events (the run's event log) for progress bars and reports
# --------------------------------------------------------------------------------------------


def stage_key(event: dict[str, Any]) -> str:
    """``stage`` or ``stage[variant]`` / ``stage[model]``: one series of the dashboards."""
    extra = event.get("variant") or event.get("model") or ""
    return f"{event['stage']}[{extra}]" if extra else str(event["stage"])


def stage_call_events(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage-call events of an event log (not the driver's)."""
    return [e for e in events if e.get("stage") != "driver" and "start" in e and "end" in e]


def now() -> float:
    return time.time()
