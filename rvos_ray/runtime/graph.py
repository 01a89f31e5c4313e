"""The per-video graph, described once: which calls a video needs, what each consumes, and which
model pool runs it. Both executors interpret it; no Ray here.

The graph is a sequence of :data:`NODES`. Each node plans its calls for one video from the run's
config and the outputs of earlier nodes (:class:`Out` placeholders); the fan-out keys are::

    segmentation  per segmentation model x keyframe batch   model pool ("segmentation", model)
    pooling       one per video                             a CPU task
    propagation   per keyframe x chunk of candidates        model pool ("propagation",)
    nms           one per video                             a CPU task
    grounding     per group of variants sharing encoders    model pool ("grounding", group)
    ensemble      one per video                             a CPU task
    writer        one per video (its done record)           the writer

A node may need the *value* of an earlier output to plan (propagation fans out on the pooled
candidate counts): :meth:`VideoGraph.plan` stops there, the executor fetches that value
(in-process: it has it; Ray: it waits for that small object) and planning resumes.

What a call runs is a plain function of :mod:`rvos_ray.runtime.pipeline` called as
``run(model, *args)`` (``model`` None for a task). Both executors run a call through
:func:`execute`, which times it and reports it to telemetry (the stage event), around any
stage: in-process directly, on Ray inside the pool's actor or a task, with every :class:`Out`
argument an ObjectRef.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from rvos_ray.runtime import pipeline as pl
from rvos_ray.runtime import stage_adapters as adapters
from rvos_ray.types import Resources

#: the model pools a run needs: key -> (stage, name); a pool is a model built once (in-process)
#: or a set of actor replicas (Ray)
PoolKey = tuple[str, ...]


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
    stage: str
    item: str  # what the call covers, for events, errors and the stall report
    video_id: str
    run: Callable[..., Any]  # run(model, *args) -> its outputs (a tuple when outputs > 1)
    args: tuple
    outputs: int  # values it returns before its event (the writer: 0, it returns its record)
    pool: PoolKey | None = None  # the model pool that runs it; None: a CPU task
    tags: Mapping[str, str] = field(default_factory=dict)  # telemetry tags (model=, variant=)
    frames: int = 0  # the video's frames, when this call finishes its stage for the video
    completes: str = ""  # a fan-out stage this call consumes (done for the video as it starts)
    affinity: str = ""  # calls of one pool with the same affinity run on the same replica

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


class PlanError(Exception):
    """Planning node ``stage`` failed for this video (e.g. a bad keyframe count or chunk size)."""

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
        :class:`PlanError` naming the node's stage when its planning fails."""
        new: list[Call] = []
        self.waiting = None
        while self.node < len(NODES):
            try:
                calls = NODES[self.node].plan(self)
            except NeedValue as e:
                self.waiting = e.out
                break
            except Exception as e:  # noqa: BLE001 - the video fails in that stage
                raise PlanError(NODES[self.node].stage, e) from e
            self.by_stage[NODES[self.node].stage] = calls
            self.calls += calls
            new += calls
            self.node += 1
        return new

    def value(self, out: Out) -> Any:
        if out not in self.values:
            raise NeedValue(out)
        return self.values[out]

    def call(self, stage: str, item: str, run: Callable[..., Any], args: Sequence[Any], outputs: int,
             pool: PoolKey | None = None, *, frames: bool = False, completes: str = "", affinity: str = "",
             **tags: str) -> Call:
        """A call of this video (``frames``: it finishes its stage for the video)."""
        return Call(f"{stage}:{item}", stage, item, self.work.video_id, run, tuple(args), outputs, pool, dict(tags),
                    self.video.num_frames if frames else 0, completes, affinity)  # items are unique per stage


def execute(call: Call, model: Any, *args: Any) -> Any:
    """Run ``call`` on ``model`` (None for a task) with its resolved ``args``: its outputs, then
    its stage event (:func:`rvos_ray.runtime.pipeline.timed`: start/end, host, node, tags, and
    the telemetry hooks). The writer returns its done record (it logs its own event with the
    video's others before it marks the video done)."""
    if call.writer:
        return call.run(model, *args)
    out, ev = pl.timed(call.stage, call.video_id, call.item, lambda: call.run(model, *args),
                       video_frames=call.frames, completes=call.completes, **call.tags)
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
    return [g.call("segmentation", f"{name}@{','.join(map(str, frames))}", pl.segment_call, (VIDEO, frames), 1,
                   ("segmentation", name), model=name)
            for name in _model_names(g.c) for frames in batches]


def _pooling(g: VideoGraph) -> list[Call]:
    keyframes, _ = _keyframe_batches(g)
    seg = g.by_stage["segmentation"]
    duplicate_iou = g.c["propagation"]["avoid"]["duplicate_iou"]
    return [g.call("pooling", "all", _pool, (VIDEO, keyframes, len(_model_names(g.c)), duplicate_iou,
                                             *(c.out(0) for c in seg)),
                   len(keyframes) + 1, frames=True, completes="segmentation")]


def _pool(_: Any, video: Any, keyframes: Sequence[int], n_models: int, duplicate_iou: float | None,
          *batches: Any) -> tuple[Any, ...]:
    """(each keyframe's pooled candidates, ..., their counts): ``batches`` are every model's
    segment results, model by model (each keyframe's candidates become an object of its own)."""
    per = len(batches) // max(n_models, 1)
    pooled, counts = pl.pool_call(video, keyframes, [batches[m * per : (m + 1) * per] for m in range(n_models)],
                                  duplicate_iou)
    return (*pooled, counts)


def _propagation(g: VideoGraph) -> list[Call]:
    """Per keyframe x chunk. With ``propagation.avoid.covered_iou`` a keyframe's calls also take
    the tracklets of every earlier keyframe (so they run after them) and skip the candidates
    those already cover; the calls of a video then share a replica (``affinity``), as they do
    when the propagator keeps frame features for later calls (``feature_cache_frames``)."""
    pool = g.by_stage["pooling"][0]
    counts = g.value(pool.out(pool.outputs - 1))
    avoid = g.c["propagation"]["avoid"]
    covered = avoid["covered_iou"]
    affinity = g.work.video_id if covered is not None or avoid["feature_cache_frames"] else ""
    calls: list[Call] = []
    tables: dict[int, list[Out]] = {}  # keyframe number -> its calls' tracklet tables
    for x in pl.propagation_plan(counts, g.c["propagation"]["candidates_per_call"]):
        k = x.keyframe_index
        earlier = [t for j in range(k) for t in tables.get(j, ())] if covered is not None else []
        calls.append(g.call("propagation", f"keyframe {k} candidates [{x.start}:{x.stop}]", pl.propagate_call,
                            (VIDEO, pool.out(k), x, covered, *earlier), 2, ("propagation",), affinity=affinity))
        tables.setdefault(k, []).append(calls[-1].out(0))
    return calls


def _nms(g: VideoGraph) -> list[Call]:
    tables = [c.out(0) for c in g.by_stage["propagation"]]
    return [g.call("nms", "all", _run_nms, (g.c["nms"], VIDEO, *tables), 2, frames=True, completes="propagation")]


def _run_nms(_: Any, nms_cfg: Mapping[str, Any], video: Any, *tables: Any) -> tuple[Any, ...]:
    return pl.nms_call(nms_cfg, video, tables)


def _grounding(g: VideoGraph) -> list[Call]:
    kept = g.by_stage["nms"][0].out(1)
    return [g.call("grounding", name, pl.ground_call, (WORK, kept), 2, ("grounding", name), variant=name)
            for name in _group_names(g.c)]


def _ensemble(g: VideoGraph) -> list[Call]:
    tables = [c.out(0) for c in g.by_stage["grounding"]]
    return [g.call("ensemble", "all", _run_ensemble, (g.c["ensemble"], WORK, *tables), 2, frames=True,
                   completes="grounding")]


def _run_ensemble(_: Any, ens_cfg: Mapping[str, Any], work: Any, *tables: Any) -> tuple[Any, ...]:
    return pl.ensemble_call(ens_cfg, work, tables)


def _writer(g: VideoGraph) -> list[Call]:
    nms, ens = g.by_stage["nms"][0], g.by_stage["ensemble"][0]
    passes = [c.out(1) for c in (*g.by_stage["propagation"], *g.by_stage["grounding"])]
    events = [c.event for c in g.calls]
    return [g.call("writer", "all", _finish, (g.run_uri, g.c, WORK, nms.out(0), nms.out(1), ens.out(0), ens.out(1),
                                              len(passes), *passes, *events), 0)]


def _finish(_: Any, run_uri: str, c: Mapping[str, Any], work: Any, every: Any, kept: Any, grounding: Any,
            prediction: Any, n_passes: int, *rest: Any) -> dict[str, Any]:
    """``rest``: the propagation and grounding calls' encoder passes, then every call's event."""
    return pl.finish_video(run_uri, c, work, every, kept, grounding, prediction, rest[n_passes:], rest[:n_passes])


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
# The model pools of a run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """A model the graph's calls run on: its key, stage, name, resources and builder."""

    key: PoolKey
    stage: str
    name: str
    resources: Resources
    build: Callable[[], Any]  # seeded by the executor with run.seed


def pools_of(c: Mapping[str, Any]) -> list[Pool]:
    """Every model pool of a run of config ``c`` (plain dict), in graph order."""
    seed = int(c["run"]["seed"])
    seg, prop, gnd = (Resources.of(c[s]) for s in ("segmentation", "propagation", "grounding"))
    out = [Pool(("segmentation", str(m["name"])), "segmentation", str(m["name"]), seg,
                partial(adapters.build_segmenter, m, f"segmentation.models[{i}]"))
           for i, m in enumerate(c["segmentation"]["models"])]
    out.append(Pool(("propagation",), "propagation", "propagator", prop, partial(adapters.build_propagator,
                                                                                  c["propagation"])))
    out += [Pool(("grounding", adapters.group_name(grp)), "grounding", adapters.group_name(grp), gnd,
                 partial(adapters.build_grounder, grp, c["grounding"], seed))
            for grp in adapters.grounder_groups(c["grounding"])]
    return out


def _model_names(c: Mapping[str, Any]) -> list[str]:
    return [str(m["name"]) for m in c["segmentation"]["models"]]


def _group_names(c: Mapping[str, Any]) -> list[str]:
    return [adapters.group_name(grp) for grp in adapters.grounder_groups(c["grounding"])]
