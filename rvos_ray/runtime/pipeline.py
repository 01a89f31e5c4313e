"""What both executors share around the stages: the split, stage events, keyframe batches, and
the writer stage (tables, submission PNGs, metrics, events, ``done.json``). No Ray here.

The stages themselves are the :class:`~rvos_ray.stages.protocols.Stage` classes of
:mod:`rvos_ray.stages` (and :class:`WriteStage` here); which calls a video needs, and where they
run, is the graph of :mod:`rvos_ray.runtime.graph`. The executors run each call through
:func:`rvos_ray.runtime.graph.execute`, which times it (:func:`timed`: one stage event per call,
and the telemetry hooks). Identical inputs give identical tables on both executors (tracklet
ids come from the plan, not from arrival order).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from rvos_ray import masks as rle
from rvos_ray.data.errors import DataError
from rvos_ray.registry import ConfigError
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.stages.keyframes import keyframes_of
from rvos_ray.stages.protocols import Stage
from rvos_ray.telemetry import metrics as telemetry
from rvos_ray.types import Resources, Video, VideoWork

Event = dict[str, Any]

#: the cluster node this process runs on, when an executor knows it (the Ray executor sets it in
#: its workers); stage events carry it, so a run can say which node did which work
PROCESS_NODE = ""

#: stage names as they appear in events, failures and the summary, in pipeline order
STAGES = ("segmentation", "pooling", "propagation", "nms", "grounding", "ensemble", "writer")


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def timed(stage: str, video_id: str, item: str, fn: Callable[[], Any], *, video_frames: int = 0,
          completes: str = "", variant: str = "", model: str = "", attempt: int = 0) -> tuple[Any, Event]:
    """Run ``fn`` and return (its result, the stage event with start/end wall times).

    Telemetry hook: the call is reported to this process's telemetry
    (:func:`rvos_ray.telemetry.metrics.current`) as started and finished (failed if ``fn``
    raises), tagged with the grounder ``variant`` / segmentation ``model``. ``video_frames``:
    the video's frame count when this call finishes its stage for the video (0 for one of
    several calls per video); ``completes``: a stage of several calls per video whose outputs
    this call consumes, so it is done for the video when this call starts. The tags and
    ``video_frames`` also go into the event (the run's event log)."""
    tel = telemetry.current()
    if completes:
        tel.video_stage_done(completes, video_frames)
    tel.stage_started(stage, variant=variant, model=model, attempt=attempt)
    start = time.time()
    try:
        out = fn()
    except BaseException:
        tel.stage_finished(stage, time.time() - start, ok=False, variant=variant, model=model)
        raise
    end = time.time()
    tel.stage_finished(stage, end - start, frames=video_frames, videos=1 if video_frames else 0,
                       variant=variant, model=model)
    event = {
        "video_id": video_id,
        "stage": stage,
        "item": item,
        "start": start,
        "end": end,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    event.update({k: v for k, v in (("frames", video_frames), ("completes", completes), ("variant", variant),
                                    ("model", model), ("node", PROCESS_NODE)) if v})
    return out, event


def compute_seconds(events: Sequence[Event]) -> float:
    """Sum of stage compute time of a set of events (what a serial run would spend)."""
    return float(sum(e["end"] - e["start"] for e in events if "end" in e and "start" in e))


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def open_dataset(dataset: str, root: str, split: str) -> Any:
    """The split's reader (cached per process: each worker builds it once, from small JSON)."""
    from rvos_ray.data.datasets import open_dataset as open_

    return open_(root, split, dataset)


@lru_cache(maxsize=8)
def scorer(dataset: str, root: str, split: str, protocol: str, strict: bool) -> Any:
    from rvos_ray.evaluation.scorer import Scorer

    return Scorer(open_dataset(dataset, root, split), protocol=protocol, strict=strict)



@dataclass(frozen=True)
class Split:
    """The videos of a run in split order: those ready to process, and those whose input is
    broken (a frame listed in the meta with no JPEG, a malformed expression), each with the
    :class:`~rvos_ray.data.errors.DataError` that names the file or key."""

    works: tuple[VideoWork, ...]
    invalid: tuple[tuple[str, DataError], ...]
    ids: tuple[str, ...]


def load_split(cfg: Any) -> Split:
    """The videos of ``cfg.data`` (after ``data.videos``: None = all, a count, or ids). A video
    whose input is broken does not stop the others (``data.strict``: it does, by raising)."""
    if not cfg.segmentation.models:
        raise ConfigError("segmentation.models: empty; list at least one model (name, backend, options)")
    reader = open_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split)
    ids = reader.video_ids()
    sel = cfg.data.videos
    if sel is None:
        chosen = ids
    elif isinstance(sel, int) and not isinstance(sel, bool):
        if sel < 0:
            raise ConfigError(f"data.videos: a count must be >= 0, got {sel}")
        chosen = ids[:sel]
    else:
        chosen = [str(v) for v in sel]
        unknown = [v for v in chosen if v not in set(ids)]
        if unknown:
            raise ConfigError(f"data.videos: not in split {cfg.data.split!r}: {unknown[:5]}")
    works, invalid = [], []
    for v in chosen:
        try:
            works.append(VideoWork(reader.video(v), tuple(reader.expressions(v))))
        except DataError as e:
            if cfg.data.strict:
                raise
            invalid.append((v, e))
    return Split(tuple(works), tuple(invalid), tuple(chosen))


# --------------------------------------------------------------------------------------------
# Keyframes
# --------------------------------------------------------------------------------------------


def keyframe_batches(video: Video, k: int, batch_size: int) -> tuple[list[int], list[list[int]]]:
    """(keyframes, keyframes cut into batches of ``batch_size`` for one segment call each)."""
    frames = keyframes_of(video, k)
    b = max(int(batch_size), 1)
    return frames, [frames[i : i + b] for i in range(0, len(frames), b)]


# --------------------------------------------------------------------------------------------
# Writer and scorer
# --------------------------------------------------------------------------------------------


class ChosenMasks:
    """The predicted mask of every (expression, frame) of one video: the chosen tracklet's
    mask, empty where it has none. Read by the scorer (``read(video, exp_id, frame)``)."""

    def __init__(self, work: VideoWork, tracklets: pa.Table, prediction: pa.Table, height: int, width: int):
        self.height, self.width = height, width
        self.index = {n: i for i, n in enumerate(work.video.frame_names)}
        cols = (tracklets.column(k).to_pylist() for k in ("tracklet_id", "frame", "rle"))
        self.rows = {(t, f): r for t, f, r in zip(*cols)}
        self.chosen = dict(zip(prediction.column("exp_id").to_pylist(), prediction.column("tracklet_id").to_pylist()))

    def name(self, video: str, exp_id: str, frame: str) -> str:
        return f"prediction ({video!r}, {exp_id!r}, {frame!r})"

    def read(self, video: str, exp_id: str, frame: str) -> np.ndarray:
        r = self.rows.get((self.chosen.get(exp_id, -1), self.index.get(frame, -1)))
        if r is None:
            return np.zeros((self.height, self.width), np.uint8)
        return rle.decode(r, self.height, self.width)


def frame_size(tracklets: pa.Table, video: Video) -> tuple[int, int]:
    if tracklets.num_rows:
        return int(tracklets.column("height")[0].as_py()), int(tracklets.column("width")[0].as_py())
    from rvos_ray.data import io as fio  # only for videos without a single tracklet

    img = fio.read_image(video.frame_paths[0])
    return int(img.shape[0]), int(img.shape[1])


def score_video(cfg: Mapping[str, Any], work: VideoWork, tracklets: pa.Table, prediction: pa.Table
                ) -> tuple[pa.Table, int] | None:
    """(per-expression metrics table, annotated frames scored) with the evaluation section's
    protocol; None when the video has no ground truth (no annotated frame, or expressions
    without an object id, like the official valid split)."""
    d, ev = cfg["data"], cfg["evaluation"]
    reader = open_dataset(d["dataset"], d["root"], d["split"])
    if not all(e.obj_ids for e in work.expressions):
        return None  # an unannotated split (the official valid meta names no objects)
    if not reader.annotated_frames(work.video_id):
        where = reader.annotation_dir(work.video_id) if hasattr(reader, "annotation_dir") else d["root"]
        raise DataError(f"{where}: no ground truth for video {work.video_id!r}, whose expressions name "
                        f"the objects they refer to (an annotated split); set run.score=false to "
                        f"write predictions without scoring")
    h, w = frame_size(tracklets, work.video)
    vs = scorer(d["dataset"], d["root"], d["split"], ev["protocol"], bool(ev["strict"])).score_video(
        work.video_id, ChosenMasks(work, tracklets, prediction, h, w))
    from rvos_ray.evaluation.scorer import metrics_table

    return metrics_table(vs.expressions, f"metrics of {work.video_id!r}"), vs.n_annotated


class WriteStage(Stage):
    """The video's tables, submission PNGs and (``run.score``, annotated splits) metrics, then
    ``done.json`` last, in the run directory ``run_uri``; ``c`` is the run's config (a plain
    dict). Its call returns the small done record the driver keeps (counts, per-stage seconds,
    encoder passes); it times itself, so its own event is in the video's event log."""

    stage = "writer"

    def __init__(self, run_uri: str, c: Mapping[str, Any], resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.run_uri, self.c = run_uri, c

    def process(self, work: VideoWork, every: pa.Table, kept: pa.Table, grounding: pa.Table, prediction: pa.Table,
                n_passes: int, *rest: Any) -> dict[str, Any]:
        """``rest``: the propagation and grounding calls' encoder passes (``n_passes`` of them,
        summed into the record's ``encoder_passes``), then every earlier call's event."""
        from rvos_ray.data.submission import write_predictions

        rd, vid = RunDir(self.run_uri), work.video_id

        def run() -> dict[str, Any]:
            for name, table in (("tracklets_all", every), ("tracklets", kept), ("grounding", grounding),
                                ("prediction", prediction)):
                rd.write_table(vid, name, table)
            pngs = write_predictions(rd.submission_dir, kept, prediction, work.video, work.expressions)
            scored = score_video(self.c, work, kept, prediction) if self.c["run"]["score"] else None
            record: dict[str, Any] = {
                "expressions": len(work.expressions), "frames": work.video.num_frames, "pngs": pngs,
                "tracklets": _num_tracklets(every), "kept": _num_tracklets(kept),
                "encoder_passes": sum_passes(rest[:n_passes])}
            if scored is not None:
                rd.write_table(vid, "metrics", scored[0])
                record["annotated_frames"] = scored[1]
            return record

        record, ev = timed(self.stage, vid, "all", run, video_frames=work.video.num_frames)
        events = [*rest[n_passes:], ev]
        rd.write_events(vid, events)
        record["stage_seconds"] = per_stage = {}
        for e in events:
            per_stage[e["stage"]] = per_stage.get(e["stage"], 0.0) + e["end"] - e["start"]
        rd.mark_done(vid, record)
        return record


def sum_passes(passes: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """The sum of several calls' (or videos') encoder passes, per kind and encoder."""
    total: dict[str, dict[str, int]] = {"visual": {}, "text": {}}
    for p in passes:
        for kind, by in p.items():
            for k, n in by.items():
                total.setdefault(kind, {})[k] = total.get(kind, {}).get(k, 0) + int(n)
    return {kind: dict(sorted(by.items())) for kind, by in sorted(total.items())}


def _num_tracklets(t: pa.Table) -> int:
    return len(set(t.column("tracklet_id").to_pylist())) if t.num_rows else 0
