"""The per-video graph, described once: which calls a video needs, what each consumes, and which
stage object runs it. Both executors interpret it; no Ray here.

The graph is a sequence of :data:`NODES`. Each node plans its calls for one video from the run's
config and the outputs of earlier nodes (:class:`Out` placeholders); the fan-out keys are::

    segmentation  per segmentation model x keyframe batch   SegmentStage per model (actors)
    pooling       one per video                             PoolStage (a task)
    propagation   per keyframe x chunk of candidates        PropagateStage (actors)
    nms           one per video                             NMSStage (a task)
    grounding     per group of variants sharing encoders    GroundStage per group (actors)
    ensemble      one per video                             EnsembleStage (a task)
    writer        one per video (its done record)           WriteStage (a task)

A node may need the *value* of an earlier output to plan (propagation fans out on the pooled
candidate counts): :meth:`VideoGraph.plan` stops there, the executor fetches that value
(in-process: it has it; Ray: it waits for that small object) and planning resumes.

A call names the stage object that runs it (its :attr:`~rvos_ray.stages.protocols.Stage.key`
in :func:`stages_of`). Both executors run a call through :func:`execute`, which calls the
stage's ``process`` and times it and reports it to telemetry (the stage event): in-process
directly, on Ray inside the stage's actor (a stage with models) or a task, with every
:class:`Out` argument an ObjectRef.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rvos_ray.runtime import pipeline as pl
from rvos_ray.stages.protocols import Stage
from rvos_ray.types import Resources

#: a stage object's key: (stage,) or (stage, name), e.g. ("segmentation", "htc")
StageKey = tuple[str, ...]


@dataclass(frozen=True)
class Out:
    """Output ``index`` of the call ``call`` (an id within the video's graph)."""

    call: str
    index: int


#: stand-ins for the video's records (the Ray executor puts each once per video)
VIDEO, WORK = Out("video", 0), Out("work", 0)


@dataclass(frozen=True)
class Call:
    """One call of a video's graph."""

    id: str
    key: StageKey  # the stage object that runs it: stage.process(*args) -> its outputs
    item: str  # what the call covers, for events, errors and the stall report
    video_id: str
    args: tuple
    outputs: int  # values it returns before its event (the writer: 0, it returns its record)
    tags: Mapping[str, str] = field(default_factory=dict)  # telemetry tags (model=, variant=)
    frames: int = 0  # the video's frames, when this call finishes its stage for the video
    completes: str = ""  # a fan-out stage this call consumes (done for the video as it starts)
    affinity: str = ""  # calls of one stage with the same affinity run on the same replica

    @property
    def stage(self) -> str:
        return self.key[0]

    @property
    def event(self) -> Out:
        """Its stage event (the writer: its done record)."""
        return Out(self.id, self.outputs)

    @property
    def writer(self) -> bool:
        return self.stage == "writer"

    @property
    def returns(self) -> int:
        return self.outputs + 1

    def out(self, index: int) -> Out:
        return Out(self.id, index)


class StageError(Exception):
    """A video failed in ``stage``: planning its node (e.g. a bad keyframe count or chunk size)
    or, in-process, one of its calls."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


class NeedValue(Exception):
    """Planning needs the value of ``out`` first."""

    def __init__(self, out: Out) -> None:
        super().__init__(f"needs the value of {out}")
        self.out = out


@dataclass
class VideoGraph:
    """The calls of one video, planned node by node as far as the known values allow."""

    c: Mapping[str, Any]  # the run's config (plain dict)
    work: pl.VideoWork
    run_uri: str
    calls: list[Call] = field(default_factory=list)
    by_stage: dict[str, list[Call]] = field(default_factory=dict)
    values: dict[Out, Any] = field(default_factory=dict)
    node: int = 0  # the next node to plan
    waiting: Out | None = None  # the value planning stopped at

    @property
    def video(self) -> Any:
        return self.work.video

    @property
    def done(self) -> bool:
        return self.node == len(NODES)

    def plan(self) -> list[Call]:
        """Plan the next nodes; returns the new calls, in submission order. Stops at a node
        that needs a value not in :attr:`values` (then :attr:`waiting` names it); raises
        :class:`StageError` naming the node's stage when its planning fails."""
        new: list[Call] = []
        self.waiting = None
        while self.node < len(NODES):
            try:
                calls = NODES[self.node].plan(self)
            except NeedValue as e:
                self.waiting = e.out
                break
            except Exception as e:  # noqa: BLE001 - the video fails in that stage
                raise StageError(NODES[self.node].stage, e) from e
            self.by_stage[NODES[self.node].stage] = calls
            self.calls += calls
            new += calls
            self.node += 1
        return new

    def value(self, out: Out) -> Any:
        if out not in self.values:
            raise NeedValue(out)
        return self.values[out]

    def call(self, key: StageKey, item: str, args: Sequence[Any], outputs: int, *, frames: bool = False,
             completes: str = "", affinity: str = "", **tags: str) -> Call:
        """A call of this video (``frames``: it finishes its stage for the video)."""
        return Call(f"{key[0]}:{item}", key, item, self.work.video_id, tuple(args), outputs, dict(tags),
                    self.video.num_frames if frames else 0, completes, affinity)  # items are unique per stage


def execute(call: Call, stage: Stage, *args: Any, attempt: int = 0) -> Any:
    """``stage.process`` on ``call``'s resolved ``args``: its outputs, then its stage event
    (:func:`rvos_ray.runtime.pipeline.timed`: start/end, host, node, tags, and the telemetry
    hooks; ``attempt`` > 0: the executor runs the call again). The writer returns its done
    record (it logs its own event with the video's others before it marks the video done)."""
    if call.writer:
        return stage.process(*args)
    out, ev = pl.timed(call.stage, call.video_id, call.item, lambda: stage.process(*args),
                       video_frames=call.frames, completes=call.completes, attempt=attempt, **call.tags)
    return (*out, ev) if call.outputs > 1 else (out, ev)


@dataclass(frozen=True)
class Node:
    stage: str
    plan: Callable[[VideoGraph], list[Call]]


# --------------------------------------------------------------------------------------------
# The nodes
# --------------------------------------------------------------------------------------------


def _keyframe_batches(g: VideoGraph) -> tuple[list[int], list[list[int]]]:
    return pl.keyframe_batches(g.video, g.c["keyframes"]["k"], g.c["segmentation"]["resources"]["batch_size"])


def _segmentation(g: VideoGraph) -> list[Call]:
    _, batches = _keyframe_batches(g)
    return [g.call(("segmentation", name), f"{name}@{','.join(map(str, frames))}", (VIDEO, frames), 1, model=name)
            for name in _model_names(g.c) for frames in batches]


def _pooling(g: VideoGraph) -> list[Call]:
    keyframes, _ = _keyframe_batches(g)  # each keyframe's candidates become an object of its own
    batches = [c.out(0) for c in g.by_stage["segmentation"]]
    return [g.call(("pooling",), "all", (keyframes, *batches), len(keyframes) + 1, frames=True,
                   completes="segmentation")]


def _propagation(g: VideoGraph) -> list[Call]:
    """Per keyframe x chunk. With ``propagation.avoid.covered_iou`` a keyframe's calls also take
    the tracklets of every earlier keyframe (so they run after them) and skip the candidates
    those already cover; the calls of a video then share a replica (``affinity``), as they do
    when the propagator keeps frame features for later calls (``feature_cache_frames``)."""
    from rvos_ray.stages.propagate import propagation_plan

    pool = g.by_stage["pooling"][0]
    counts = g.value(pool.out(pool.outputs - 1))
    avoid = g.c["propagation"]["avoid"]
    covered = avoid["covered_iou"]
    affinity = g.work.video_id if covered is not None or avoid["feature_cache_frames"] else ""
    calls: list[Call] = []
    tables: dict[int, list[Out]] = {}  # keyframe number -> its calls' tracklet tables
    for x in propagation_plan(counts, g.c["propagation"]["candidates_per_call"]):
        k = x.keyframe_index
        earlier = [t for j in range(k) for t in tables.get(j, ())] if covered is not None else []
        calls.append(g.call(("propagation",), f"keyframe {k} candidates [{x.start}:{x.stop}]",
                            (VIDEO, pool.out(k), x, *earlier), 2, affinity=affinity))
        tables.setdefault(k, []).append(calls[-1].out(0))
    return calls


def _nms(g: VideoGraph) -> list[Call]:
    tables = [c.out(0) for c in g.by_stage["propagation"]]
    return [g.call(("nms",), "all", tables, 2, frames=True, completes="propagation")]


def _grounding(g: VideoGraph) -> list[Call]:
    kept = g.by_stage["nms"][0].out(1)
    return [g.call(("grounding", name), name, (WORK, kept), 2, variant=name) for name in group_names(g.c)]


def _ensemble(g: VideoGraph) -> list[Call]:
    tables = [c.out(0) for c in g.by_stage["grounding"]]
    return [g.call(("ensemble",), "all", tables, 2, frames=True, completes="grounding")]


def _writer(g: VideoGraph) -> list[Call]:
    nms, ens = g.by_stage["nms"][0], g.by_stage["ensemble"][0]
    passes = [c.out(1) for c in (*g.by_stage["propagation"], *g.by_stage["grounding"])]
    events = [c.event for c in g.calls]
    return [g.call(("writer",), "all", (WORK, nms.out(0), nms.out(1), ens.out(0), ens.out(1), len(passes), *passes,
                                         *events), 0)]


#: the graph: one node per stage, in pipeline order (``pipeline.STAGES``)
NODES: tuple[Node, ...] = (
    Node("segmentation", _segmentation),
    Node("pooling", _pooling),
    Node("propagation", _propagation),
    Node("nms", _nms),
    Node("grounding", _grounding),
    Node("ensemble", _ensemble),
    Node("writer", _writer),
)
assert tuple(n.stage for n in NODES) == pl.STAGES


# --------------------------------------------------------------------------------------------
# The stage objects of a run
# --------------------------------------------------------------------------------------------


def stages_of(c: Mapping[str, Any], run_uri: str = "") -> dict[StageKey, Stage]:
    """Every stage object a run of config ``c`` (plain dict) calls, by key, in graph order: one
    per segmentation model, pooling, the propagator, NMS, one per grounder group, ensemble and
    the writer (into ``run_uri``). Those with models run on actors; the others are tasks with
    the ``tasks`` section's resources."""
    from rvos_ray.stages.ensemble import EnsembleStage
    from rvos_ray.stages.ground import GroundStage
    from rvos_ray.stages.propagate import PropagateStage
    from rvos_ray.stages.segment import PoolStage, SegmentStage
    from rvos_ray.stages.tracklet_nms import NMSStage

    seg, tasks, models = Resources.of(c["segmentation"]), Resources.of(c["tasks"]), c["segmentation"]["models"]
    out: list[Stage] = [SegmentStage(m, f"segmentation.models[{i}]", seg) for i, m in enumerate(models)]
    out += [PoolStage(len(models), c["propagation"]["avoid"]["duplicate_iou"], tasks), PropagateStage(c["propagation"]),
            NMSStage(c["nms"], tasks)]
    out += [GroundStage(c["grounding"], group, int(c["run"]["seed"])) for group in _groups(c)]
    out += [EnsembleStage(c["ensemble"], tasks), pl.WriteStage(run_uri, c, tasks)]
    return {s.key: s for s in out}


def _model_names(c: Mapping[str, Any]) -> list[str]:
    return [str(m["name"]) for m in c["segmentation"]["models"]]


def _groups(c: Mapping[str, Any]) -> list[tuple[str, ...]]:
    from rvos_ray.stages.ground import encoder_groups

    return encoder_groups(c["grounding"].get("variants") or [])


def group_names(c: Mapping[str, Any]) -> list[str]:
    return ["+".join(group) for group in _groups(c)]
