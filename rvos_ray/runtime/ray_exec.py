"""The Ray executor: model actors pinned by resources and a per-video task graph of ObjectRefs.

The only module of the project that imports Ray. What runs is
:mod:`rvos_ray.runtime.pipeline`; this module decides where and when:

- **Actors hold models**, each loaded once: a :class:`SegmenterActor` per segmentation model,
  a pool of :class:`PropagatorActor`, a :class:`GrounderActor` per ensemble variant (each
  ``replicas`` times). Each asks for its stage's ``resources:`` (``num_cpus``, ``num_gpus``,
  ``custom``), so on a GPU cluster they land on separate GPUs and custom resources steer them to
  node types. Actors restart (``ray.max_restarts``) and re-run interrupted calls
  (``ray.max_retries``) when their process dies.
- **Per video**, the driver submits: one segment call per model and keyframe batch -> one
  pooling task (returns each keyframe's candidates as its own object, plus their counts) ->
  once the counts are known, propagation calls per keyframe and chunk of candidates (spread
  over the pool) -> one tracklet-NMS task over the video's Arrow tables -> one grounding call
  per variant -> the ensemble task -> the writer task (tables, PNGs, metrics, ``done.json``).
  Every arrow is an ObjectRef: tables, candidates and frames never pass through the driver;
  frames are read by the actor that needs them. The driver only ever fetches the small counts
  and done records of refs that ``ray.wait`` reports ready.
- **Backpressure**: at most ``ray.max_videos_in_flight`` videos are in the graph at once.
- **Failures**: a video whose graph still fails after retries gets a failure record naming the
  stage and cause; the split goes on.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from rvos_ray.runtime import pipeline as pl
from rvos_ray.runtime import resume
from rvos_ray.runtime import stage_adapters as adapters
from rvos_ray.runtime import ray_session
from rvos_ray.runtime.placement import (
    ActorRequest,
    NodeResources,
    PlacementError,
    check_feasible,
    explain,
    local_node_size,
    requests_of,
)
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.telemetry import metrics as telemetry
from rvos_ray.telemetry.progress import StageRates
from rvos_ray.types import Failure, Resources

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Starting / joining Ray
# --------------------------------------------------------------------------------------------


def init_ray(cfg: DictConfig, address: str | None = None) -> bool:
    """Join ``address`` / ``ray.address`` / ``RAY_ADDRESS``, or start a local Ray on 127.0.0.1
    (:mod:`rvos_ray.runtime.ray_session`) sized for this config's actors and tasks unless
    ``ray.num_cpus`` / ``ray.resources`` say otherwise.

    Returns True when this call connected (the caller then shuts Ray down). A Ray already
    initialized in this process (tests, notebooks) is used as is."""
    addr = ray_session.target_address(address, cfg.ray.address)
    num_cpus, resources = cfg.ray.num_cpus, dict(cfg.ray.resources)
    if not addr and (num_cpus is None or not resources):
        auto_cpus, auto_custom = local_node_size(requests_of(OmegaConf.to_container(cfg, resolve=True)),
                                                 os.cpu_count() or 1)
        num_cpus = auto_cpus if num_cpus is None else num_cpus
        resources = resources or auto_custom
    return ray_session.connect(addr, num_cpus=None if num_cpus is None else int(num_cpus), resources=resources,
                               dashboard=bool(cfg.ray.dashboard), dashboard_host=str(cfg.ray.dashboard_host),
                               log_to_driver=bool(cfg.ray.log_to_driver))


# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------


def _limit_threads(num_cpus: float) -> None:
    """A model's intra-op threads match the CPUs the actor reserved (Ray sets OMP only)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; stay usable without it
        return
    torch.set_num_threads(max(1, int(num_cpus)))


def _where() -> dict[str, Any]:
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "resources": dict(ctx.get_assigned_resources()),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


class _ModelActor:
    """Holds one model, built from its config section by :meth:`build` (not in ``__init__``).

    Why not in ``__init__``: an actor is alive as soon as Ray placed it, so the executor can
    tell "the cluster cannot place this" (bounded by ``ray.placement_timeout_s``) apart from
    "the model is still loading" (big checkpoints take minutes). After a restart Ray re-runs
    only ``__init__``; the first call then rebuilds the model, seeded as before, so a restarted
    actor computes exactly what the lost one did. A build error is kept and raised by every
    call, so the driver sees the real cause (e.g. a ConfigError naming a key)."""

    def __init__(self, make: Callable[[], Any], num_cpus: float, seed: int) -> None:
        self._make, self._num_cpus, self._seed = make, num_cpus, seed
        self.model: Any = None
        self.error: BaseException | None = None

    def where(self) -> dict[str, Any]:
        """Node, assigned resources and pid of this actor (cheap: the placement probe)."""
        return _where()

    def build(self) -> dict[str, Any]:
        """Load the model (once); returns :meth:`where`. Raises the build error, if any."""
        self._model()
        return _where()

    def _model(self) -> Any:
        if self.model is None and self.error is None:
            _limit_threads(self._num_cpus)
            try:
                self.model = adapters.seeded(self._seed, self._make)
            except Exception as e:  # kept: re-raised by every call
                self.error = e
        if self.error is not None:
            raise self.error
        return self.model


@ray.remote
class SegmenterActor(_ModelActor):
    """One segmentation model on its keyframe batches."""

    def __init__(self, entry: dict, where: str, num_cpus: float, seed: int) -> None:
        super().__init__(lambda: adapters.build_segmenter(entry, where), num_cpus, seed)
        self.name = str(entry.get("name"))

    @ray.method(num_returns=2)
    def segment(self, video, frames):
        return pl.segment_call(self._model(), self.name, video, frames)


@ray.remote
class PropagatorActor(_ModelActor):
    """One propagation model; the executor keeps a pool of them."""

    def __init__(self, section: dict, num_cpus: float, seed: int) -> None:
        super().__init__(lambda: adapters.build_propagator(section), num_cpus, seed)

    @ray.method(num_returns=2)
    def propagate(self, video, candidates, call):
        return pl.propagate_call(self._model(), video, candidates, call)


@ray.remote
class GrounderActor(_ModelActor):
    """One grounder variant (visual + text encoder + transformer) over a video's tracklets."""

    def __init__(self, variant: str, grounding: dict, num_cpus: float, seed: int) -> None:
        super().__init__(lambda: adapters.build_grounder(variant, grounding), num_cpus, seed)
        self.name = variant

    @ray.method(num_returns=2)
    def ground(self, work, tracklets):
        return pl.ground_call(self._model(), self.name, work, tracklets)


# --------------------------------------------------------------------------------------------
# Tasks (cheap CPU stages)
# --------------------------------------------------------------------------------------------


@ray.remote
def pool_task(video, keyframes, n_models, *batches):
    """Returns K + 2 objects: each keyframe's pooled candidates, the counts, the event."""
    per = len(batches) // max(n_models, 1)
    per_model = [batches[m * per : (m + 1) * per] for m in range(n_models)]
    pooled, counts, ev = pl.pool_call(video, keyframes, per_model)
    return (*pooled, counts, ev)


@ray.remote
def nms_task(nms_cfg, video, *tables):
    return pl.nms_call(nms_cfg, video, tables)


@ray.remote
def ensemble_task(ens_cfg, work, *tables):
    return pl.ensemble_call(ens_cfg, work, tables)


@ray.remote
def finish_task(run_uri, cfg, work, every, kept, grounding, prediction, *events):
    return pl.finish_video(run_uri, cfg, work, every, kept, grounding, prediction, events)


#: Ray function / class names -> pipeline stage, for failure records
_STAGE_OF = {
    "segment": "segmentation", "SegmenterActor": "segmentation",
    "pool_task": "pooling",
    "propagate": "propagation", "PropagatorActor": "propagation",
    "nms_task": "nms",
    "ground": "grounding", "GrounderActor": "grounding",
    "ensemble_task": "ensemble",
    "finish_task": "writer",
}


def failure_of(video_id: str, err: BaseException) -> Failure:
    """A failure record from what ``ray.get`` raised: the stage whose call failed and the cause.

    An error raised upstream reaches the writer's ref wrapped once per hop ("ray::finish_task()
    ... At least one of the input arguments ... ray::SegmenterActor.segment() ..."), so the
    stage is that of the *last* Ray function named in the message."""
    text = _ANSI.sub("", str(err))
    names = _RAY_FN.findall(text)
    if isinstance(err, ray.exceptions.RayTaskError):
        stage = _stage_of(names[-1]) if names else "unknown"
        cause = getattr(err, "cause", None) or err
        tb = _ANSI.sub("", str(getattr(err, "traceback_str", "") or text))  # the worker's traceback
        return resume.failure_from(video_id, stage, cause, tb)
    # An actor that died for good, an object lost with its node, ...: name the actor's stage.
    stage = next((s for name, s in _STAGE_OF.items() if name.endswith("Actor") and name in text), "unknown")
    return resume.failure_from(video_id, stage, err, text)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAY_FN = re.compile(r"ray::([A-Za-z_][\w.]*)\(")


def _stage_of(fn: str) -> str:
    last = fn.rsplit(".", 1)[-1]
    return _STAGE_OF.get(last, _STAGE_OF.get(fn.split(".", 1)[0], fn))


# --------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------

#: config keys the actors are built from: a run reusing an executor must agree on them
_ACTOR_KEYS = ("segmentation", "propagation.backend", "propagation.options", "propagation.resources",
               "grounding", "run.seed", "ray.max_restarts", "ray.max_retries")


def _get(c: dict, dotted: str) -> Any:
    for k in dotted.split("."):
        c = c.get(k) if isinstance(c, dict) else None
    return c


@dataclass
class _Video:
    work: pl.VideoWork
    work_ref: Any = None
    video_ref: Any = None
    pooled: list = field(default_factory=list)
    events: list = field(default_factory=list)


class RayExecutor:
    """Runs one config's split on the Ray this process is connected to (see :func:`init_ray`).

    ``on_phase(phase, video_id)`` (optional) is called on the driver as a video enters
    ``"submitted"``, ``"propagation"`` and ``"done"``/``"failed"``: progress hooks for tools
    and tests."""

    def __init__(self, cfg: DictConfig, on_phase: Callable[[str, str], None] | None = None) -> None:
        self.cfg = cfg
        self.c = OmegaConf.to_container(cfg, resolve=True)
        self.on_phase = on_phase or (lambda phase, vid: None)
        self.segmenters: dict[str, list] = {}
        self.propagators: list = []
        self.grounders: dict[str, list] = {}
        self.placements: dict[str, list[dict]] = {}
        self._rr: dict[str, int] = {}

    # ---- actors ---------------------------------------------------------------------------

    def _res(self, stage: str) -> Resources:
        r = self.c[stage]["resources"]
        return Resources(float(r["num_cpus"]), float(r["num_gpus"]), int(r["replicas"]),
                         int(r["batch_size"]), {str(k): float(v) for k, v in r["custom"].items()})

    def _actor_opts(self, res: Resources) -> dict[str, Any]:
        return {
            "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus,
            "resources": dict(res.custom),
            "max_restarts": int(self.c["ray"]["max_restarts"]),
            "max_task_retries": int(self.c["ray"]["max_retries"]),
        }

    def requests(self) -> list[ActorRequest]:
        """Every actor replica the run needs, plus one slot for the CPU tasks."""
        return requests_of(self.c)

    def start_actors(self) -> None:
        """Create every actor, check placement, wait (bounded) until all are placed, then until
        all have loaded their models. Raises :class:`PlacementError` saying what was requested
        and what the cluster has."""
        reqs = self.requests()
        nodes = NodeResources.from_ray_nodes(ray.nodes())
        if not self.c["ray"]["autoscaling"]:
            check_feasible(reqs, nodes)
        seg, prop, gnd = self._res("segmentation"), self._res("propagation"), self._res("grounding")
        seed = int(self.c["run"]["seed"])
        for i, m in enumerate(self.c["segmentation"]["models"]):
            self.segmenters[str(m["name"])] = [
                SegmenterActor.options(**self._actor_opts(seg)).remote(
                    m, f"segmentation.models[{i}]", seg.num_cpus, seed)
                for _ in range(seg.replicas)
            ]
        self.propagators = [
            PropagatorActor.options(**self._actor_opts(prop)).remote(self.c["propagation"], prop.num_cpus, seed)
            for _ in range(prop.replicas)
        ]
        for v in self.c["grounding"]["variants"]:
            self.grounders[str(v["name"])] = [
                GrounderActor.options(**self._actor_opts(gnd)).remote(
                    str(v["name"]), self.c["grounding"], gnd.num_cpus, seed)
                for _ in range(gnd.replicas)
            ]
        named = [("segmentation", n, a) for n, acts in self.segmenters.items() for a in acts]
        named += [("propagation", "propagator", a) for a in self.propagators]
        named += [("grounding", n, a) for n, acts in self.grounders.items() for a in acts]
        refs = [a.where.remote() for _, _, a in named]
        timeout = float(self.c["ray"]["placement_timeout_s"])
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            waiting = [f"{s} {n!r}" for (s, n, _), r in zip(named, refs) if r in set(pending)]
            raise PlacementError(explain(
                f"{len(pending)} actor(s) were not placed within ray.placement_timeout_s={timeout:g}s "
                f"({', '.join(waiting)})", reqs, NodeResources.from_ray_nodes(ray.nodes())))
        # Placed: now every actor loads its model (in parallel; as long as that takes).
        try:
            infos = ray.get([a.build.remote() for _, _, a in named])
        except ray.exceptions.RayTaskError as e:
            raise (getattr(e, "cause", None) or e) from None  # the model's own error, e.g. ConfigError
        for (stage, name, _), info in zip(named, infos):
            self.placements.setdefault(stage, []).append({"name": name, **info})

    def actor_pids(self, stage: str) -> list[int]:
        return [p["pid"] for p in self.placements.get(stage, [])]

    def _next(self, key: str, actors: list) -> Any:
        """Round-robin over a pool: consecutive calls go to different replicas."""
        i = self._rr.get(key, 0)
        self._rr[key] = i + 1
        return actors[i % len(actors)]

    # ---- per-video graph -------------------------------------------------------------------

    def _cpu_opts(self) -> dict[str, Any]:
        r = self._res("nms")
        return {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "resources": dict(r.custom),
                "max_retries": int(self.c["ray"]["max_retries"])}

    def _submit_segmentation(self, v: _Video) -> Any:
        c = self.c
        v.work_ref = ray.put(v.work)
        v.video_ref = ray.put(v.work.video)
        keyframes, batches = pl.keyframe_batches(v.work.video, c["keyframes"]["k"],
                                                 c["segmentation"]["resources"]["batch_size"])
        cands = []
        for name, actors in self.segmenters.items():
            for frames in batches:
                cand, ev = self._next(f"seg:{name}", actors).segment.remote(v.video_ref, frames)
                cands.append(cand)
                v.events.append(ev)
        outs = pool_task.options(num_returns=len(keyframes) + 2, **self._cpu_opts()).remote(
            v.video_ref, keyframes, len(self.segmenters), *cands)
        v.pooled = list(outs[:-2])
        v.events.append(outs[-1])
        tel = telemetry.current()  # telemetry hook: calls submitted per stage (queue depth)
        for name in self.segmenters:
            tel.submitted("segmentation", len(batches), video_id=v.work.video_id, model=name)
        tel.submitted("pooling", 1, video_id=v.work.video_id)
        return outs[-2]  # the counts: the one value the driver needs to fan out

    def _submit_rest(self, v: _Video, counts: list[int]) -> Any:
        c = self.c
        tables = []
        for call in pl.propagation_plan(counts, c["propagation"]["candidates_per_call"]):
            t, ev = self._next("prop", self.propagators).propagate.remote(
                v.video_ref, v.pooled[call.keyframe_index], call)
            tables.append(t)
            v.events.append(ev)
        every, kept, ev = nms_task.options(num_returns=3, **self._cpu_opts()).remote(c["nms"], v.video_ref, *tables)
        v.events.append(ev)
        grounding = []
        for name, actors in self.grounders.items():
            g, ev = self._next(f"gnd:{name}", actors).ground.remote(v.work_ref, kept)
            grounding.append(g)
            v.events.append(ev)
        g_all, pred, ev = ensemble_task.options(num_returns=3, **self._cpu_opts()).remote(
            c["ensemble"], v.work_ref, *grounding)
        v.events.append(ev)
        tel = telemetry.current()  # telemetry hook: calls submitted per stage (queue depth)
        tel.submitted("propagation", len(tables), video_id=v.work.video_id)
        for name in self.grounders:
            tel.submitted("grounding", 1, video_id=v.work.video_id, variant=name)
        for stage in ("nms", "ensemble", "writer"):
            tel.submitted(stage, 1, video_id=v.work.video_id)
        return finish_task.options(**self._writer_opts()).remote(
            self.rd.uri, self.cfg_ref, v.work_ref, every, kept, g_all, pred, *v.events)

    def _writer_opts(self) -> dict[str, Any]:
        opts = self._cpu_opts()
        if self.rd.is_local:
            # A local run directory exists on the driver's machine only: write there.
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
        return opts

    # ---- the driver loop ------------------------------------------------------------------------

    def run(self, cfg: DictConfig | None = None, progress: bool = True) -> dict[str, Any]:
        """Process the split of ``cfg`` (default: the executor's); returns the summary (also
        written as ``summary.json``). Actors start on the first run that has work and are
        reused by later runs whose model sections are the same (another run.dir, data split,
        video selection or ensemble setting)."""
        if cfg is not None:
            self._use(cfg)
        cfg = self.cfg
        self.rd: RunDir = resume.start_run(cfg)
        split = pl.load_split(cfg)
        works = list(split.works)
        p = resume.plan(self.rd, split, cfg.run.resume)
        out = resume.Outcome(executor="ray")
        out.event("run_start", videos=len(p.ids), todo=len(p.todo), skipped=len(p.skipped))
        resume.record_invalid(self.rd, p, out, _failed)
        out.timings = {"setup_s": 0.0, "loop_s": 0.0}
        if p.todo:
            self.cfg_ref = ray.put(self.c)
            if not self.placements:
                t0 = time.perf_counter()
                self.start_actors()
                out.timings["setup_s"] = time.perf_counter() - t0
                out.event("actors_ready", placements=self.placements)
            t0 = time.perf_counter()
            self._loop(p, out, progress)
            out.timings["loop_s"] = time.perf_counter() - t0
        out.event("run_end")
        return resume.finish_run(self.rd, cfg, works, p, out)

    def _use(self, cfg: DictConfig) -> None:
        c = OmegaConf.to_container(cfg, resolve=True)
        if self.placements:
            changed = [k for k in _ACTOR_KEYS if _get(c, k) != _get(self.c, k)]
            if changed:
                raise ValueError(f"this executor's actors were built for other {', '.join(changed)}; "
                                 "make a new RayExecutor for this config")
        self.cfg, self.c = cfg, c

    def _loop(self, p: resume.Plan, out: resume.Outcome, progress: bool) -> None:
        queue = deque(_Video(w) for w in p.todo)
        pending: dict[Any, tuple[str, _Video]] = {}  # ref -> (phase, video)
        limit = max(int(self.c["ray"]["max_videos_in_flight"]), 1)
        bar = tqdm(total=len(p.todo), desc="videos", unit="video", disable=not progress)
        bar.set_postfix(failed=0, skipped=len(p.skipped))
        rates = StageRates()  # telemetry hook: per-stage rates on the bar
        while queue or pending:
            while queue and len(pending) < limit:  # one pending ref per video in flight
                v = queue.popleft()
                pending[self._submit_segmentation(v)] = ("counts", v)
                out.event("video_start", v.work.video_id)
                self.on_phase("submitted", v.work.video_id)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                phase, v = pending.pop(ref)
                vid = v.work.video_id
                try:
                    value = ray.get(ref)  # ready: returns at once (a count list or a done record)
                except Exception as e:  # whatever ended this video's graph: recorded, the split goes on
                    f = failure_of(vid, e)
                    self.rd.write_failure(f)
                    out.failed[vid] = f
                    out.event("video_failed", vid, failed_stage=f.stage, error=f.error)
                    _failed(f)
                    self.on_phase("failed", vid)
                    bar.update(1)
                    bar.set_postfix(failed=len(out.failed), skipped=len(p.skipped), rates=rates.postfix())
                    continue
                if phase == "counts":
                    pending[self._submit_rest(v, value)] = ("done", v)
                    self.on_phase("propagation", vid)
                else:
                    out.done[vid] = value
                    telemetry.current().video_done(vid)  # telemetry hook
                    rates.add(value)
                    out.event("video_done", vid)
                    self.on_phase("done", vid)
                    bar.update(1)
                    bar.set_postfix(failed=len(out.failed), skipped=len(p.skipped), rates=rates.postfix())
        bar.close()


def _failed(f: Failure) -> None:
    telemetry.current().video_failed(f.stage, f.video_id, pl.STAGES)  # telemetry hook
    log.warning("video %s failed in %s: %s: %s", f.video_id, f.stage, f.error, f.message)


def run_ray(cfg: DictConfig, address: str | None = None, progress: bool = True,
            on_phase: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Start or join Ray, run the split, and shut down a Ray this call started."""
    started = init_ray(cfg, address)
    t0 = time.time()
    try:
        summary = RayExecutor(cfg, on_phase).run(progress=progress)
    finally:
        ray_session.disconnect(started)
    log.info("ray run finished in %.1fs", time.time() - t0)
    return summary
