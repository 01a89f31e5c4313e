"""The Ray executor: model actors pinned by resources and a per-video task graph of ObjectRefs.

What runs is :mod:`rvos_ray.runtime.pipeline`; this module decides where and when:

- **Actors hold models**, each loaded once: a :class:`SegmenterActor` per segmentation model,
  a pool of :class:`PropagatorActor`, a :class:`GrounderActor` per ensemble variant (each
  ``replicas`` times). Each asks for its stage's ``resources:`` (``num_cpus``, ``num_gpus``,
  ``custom``), so on a GPU cluster they land on separate GPUs and custom resources steer them to
  node types. Actors restart (``ray.max_restarts``), in place or on another node, and their
  interrupted calls are retried for as long as the restart takes.
- **Per video**, the driver submits: one segment call per model and keyframe batch -> one
  pooling task (returns each keyframe's candidates as its own object, plus their counts) ->
  once the counts are known, propagation calls per keyframe and chunk of candidates (spread
  over the pool) -> one tracklet-NMS task over the video's Arrow tables -> one grounding call
  per variant -> the ensemble task -> the writer task (tables, PNGs, metrics, ``done.json``).
  Every arrow is an ObjectRef: tables, candidates and frames never pass through the driver;
  frames are read by the actor that needs them. The driver fetches the small counts, stage
  events and done records of refs that ``ray.wait`` reports ready.
- **Backpressure**: at most ``ray.max_videos_in_flight`` videos are in the graph at once.
- **Failures**: a video whose graph fails gets a failure record naming the stage (the first of
  its calls that failed) and the cause with the worker's traceback; a system failure (objects
  lost with a node) resubmits the video's graph (``ray.video_retries``); nothing finishing for
  ``ray.stall_timeout_s`` fails what is pending with a report. The split goes on.
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
from rvos_ray.seeding import seeded
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


def _on_node() -> None:
    """Stage events of this worker name its node (once per process)."""
    if not pl.PROCESS_NODE:
        pl.PROCESS_NODE = ray.get_runtime_context().get_node_id()


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
        _on_node()
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
                self.model = seeded(self._seed, self._make)
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
    """One group of grounder variants (those sharing an encoder: each shared encoder runs once
    per frame / expression for all of them) over a video's tracklets."""

    def __init__(self, variants: tuple[str, ...], grounding: dict, num_cpus: float, seed: int) -> None:
        super().__init__(lambda: adapters.build_grounder(variants, grounding, seed), num_cpus, seed)
        self.name = adapters.group_name(variants)

    @ray.method(num_returns=2)
    def ground(self, work, tracklets):
        return pl.ground_call(self._model(), self.name, work, tracklets)


# --------------------------------------------------------------------------------------------
# Tasks (cheap CPU stages)
# --------------------------------------------------------------------------------------------


@ray.remote
def pool_task(video, keyframes, n_models, *batches):
    """Returns K + 2 objects: each keyframe's pooled candidates, the counts, the event."""
    _on_node()
    per = len(batches) // max(n_models, 1)
    per_model = [batches[m * per : (m + 1) * per] for m in range(n_models)]
    pooled, counts, ev = pl.pool_call(video, keyframes, per_model)
    return (*pooled, counts, ev)


@ray.remote
def nms_task(nms_cfg, video, *tables):
    _on_node()
    return pl.nms_call(nms_cfg, video, tables)


@ray.remote
def ensemble_task(ens_cfg, work, *tables):
    _on_node()
    return pl.ensemble_call(ens_cfg, work, tables)


@ray.remote
def finish_task(run_uri, cfg, work, every, kept, grounding, prediction, *events):
    _on_node()
    return pl.finish_video(run_uri, cfg, work, every, kept, grounding, prediction, events)


def failure_of(video_id: str, err: BaseException, stage: str) -> Failure:
    """A failure record from what ``ray.get`` raised for a call of ``stage`` (known from the
    graph: the first call of the video whose ref raised): the cause and the worker's traceback."""
    text = _ANSI.sub("", str(err))
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = getattr(err, "cause", None) or err
        tb = _ANSI.sub("", str(getattr(err, "traceback_str", "") or text))  # the worker's traceback
        return resume.failure_from(video_id, stage, cause, tb)
    return resume.failure_from(video_id, stage, err, text)  # an actor or node lost for good, ...


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
    attempt: int = 0  # whole-graph resubmissions after a system failure (a lost node's objects)

    def reset(self) -> None:
        self.work_ref = self.video_ref = None
        self.pooled, self.events = [], []


@dataclass(frozen=True)
class _Call:
    """A submitted call of a video's graph, as the driver tracks it: its stage and item, and
    what its ref returns (``event``: a stage event; ``counts``: the pooled candidate counts the
    driver fans out on; ``done``: the writer's done record)."""

    video: _Video
    stage: str
    item: str
    kind: str = "event"
    asks: str = ""  # what it waits for: a task's resources, or the actor it runs on


#: Ray's errors of the system rather than of a stage's code: the video's graph is resubmitted
#: (``ray.video_retries``) instead of recorded as failed
_SYSTEM_ERRORS = tuple(getattr(ray.exceptions, n) for n in (
    "RayActorError", "ObjectLostError", "WorkerCrashedError", "NodeDiedError", "RaySystemError",
    "ObjectFetchTimedOutError", "LocalRayletDiedError") if hasattr(ray.exceptions, n))


def is_system_error(err: BaseException) -> bool:
    cause = getattr(err, "cause", None) if isinstance(err, ray.exceptions.RayTaskError) else None
    return isinstance(err, _SYSTEM_ERRORS) or isinstance(cause, _SYSTEM_ERRORS)


class StallError(RuntimeError):
    """Nothing finished for ``ray.stall_timeout_s`` while calls were pending."""


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

    def _actor_opts(self, res: Resources) -> dict[str, Any]:
        return {
            "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus,
            "resources": dict(res.custom),
            "max_restarts": int(self.c["ray"]["max_restarts"]),
            # a call whose actor died is retried for as long as the actor is being restarted
            # (on another node after a node loss: far longer than a few quick retries), up to
            # ray.max_restarts restarts; ray.stall_timeout_s bounds the wait
            "max_task_retries": -1,
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
        seg, prop, gnd = (Resources.of(self.c[s]) for s in ("segmentation", "propagation", "grounding"))
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
        for group in adapters.grounder_groups(self.c["grounding"]):
            self.grounders[adapters.group_name(group)] = [
                GrounderActor.options(**self._actor_opts(gnd)).remote(group, self.c["grounding"], gnd.num_cpus, seed)
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
        r = Resources.of(self.c["nms"])
        return {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "resources": dict(r.custom),
                "max_retries": int(self.c["ray"]["max_retries"])}

    def _submit_segmentation(self, v: _Video, track: dict[Any, _Call]) -> None:
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
                track[ev] = _Call(v, "segmentation", f"{name}@{','.join(map(str, frames))}",
                                 asks=f"a {name!r} segmenter actor")
        outs = pool_task.options(num_returns=len(keyframes) + 2, **self._cpu_opts()).remote(
            v.video_ref, keyframes, len(self.segmenters), *cands)
        v.pooled = list(outs[:-2])
        v.events.append(outs[-1])
        asks = _asks(self._cpu_opts())
        track[outs[-1]] = _Call(v, "pooling", "pool_task", asks=asks)
        track[outs[-2]] = _Call(v, "pooling", "pool_task counts", kind="counts", asks=asks)  # the driver's fan-out
        tel = telemetry.current()  # telemetry hook: calls submitted per stage (queue depth)
        for name in self.segmenters:
            tel.submitted("segmentation", len(batches), video_id=v.work.video_id, model=name)
        tel.submitted("pooling", 1, video_id=v.work.video_id)

    def _submit_rest(self, v: _Video, counts: list[int], track: dict[Any, _Call]) -> None:
        c = self.c
        tables = []
        for call in pl.propagation_plan(counts, c["propagation"]["candidates_per_call"]):
            t, ev = self._next("prop", self.propagators).propagate.remote(
                v.video_ref, v.pooled[call.keyframe_index], call)
            tables.append(t)
            v.events.append(ev)
            track[ev] = _Call(v, "propagation", f"keyframe {call.keyframe_index} candidates [{call.start}:{call.stop}]",
                              asks="a propagator actor")
        every, kept, ev = nms_task.options(num_returns=3, **self._cpu_opts()).remote(c["nms"], v.video_ref, *tables)
        v.events.append(ev)
        track[ev] = _Call(v, "nms", "nms_task", asks=_asks(self._cpu_opts()))
        grounding = []
        for name, actors in self.grounders.items():
            g, ev = self._next(f"gnd:{name}", actors).ground.remote(v.work_ref, kept)
            grounding.append(g)
            v.events.append(ev)
            track[ev] = _Call(v, "grounding", f"variants {name}", asks=f"a {name!r} grounder actor")
        g_all, pred, ev = ensemble_task.options(num_returns=3, **self._cpu_opts()).remote(
            c["ensemble"], v.work_ref, *grounding)
        v.events.append(ev)
        track[ev] = _Call(v, "ensemble", "ensemble_task", asks=_asks(self._cpu_opts()))
        tel = telemetry.current()  # telemetry hook: calls submitted per stage (queue depth)
        tel.submitted("propagation", len(tables), video_id=v.work.video_id)
        for name in self.grounders:
            tel.submitted("grounding", 1, video_id=v.work.video_id, variant=name)
        for stage in ("nms", "ensemble", "writer"):
            tel.submitted(stage, 1, video_id=v.work.video_id)
        done = finish_task.options(**self._writer_opts()).remote(
            self.rd.uri, self.cfg_ref, v.work_ref, every, kept, g_all, pred, *v.events)
        track[done] = _Call(v, "writer", "finish_task", kind="done", asks=_asks(self._writer_opts()))

    def _writer_opts(self) -> dict[str, Any]:
        opts = self._cpu_opts()
        if self.rd.is_local:
            # A local run directory exists on the driver's machine only: write there. Pinned to
            # one node, the writer reserves nothing: that node's CPUs may all be held by actors
            # for the whole run (a head with num-cpus 0, or a head hosting the model actors),
            # and a writer waiting for a CPU there would wait forever.
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
            opts.update(num_cpus=0, num_gpus=0, resources={})
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
        split = pl.load_split(cfg)  # a bad data root or selection fails before the run dir is touched
        self.rd: RunDir = resume.start_run(cfg)
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
        """Submit videos (at most ``ray.max_videos_in_flight`` at once) and follow every call of
        their graphs until each video is done or failed.

        - The driver tracks each call's ref (its small event), so a failure is attributed to
          the stage whose call failed first, from the graph, and "nothing finished" is known.
        - A system failure (an actor or node lost with objects that cannot be rebuilt) sends
          the video's whole graph again, up to ``ray.video_retries`` times; a stage's own error
          is recorded at once.
        - If no call finishes for ``ray.stall_timeout_s`` while calls are pending, the driver
          fails the videos in flight and the queued ones with a report of what is pending,
          where, and what each node has free (:class:`StallError`), instead of waiting forever.
        """
        rc = self.c["ray"]
        queue = deque(_Video(w) for w in p.todo)
        track: dict[Any, _Call] = {}  # ref -> the call it belongs to
        active: dict[str, _Video] = {}
        limit = max(int(rc["max_videos_in_flight"]), 1)
        stall_s, retries = float(rc["stall_timeout_s"]), int(rc["video_retries"])
        bar = tqdm(total=len(p.todo), desc="videos", unit="video", disable=not progress)
        bar.set_postfix(failed=0, skipped=len(p.skipped))
        rates = StageRates()  # telemetry hook: per-stage rates on the bar

        def drop(v: _Video) -> None:
            for ref in [r for r, call in track.items() if call.video is v]:
                del track[ref]
            active.pop(v.work.video_id, None)

        def fail(v: _Video, f: Failure) -> None:
            drop(v)
            self.rd.write_failure(f)
            out.failed[f.video_id] = f
            out.event("video_failed", f.video_id, failed_stage=f.stage, error=f.error)
            _failed(f)
            self.on_phase("failed", f.video_id)
            bar.update(1)
            bar.set_postfix(failed=len(out.failed), skipped=len(p.skipped), rates=rates.postfix())

        last_finish = time.monotonic()
        while queue or active:
            while queue and len(active) < limit:
                v = queue.popleft()
                active[v.work.video_id] = v
                self._submit_segmentation(v, track)
                out.event("video_start", v.work.video_id, attempt=v.attempt)
                self.on_phase("submitted", v.work.video_id)
            refs = list(track)
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0, fetch_local=False)
            if ready:  # then every call finished by now, in one batch
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
                last_finish = time.monotonic()
            # upstream first: an error reaches every call downstream of the one that raised it
            for ref in sorted(ready, key=lambda r: pl.STAGES.index(track[r].stage) if r in track else 0):
                call = track.pop(ref, None)
                if call is None:  # its video was failed or resubmitted earlier in this batch
                    continue
                v, vid = call.video, call.video.work.video_id
                try:
                    value = ray.get(ref)  # ready: returns at once (an event, counts or a done record)
                except Exception as e:  # noqa: BLE001 - whatever ended this call: handled per video
                    if is_system_error(e) and v.attempt < retries:
                        drop(v)
                        v.attempt += 1
                        v.reset()
                        queue.appendleft(v)
                        out.event("video_retry", vid, failed_stage=call.stage, error=type(e).__name__)
                        log.warning("video %s: %s in %s (%s); resubmitting its graph (%d/%d)", vid,
                                    type(e).__name__, call.stage, call.item, v.attempt, retries)
                    else:
                        fail(v, failure_of(vid, e, call.stage))
                    continue
                if call.kind == "counts":
                    self._submit_rest(v, value, track)
                    out.event("fan_out", vid)  # the propagation calls are submitted
                    self.on_phase("propagation", vid)
                elif call.kind == "done":
                    drop(v)
                    out.done[vid] = value
                    telemetry.current().video_done(vid)  # telemetry hook
                    rates.add(value)
                    out.event("video_done", vid)
                    self.on_phase("done", vid)
                    bar.update(1)
                    bar.set_postfix(failed=len(out.failed), skipped=len(p.skipped), rates=rates.postfix())
            waited = time.monotonic() - last_finish
            if active and waited > stall_s:
                report = self.stall_report(track, waited)
                log.error("%s", report)
                out.event("stall", pending=len(track))
                err = StallError(report)
                for v in list(active.values()):
                    stages = [c.stage for c in track.values() if c.video is v]
                    stage = min(stages, key=pl.STAGES.index) if stages else "unknown"
                    fail(v, resume.failure_from(v.work.video_id, stage, err, report))
                while queue:
                    v = queue.popleft()
                    fail(v, resume.failure_from(v.work.video_id, "not started", err, report))
        bar.close()

    def stall_report(self, track: dict[Any, _Call], waited: float) -> str:
        """What is pending and where: the driver's view (calls per video and stage), Ray's view
        (tasks not finished: state, resources asked, node) and what each node has free."""
        lines = [f"no call finished for {waited:.0f} s (ray.stall_timeout_s="
                 f"{float(self.c['ray']['stall_timeout_s']):g}); pending calls:"]
        by_video: dict[str, list[str]] = {}
        for call in track.values():
            by_video.setdefault(call.video.work.video_id, []).append(f"{call.stage} {call.item} (waits for {call.asks})")
        for vid, calls in sorted(by_video.items()):
            lines.append(f"  {vid}: " + "; ".join(sorted(set(calls))[:12]) + (" ..." if len(set(calls)) > 12 else ""))
        lines.append("Ray's unfinished tasks (state, resources asked, node):")
        lines += [f"  {t}" for t in _unfinished_tasks()] or ["  (none reported)"]
        lines.append("nodes (free / total):")
        lines += [f"  {n}" for n in _node_resources()]
        lines.append("A task waiting for resources no node has free stays pending: free them (fewer "
                     "actors or replicas), add nodes, or lower the stage's resources:.")
        return "\n".join(lines)


def _asks(opts: dict[str, Any]) -> str:
    want = {"CPU": opts.get("num_cpus", 0), "GPU": opts.get("num_gpus", 0), **opts.get("resources", {})}
    where = " on the driver's node" if "scheduling_strategy" in opts else ""
    return (", ".join(f"{k}={v:g}" for k, v in want.items() if v) or "no resources") + where


def _unfinished_tasks(limit: int = 40) -> list[str]:
    try:
        from ray.util.state import list_tasks

        tasks = list_tasks(filters=[("job_id", "=", ray.get_runtime_context().get_job_id())], limit=1000,
                           raise_on_missing_output=False, timeout=30)
    except Exception as e:  # noqa: BLE001 - the state API is best effort in a report
        return [f"(Ray's state API did not answer: {type(e).__name__}: {e})"]
    out = []
    for t in tasks:
        state = str(getattr(t, "state", ""))
        if state in ("FINISHED", "FAILED"):
            continue
        res = getattr(t, "required_resources", None) or {}
        node = (getattr(t, "node_id", None) or "-")[:8]
        out.append(f"{getattr(t, 'name', '?')}: {state}, asks {dict(res)}, node {node}")
    return sorted(out)[:limit]


def _node_resources() -> list[str]:
    try:  # free resources per node: only Ray's internal state has them
        from ray._private.state import available_resources_per_node  # noqa: PLC2701

        free = available_resources_per_node()
    except Exception:  # noqa: BLE001 - best effort: totals only
        free = {}
    out = []
    for n in NodeResources.from_ray_nodes(ray.nodes()):
        avail = free.get(n.node_id, {})
        have = ", ".join(f"{k}={avail.get(k, float('nan')):g}/{v:g}" for k, v in sorted(n.total.items()))
        out.append(f"{n.address} ({n.node_id[:8]}): {have}")
    return out


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
