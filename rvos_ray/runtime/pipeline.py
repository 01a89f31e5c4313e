"""The per-video stage sequence as plain Python, shared by both executors. No Ray here.

One video goes through::

    keyframe batches --segment (per model)--> pool per keyframe --> propagation plan
      --propagate (per keyframe x chunk of candidates)--> tracklet-NMS
      --ground (per group of variants sharing encoders)--> ensemble --> finish_video (tables, submission PNGs, metrics, events, done.json)

The stage functions here are plain: records in, records out. Which calls a video needs, and
where they run, is the graph of :mod:`rvos_ray.runtime.graph`; the executors run each call
through :func:`rvos_ray.runtime.graph.execute`, which times it (:func:`timed`: one stage event
per call, and the telemetry hooks) around any stage. Identical inputs give identical tables on
both executors (tracklet ids come from the plan, not from arrival order).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rvos_ray import masks as rle
from rvos_ray.data.errors import DataError
from rvos_ray.registry import ConfigError
from rvos_ray.runtime import stage_adapters as adapters
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.stages.keyframes import keyframes_of
from rvos_ray.telemetry import metrics as telemetry
from rvos_ray.types import (
    GROUNDING_SCHEMA,
    METRICS_SCHEMA,
    PREDICTION_SCHEMA,
    TRACKLET_SCHEMA,
    Candidates,
    Expression,
    Video,
    table_from_columns,
    validate,
)

Event = dict[str, Any]

#: the cluster node this process runs on, when an executor knows it (the Ray executor sets it in
#: its workers); stage events carry it, so a run can say which node did which work
PROCESS_NODE = ""

#: stage names as they appear in events, failures and the summary, in pipeline order
STAGES = ("segmentation", "pooling", "propagation", "nms", "grounding", "ensemble", "writer")


@dataclass(frozen=True)
class VideoWork:
    """One video of the split with its expressions: all a worker needs (no pixels)."""

    video: Video
    expressions: tuple[Expression, ...]

    @property
    def video_id(self) -> str:
        return self.video.video_id


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


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def timed(stage: str, video_id: str, item: str, fn: Callable[[], Any], *, video_frames: int = 0,
          completes: str = "", variant: str = "", model: str = "") -> tuple[Any, Event]:
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
    tel.stage_started(stage, variant=variant, model=model)
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
    reader = adapters.open_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split)
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


def list_work(cfg: Any) -> list[VideoWork]:
    """The processable videos of ``cfg.data`` (see :func:`load_split`)."""
    return list(load_split(cfg).works)


# --------------------------------------------------------------------------------------------
# Segmentation and pooling
# --------------------------------------------------------------------------------------------


def keyframe_batches(video: Video, k: int, batch_size: int) -> tuple[list[int], list[list[int]]]:
    """(keyframes, keyframes cut into batches of ``batch_size`` for one segment call each)."""
    frames = keyframes_of(video, k)
    b = max(int(batch_size), 1)
    return frames, [frames[i : i + b] for i in range(0, len(frames), b)]


def segment_call(segmenter: Any, video: Video, frames: Sequence[int]) -> list[Candidates]:
    """One model on one batch of keyframes (frames are read by the segmenter itself)."""
    return list(segmenter.segment(video, list(frames)))


def pool_call(video: Video, keyframes: Sequence[int], per_model: Sequence[Sequence[list[Candidates]]],
              duplicate_iou: float | None = None) -> tuple[list[Candidates], list[int]]:
    """(each keyframe's candidates, their counts): every model's candidates pooled per keyframe,
    in model order (the paper pools HTC and CondInst proposals). ``per_model[m]`` is model m's
    list of batch results; each segment call returned the frames of its batch (checked by the
    segmenter), so a model's batches in order are the keyframes in order. ``duplicate_iou``
    (``propagation.avoid``): same-keyframe duplicates merged first (:mod:`rvos_ray.stages.prune`)."""
    from rvos_ray.stages.prune import merge_duplicates

    flat = [[c for batch in model for c in batch] for model in per_model]
    pooled = [Candidates.concat([m[i] for m in flat]) for i in range(len(keyframes))]
    if duplicate_iou is not None:
        pooled = [merge_duplicates(c, float(duplicate_iou)) for c in pooled]
    return pooled, [len(c) for c in pooled]


def propagation_plan(counts: Sequence[int], chunk: int) -> list[PropagationCall]:
    """Calls per keyframe and per chunk of ``chunk`` candidates; tracklet ids number the
    candidates keyframe by keyframe, so they do not depend on which call finishes first."""
    if chunk < 1:
        raise ConfigError(f"propagation.candidates_per_call must be >= 1, got {chunk}")
    calls, next_id = [], 0
    for k, n in enumerate(counts):
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            calls.append(PropagationCall(k, s, e, next_id + s))
        next_id += n
    return calls


def slice_candidates(c: Candidates, start: int, stop: int) -> Candidates:
    from rvos_ray.stages.prune import subset

    return subset(c, range(start, stop))


def propagate_call(propagator: Any, video: Video, candidates: Candidates, call: PropagationCall,
                   covered_iou: float | None = None, *earlier: pa.Table
                   ) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """(tracklets, passes): one chunk of one keyframe's candidates through the video. With
    ``covered_iou`` (``propagation.avoid``), the candidates an ``earlier`` keyframe's tracklet
    already covers at their frame are not propagated (their tracklet ids stay unused). The
    passes are ``{"propagation": {"backbone": frames the backbone encoded}}`` (the summary's
    ``encoder_passes`` with the grounders')."""
    from rvos_ray.stages.prune import masks_at, subset, uncovered

    chunk, ids = slice_candidates(candidates, call.start, call.stop), call.tracklet_ids
    if covered_iou is not None and earlier:
        keep = uncovered(chunk, masks_at(earlier, chunk.frame), float(covered_iou))
        chunk, ids = subset(chunk, keep), [ids[i] for i in keep]
    before = int(getattr(propagator, "backbone_forward_passes", 0))
    table = propagator.propagate(video, chunk, ids)
    passes = int(getattr(propagator, "backbone_forward_passes", 0)) - before
    return (validate(table, TRACKLET_SCHEMA, f"propagation of {video.video_id!r} keyframe {candidates.frame}"),
            {"propagation": {"backbone": passes} if passes else {}})


# --------------------------------------------------------------------------------------------
# Tracklet-NMS, grounding, ensemble
# --------------------------------------------------------------------------------------------


def concat_tracklets(tables: Sequence[pa.Table]) -> pa.Table:
    """All tracklets of a video, sorted by (tracklet_id, frame). Dictionaries are unified so
    tables from different calls (different ``source`` dictionaries) concatenate."""
    if not tables:
        return TRACKLET_SCHEMA.empty_table()
    t = pa.concat_tables(list(tables)).unify_dictionaries().combine_chunks()
    return t.sort_by([("tracklet_id", "ascending"), ("frame", "ascending")])


def nms_call(nms_cfg: Mapping[str, Any], video: Video, tables: Sequence[pa.Table]) -> tuple[pa.Table, pa.Table]:
    """(all tracklets of the video, the tracklets NMS keeps)."""
    from rvos_ray.stages.tracklet_nms import tracklet_nms

    every = concat_tracklets(tables)
    return every, tracklet_nms(every, nms_cfg)


def ground_call(grounder: Any, work: VideoWork, tracklets: pa.Table) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """(grounding table, encoder passes): one grounding stage (a group of variants sharing
    encoders) over every expression of the video (frames read by the stage); the passes are
    ``{"visual": {encoder: frames}, "text": {encoder: expressions}}`` of this call."""
    before = encoder_passes(grounder)
    table = grounder.ground(work.video, tracklets, list(work.expressions))
    return table, add_passes(encoder_passes(grounder), before, sign=-1)


def encoder_passes(grounder: Any) -> dict[str, dict[str, int]]:
    """The encoder work a grounding stage has done since it was built (see its ``counts``)."""
    c = grounder.counts
    return {"visual": dict(c.visual_frames), "text": dict(c.text_expressions)}


def add_passes(a: Mapping[str, Mapping[str, int]], b: Mapping[str, Mapping[str, int]], sign: int = 1
               ) -> dict[str, dict[str, int]]:
    """``a + sign * b`` per kind and encoder, leaving out encoders with no passes."""
    out: dict[str, dict[str, int]] = {}
    for kind in sorted({"visual", "text", *a, *b}):
        x, y = a.get(kind, {}), b.get(kind, {})
        out[kind] = {k: n for k in sorted({*x, *y}) if (n := int(x.get(k, 0)) + sign * int(y.get(k, 0)))}
    return out


def ensemble_call(ens_cfg: Mapping[str, Any], work: VideoWork, grounding: Sequence[pa.Table]) -> tuple[pa.Table, pa.Table]:
    """(all variants' grounding table, the prediction table)."""
    from rvos_ray.stages.ensemble import Ensembler

    g = concat_grounding(grounding)
    return g, validate(Ensembler(ens_cfg).combine(g), PREDICTION_SCHEMA, f"prediction of {work.video_id!r}")


def concat_grounding(tables: Sequence[pa.Table]) -> pa.Table:
    """Every variant's grounding rows of one video, in a fixed order (variant-major)."""
    if not tables:
        return GROUNDING_SCHEMA.empty_table()
    t = pa.concat_tables(list(tables)).combine_chunks()
    return t.sort_by([(k, "ascending") for k in ("exp_id", "variant", "frame", "tracklet_id")])


# --------------------------------------------------------------------------------------------
# Writer and scorer
# --------------------------------------------------------------------------------------------


class ChosenMasks:
    """The predicted mask of every (expression, frame) of one video: the chosen tracklet's
    mask, empty where it has none. Read by the scorer (``read(video, exp_id, frame)``)."""

    def __init__(self, work: VideoWork, tracklets: pa.Table, prediction: pa.Table, height: int, width: int):
        self.height, self.width = height, width
        self.index = {n: i for i, n in enumerate(work.video.frame_names)}
        rows: dict[tuple[int, int], bytes] = {}
        for t, f, r in zip(tracklets.column("tracklet_id").to_pylist(), tracklets.column("frame").to_pylist(),
                           tracklets.column("rle").to_pylist()):
            rows[(t, f)] = r
        self.rows = rows
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
    reader = adapters.open_dataset(d["dataset"], d["root"], d["split"])
    if not all(e.obj_ids for e in work.expressions):
        return None  # an unannotated split (the official valid meta names no objects)
    if not reader.annotated_frames(work.video_id):
        where = reader.annotation_dir(work.video_id) if hasattr(reader, "annotation_dir") else d["root"]
        raise DataError(f"{where}: no ground truth for video {work.video_id!r}, whose expressions name "
                        f"the objects they refer to (an annotated split); set run.score=false to "
                        f"write predictions without scoring")
    h, w = frame_size(tracklets, work.video)
    scorer = adapters.scorer(d["dataset"], d["root"], d["split"], ev["protocol"], bool(ev["strict"]))
    vs = scorer.score_video(work.video_id, ChosenMasks(work, tracklets, prediction, h, w))
    rows = vs.expressions
    table = table_from_columns(
        {"video": [r.video for r in rows], "exp_id": [r.exp_id for r in rows], "J": [r.J for r in rows],
         "F": [r.F for r in rows], "J&F": [r.JF for r in rows], "n_frames": [r.n_frames for r in rows]},
        METRICS_SCHEMA, f"metrics of {work.video_id!r}")
    return table, vs.n_annotated


def finish_video(run_uri: str, cfg: Mapping[str, Any], work: VideoWork, every: pa.Table, kept: pa.Table,
                 grounding: pa.Table, prediction: pa.Table, events: Sequence[Event],
                 passes: Sequence[Mapping[str, Mapping[str, int]]] = ()) -> dict[str, Any]:
    """Write the video's tables, submission PNGs and (``run.score``, annotated splits) metrics,
    then ``done.json`` last. ``cfg`` is the run's config as a plain dict; ``passes``: the
    grounding calls' encoder passes (summed into the record's ``encoder_passes``).

    Returns the small done record the driver keeps (counts, per-stage seconds, mean J&F)."""
    from rvos_ray.data.submission import write_predictions

    rd = RunDir(run_uri)

    def run() -> dict[str, Any]:
        vid = work.video_id
        rd.write_table(vid, "tracklets_all", every)
        rd.write_table(vid, "tracklets", kept)
        rd.write_table(vid, "grounding", grounding)
        rd.write_table(vid, "prediction", prediction)
        pngs = write_predictions(rd.submission_dir, kept, prediction, work.video, work.expressions)
        scored = score_video(cfg, work, kept, prediction) if cfg["run"]["score"] else None
        record: dict[str, Any] = {
            "expressions": len(work.expressions), "frames": work.video.num_frames, "pngs": pngs,
            "tracklets": _num_tracklets(every), "kept": _num_tracklets(kept),
            "encoder_passes": sum_passes(passes)}
        if scored is not None:
            rd.write_table(vid, "metrics", scored[0])
            record["annotated_frames"] = scored[1]
        return record

    record, ev = timed("writer", work.video_id, "all", run, video_frames=work.video.num_frames)
    all_events = [*events, ev]
    rd.write_events(work.video_id, all_events)
    per_stage: dict[str, float] = {}
    for e in all_events:
        per_stage[e["stage"]] = per_stage.get(e["stage"], 0.0) + e["end"] - e["start"]
    record["stage_seconds"] = per_stage
    rd.mark_done(work.video_id, record)
    return record


def sum_passes(passes: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """The sum of several calls' (or videos') encoder passes."""
    total: dict[str, dict[str, int]] = {"visual": {}, "text": {}}
    for p in passes:
        total = add_passes(total, p)
    return total


def _num_tracklets(t: pa.Table) -> int:
    return len(set(t.column("tracklet_id").to_pylist())) if t.num_rows else 0
