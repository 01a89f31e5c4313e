"""The Ray executor: model actors pinned by resources and a per-video task graph of ObjectRefs.

What runs is :mod:`rvos_ray.runtime.pipeline`; this module decides where and when:

- **Actors hold models**, each loaded once: a :class:`ModelActor` per stage with models
  (:func:`rvos_ray.runtime.graph.stages_of`: each segmentation model, the propagator, each group
  of grounder variants sharing an encoder), ``replicas`` times each. Each asks for its stage's
  ``resources:`` (``num_cpus``, ``num_gpus``, ``custom``), so on a GPU cluster they land on
  separate GPUs and custom resources steer them to node types. Actors restart
  (``ray.max_restarts``), in place or on another node, and their interrupted calls are retried
  for as long as the restart takes.
- **Per video**, the driver interprets the graph of :mod:`rvos_ray.runtime.graph`: one segment
  call per model and keyframe batch -> one pooling task (each keyframe's candidates its own
  object, plus their counts) -> once the counts are known, propagation calls per keyframe and
  chunk of candidates (spread over the pool) -> one tracklet-NMS task -> one grounding call per
  group of variants -> the ensemble task -> the writer task (tables, PNGs, metrics, ``done.json``).
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

import dataclasses
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

from rvos_ray.runtime import graph, ray_session
from rvos_ray.runtime import pipeline as pl
from rvos_ray.runtime import run_lifecycle as lifecycle
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
from rvos_ray.stages.protocols import Stage
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


def _attempt() -> int:
    """How often Ray has already started the call running in this worker (0: the first time).
    Ray has no public API for it; its core worker knows (0 where a Ray version does not)."""
    try:
        return int(ray._private.worker.global_worker.core_worker.get_current_task_attempt_number())
    except AttributeError:
        return 0


def _where() -> dict[str, Any]:
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "resources": dict(ctx.get_assigned_resources()),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


@ray.remote
class ModelActor:
    """Holds one stage with models (:func:`rvos_ray.runtime.graph.stages_of`), set up by
    :meth:`build` (not in ``__init__``), and runs the graph's calls on it (:meth:`call`).

    Why not in ``__init__``: an actor is alive as soon as Ray placed it, so the executor can
    tell "the cluster cannot place this" (bounded by ``ray.placement_timeout_s``) apart from
    "the model is still loading" (big checkpoints take minutes). After a restart Ray re-runs
    only ``__init__``; the first call then sets the stage up again, seeded as before, so a
    restarted actor computes exactly what the lost one did. A setup error is kept and raised by
    every call, so the driver sees the real cause (e.g. a ConfigError naming a key)."""

    def __init__(self, stage: Stage, seed: int) -> None:
        _on_node()
        self._stage, self._seed, self._ready = stage, seed, False
        self.error: BaseException | None = None

    def where(self) -> dict[str, Any]:
        """Node, assigned resources and pid of this actor (cheap: the placement probe)."""
        return _where()

    def build(self) -> dict[str, Any]:
        """Set the stage up (once); returns :meth:`where`. Raises the setup error, if any."""
        self._setup()
        return _where()

    def _setup(self) -> Stage:
        if not self._ready and self.error is None:
            _limit_threads(self._stage.resources.num_cpus)
            try:
                seeded(self._seed, self._stage.setup)
                self._ready = True
            except Exception as e:  # kept: re-raised by every call
                self.error = e
        if self.error is not None:
            raise self.error
        return self._stage

    def call(self, call: graph.Call, *args: Any) -> Any:
        """One call of a video's graph on this actor's stage (timed: outputs, then its event)."""
        return graph.execute(call, self._setup(), *args, attempt=_attempt())


# --------------------------------------------------------------------------------------------
# Tasks (cheap CPU stages)
# --------------------------------------------------------------------------------------------


@ray.remote
def run_task(stage: Stage, call: graph.Call, *args: Any) -> Any:
    """One call of a stage without models (pooling, NMS, ensemble, writer), timed like any call."""
    _on_node()
    return graph.execute(call, stage, *args, attempt=_attempt())


def failure_of(video_id: str, err: BaseException, stage: str) -> Failure:
    """A failure record from what ``ray.get`` raised for a call of ``stage`` (known from the
    graph: the first call of the video whose ref raised): the cause and the worker's traceback."""
    text = _ANSI.sub("", str(err))
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = getattr(err, "cause", None) or err
        tb = _ANSI.sub("", str(getattr(err, "traceback_str", "") or text))  # the worker's traceback
        return lifecycle.failure_from(video_id, stage, cause, tb)
    return lifecycle.failure_from(video_id, stage, err, text)  # an actor or node lost for good, ...


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------

#: config keys the actors are built from: a run reusing an executor must agree on them
_ACTOR_KEYS = ("segmentation", "propagation.backend", "propagation.options", "propagation.resources",
               "propagation.avoid.feature_cache_frames", "grounding", "run.seed", "ray.max_restarts",
               "ray.max_retries")


def _get(c: dict, dotted: str) -> Any:
    for k in dotted.split("."):
        c = c.get(k) if isinstance(c, dict) else None
    return c


@dataclass
class _Video:
    work: pl.VideoWork
    graph: graph.VideoGraph | None = None  # its calls, planned as far as the known values allow
    refs: dict[graph.Out, Any] = field(default_factory=dict)  # every output submitted so far
    attempt: int = 0  # whole-graph resubmissions after a system failure (a lost node's objects)

    def reset(self) -> None:
        self.graph, self.refs = None, {}


@dataclass(frozen=True)
class _Call:
    """A submitted call of a video's graph, as the driver tracks it: its stage and item, and
    what its ref returns (``event``: a stage event; ``value``: an output the graph needs to
    plan further, e.g. the pooled candidate counts propagation fans out on; ``done``: the
    writer's done record)."""

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
        self.pools: dict[graph.StageKey, list] = {}  # each stage with models: its actor replicas
        self.tasks: dict[graph.StageKey, tuple[Any, dict]] = {}  # the run's other stages: (put once, task options)
        self.placements: dict[str, list[dict]] = {}
        self._rr: dict[str, int] = {}
        self._sticky: dict[tuple, Any] = {}  # (pool, affinity) -> the replica its calls go to

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
        seed = int(self.c["run"]["seed"])
        named = []
        for key, stage in graph.stages_of(self.c).items():
            if stage.has_models:
                self.pools[key] = [ModelActor.options(**self._actor_opts(stage.resources)).remote(stage, seed)
                                   for _ in range(stage.resources.replicas)]
                named += [(stage.stage, stage.name or stage.stage, a) for a in self.pools[key]]
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

    def _next(self, key: graph.StageKey, actors: list, affinity: str = "") -> Any:
        """Round-robin over a pool: consecutive calls go to different replicas; calls with the
        same ``affinity`` (a video's propagation calls that share work) to the same one."""
        if affinity and (key, affinity) in self._sticky:
            return self._sticky[(key, affinity)]
        i = self._rr.get(key, 0)
        self._rr[key] = i + 1
        if affinity:
            self._sticky[(key, affinity)] = actors[i % len(actors)]
        return actors[i % len(actors)]

    # ---- per-video graph -------------------------------------------------------------------

    def _task_opts(self, stage: Stage) -> dict[str, Any]:
        """The task options of a stage without models: its declared resources (the writer's
        pinned to the driver's node when the run directory is local, see below)."""
        r = stage.resources
        opts = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "resources": dict(r.custom),
                "max_retries": int(self.c["ray"]["max_retries"])}
        if stage.stage == "writer" and self.rd.is_local:
            # A local run directory exists on the driver's machine only: write there. Pinned to
            # one node, the writer reserves nothing: that node's CPUs may all be held by actors
            # for the whole run (a head with num-cpus 0, or a head hosting the model actors),
            # and a writer waiting for a CPU there would wait forever.
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
            opts.update(num_cpus=0, num_gpus=0, resources={})
        return opts

    def _plan(self, v: _Video, track: dict[Any, _Call]) -> list[graph.Call]:
        """Submit the calls of ``v``'s graph that can be planned now; when planning stops at a
        value (the pooled candidate counts), track that small object so the driver can go on
        once it is ready. Returns the calls submitted."""
        if v.graph is None:
            v.graph = graph.VideoGraph(self.c, v.work, self.rd.uri)
            v.refs = {graph.VIDEO: ray.put(v.work.video), graph.WORK: ray.put(v.work)}
        new = v.graph.plan()
        tel = telemetry.current()  # telemetry hook: calls submitted per stage (queue depth)
        for call in new:
            self._submit(v, call, track)
            tel.submitted(call.stage, 1, video_id=v.work.video_id, **call.tags)
        if v.graph.done:
            v.refs = {}  # all submitted: each output lives as long as a call that consumes it needs it
        waiting = v.graph.waiting
        if waiting is not None:
            by = next(c for c in v.graph.calls if c.id == waiting.call)
            track[v.refs[waiting]] = _Call(v, by.stage, f"{by.item} (planning input)", kind="value",
                                           asks=self._asks_of(by))
        return new

    def _submit(self, v: _Video, call: graph.Call, track: dict[Any, _Call]) -> None:
        args = [v.refs[a] if isinstance(a, graph.Out) else a for a in call.args]
        call = dataclasses.replace(call, args=())  # its args travel once, resolved
        if call.key in self.pools:
            actor = self._next(call.key, self.pools[call.key], call.affinity)
            refs = actor.call.options(num_returns=call.returns).remote(call, *args)
        else:
            stage, opts = self.tasks[call.key]
            refs = run_task.options(num_returns=call.returns, **opts).remote(stage, call, *args)
        refs = list(refs) if call.returns > 1 else [refs]
        for i, ref in enumerate(refs):
            v.refs[call.out(i)] = ref
        track[refs[-1]] = _Call(v, call.stage, call.item, kind="done" if call.writer else "event",
                                asks=self._asks_of(call))

    def _asks_of(self, call: graph.Call) -> str:
        if call.key in self.pools:
            return f"a {call.key[-1]!r} {call.stage} actor"
        return _asks(self.tasks[call.key][1])

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
        self.rd: RunDir = lifecycle.start_run(cfg)
        works = list(split.works)
        p = lifecycle.plan(self.rd, split, cfg.run.resume)
        out = lifecycle.Outcome(executor="ray")
        out.event("run_start", videos=len(p.ids), todo=len(p.todo), skipped=len(p.skipped))
        lifecycle.record_invalid(self.rd, p, out)
        out.timings = {"setup_s": 0.0, "loop_s": 0.0}
        if p.todo:
            if not self.placements:
                t0 = time.perf_counter()
                self.start_actors()
                out.timings["setup_s"] = time.perf_counter() - t0
                out.event("actors_ready", placements=self.placements)
            t0 = time.perf_counter()
            self.tasks = {k: (ray.put(s), self._task_opts(s))
                          for k, s in graph.stages_of(self.c, self.rd.uri).items() if not s.has_models}
            self._loop(p, out, progress)
            out.timings["loop_s"] = time.perf_counter() - t0
        out.event("run_end")
        return lifecycle.finish_run(self.rd, cfg, works, p, out)

    def _use(self, cfg: DictConfig) -> None:
        c = OmegaConf.to_container(cfg, resolve=True)
        if self.placements:
            changed = [k for k in _ACTOR_KEYS if _get(c, k) != _get(self.c, k)]
            if changed:
                raise ValueError(f"this executor's actors were built for other {', '.join(changed)}; "
                                 "make a new RayExecutor for this config")
        self.cfg, self.c = cfg, c

    def _loop(self, p: lifecycle.Plan, out: lifecycle.Outcome, progress: bool) -> None:
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
            for key in [k for k in self._sticky if k[1] == v.work.video_id]:
                del self._sticky[key]
            active.pop(v.work.video_id, None)

        def fail(v: _Video, f: Failure) -> None:
            drop(v)
            lifecycle.record_failure(self.rd, out, f)
            self.on_phase("failed", f.video_id)
            bar.update(1)
            bar.set_postfix(failed=len(out.failed), skipped=len(p.skipped), rates=rates.postfix())

        last_finish = time.monotonic()
        while queue or active:
            while queue and len(active) < limit:
                v = queue.popleft()
                active[v.work.video_id] = v
                out.event("video_start", v.work.video_id, attempt=v.attempt)
                try:
                    self._plan(v, track)
                except graph.StageError as e:
                    fail(v, lifecycle.failure_from(v.work.video_id, e.stage, e.cause))
                    continue
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
                if call.kind == "value":
                    v.graph.values[v.graph.waiting] = value
                    try:
                        new = self._plan(v, track)
                    except graph.StageError as e:
                        fail(v, lifecycle.failure_from(vid, e.stage, e.cause))
                        continue
                    out.event("fan_out", vid)  # the calls planned on that value are submitted
                    self.on_phase(new[0].stage if new else "fan_out", vid)
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
                    fail(v, lifecycle.failure_from(v.work.video_id, stage, err, report))
                while queue:
                    v = queue.popleft()
                    fail(v, lifecycle.failure_from(v.work.video_id, "not started", err, report))
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
