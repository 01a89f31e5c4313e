"""A run's life around its videos, shared by both executors: start it (the run directory and
its config), plan it (what is left to do: a re-run skips finished videos), record broken
inputs and failures, and finish it (merged tables, the submission zip, ``summary.json``, the
event log and the HTML report). Resume is by manifest, never by position: a video is finished when
its ``done.json`` exists in the run directory (written last, after its tables and PNGs), so a
re-run of the same command skips exactly the finished videos, and redoes a video that failed
or was interrupted half-way.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from rvos_ray.data import io as fio
from rvos_ray.runtime.pipeline import STAGES, Split, VideoWork, sum_passes
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.telemetry import metrics as telemetry
from rvos_ray.types import Failure

log = logging.getLogger(__name__)


@dataclass
class Plan:
    todo: list[VideoWork]
    skipped: list[str]
    invalid: list[Failure] = field(default_factory=list)  # broken input: failed before any stage
    ids: list[str] = field(default_factory=list)  # every video of the split selection, in order


@dataclass
class Outcome:
    """What one invocation did; the executors fill it in as videos finish or fail."""

    executor: str
    started: float = field(default_factory=time.time)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # vid -> done record
    failed: dict[str, Failure] = field(default_factory=dict)
    driver_events: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # setup_s (models), loop_s (videos)

    def event(self, kind: str, video_id: str = "", **extra: Any) -> None:
        """A driver event for the run's event log (``extra`` may not rename its fixed keys)."""
        fixed = {"stage": "driver", "item": kind, "video_id": video_id, "time": time.time()}
        clash = fixed.keys() & extra.keys()
        if clash:
            raise ValueError(f"driver event {kind!r}: extra keys {sorted(clash)} would replace the event's own")
        self.driver_events.append({**fixed, **extra})


def start_run(cfg: DictConfig) -> RunDir:
    """The run directory with its resolved config. On resume the stored config must agree on
    every result-affecting key (:meth:`RunDir.write_config`)."""
    rd = RunDir(cfg.run.dir)
    if not cfg.run.resume and fio.exists(rd.config_path):
        # a deliberate redo: the new config replaces the old one, and no video counts as done
        # (or failed) under it until it is redone: a video failing in the redo must not be
        # skipped later as finished with the old config's tables
        for vid in rd.done_videos():
            fs, path = fio.resolve(rd.video_path(vid, "done.json"))
            fs.delete_file(path)
        for f in rd.failures():
            rd.clear_failure(f.video_id)
        fs, path = fio.resolve(rd.config_path)
        fs.delete_file(path)
    rd.write_config(cfg)
    return rd


def plan(rd: RunDir, split: Split | Sequence[VideoWork], resume: bool) -> Plan:
    """Videos to process now, the finished ones skipped (resume), and those whose input is
    broken (failure records with stage ``input``, naming the file)."""
    if not isinstance(split, Split):
        split = Split(tuple(split), (), tuple(w.video_id for w in split))
    done = rd.done_videos() if resume else set()
    works = split.works
    invalid = [failure_from(v, "input", e) for v, e in split.invalid]
    return Plan([w for w in works if w.video_id not in done], [w.video_id for w in works if w.video_id in done],
                invalid, list(split.ids))


def record_failure(rd: RunDir, out: Outcome, f: Failure) -> None:
    """A failed video: its failure record, the run's event, telemetry and a log line."""
    rd.write_failure(f)
    out.failed[f.video_id] = f
    out.event("video_failed", f.video_id, failed_stage=f.stage, error=f.error)
    telemetry.current().video_failed(f.stage, f.video_id, STAGES)  # telemetry hook
    log.warning("video %s failed in %s: %s: %s", f.video_id, f.stage, f.error, f.message)


def record_invalid(rd: RunDir, p: Plan, out: Outcome) -> None:
    """Failure records of the videos whose input is broken."""
    for f in p.invalid:
        record_failure(rd, out, f)


def finish_run(rd: RunDir, cfg: DictConfig, works: Sequence[VideoWork], p: Plan, out: Outcome) -> dict[str, Any]:
    """Merge the split's tables, zip the submission, write the event log and ``summary.json``.

    Only videos of this split selection count; the tables cover every finished one (done now
    or skipped as done earlier), so a resumed run ends with the same tables as a clean one."""
    ids = p.ids or [w.video_id for w in works]
    finished = [v for v in ids if v in out.done or v in set(p.skipped)]
    predictions = rd.merge("prediction", finished, "predictions.parquet")
    metrics = rd.merge("metrics", finished, "metrics.parquet")
    failures = [out.failed[v] for v in ids if v in out.failed]
    rd.write_failures_table(failures)
    if cfg.run.submission_zip:
        if finished:
            from rvos_ray.data.submission import zip_submission

            zip_submission(rd.submission_dir, rd.submission_zip, dataset=str(cfg.data.dataset))

    events = list(out.driver_events)
    for v in finished:
        events.extend(rd.read_events(v))
    events.sort(key=lambda e: (e.get("start", e.get("time", 0.0)), e.get("video_id", "")))
    rd.write_run_events(events)

    stage_seconds: dict[str, float] = {}
    for v in out.done:
        for s, sec in out.done[v].get("stage_seconds", {}).items():
            stage_seconds[s] = stage_seconds.get(s, 0.0) + sec
    summary: dict[str, Any] = {
        "executor": out.executor,
        "run_dir": rd.uri,
        "videos": len(ids),
        "invalid": len(p.invalid),
        "done": len(out.done),
        "skipped": len(p.skipped),
        "failed": len(failures),
        "finished": len(finished),
        "expressions": predictions.num_rows,
        "wall_seconds": time.time() - out.started,
        "compute_seconds": sum(stage_seconds.values()),
        "stage_seconds": stage_seconds,
        # frames through each visual encoder, expressions through each text encoder (videos
        # done in this run): each encoder shared by several variants counts once; frames
        # through the propagator's backbone ("propagation": {"backbone": n})
        "encoder_passes": sum_passes(d.get("encoder_passes", {}) for d in out.done.values()),
        "timings": dict(out.timings),
        "nodes": work_per_node(events),
        "failures": [{"video_id": f.video_id, "stage": f.stage, "error": f.error, "message": f.message,
                      "record": rd.path("failures", f"{f.video_id}.json")} for f in failures],
    }
    if metrics.num_rows:
        summary.update(split_scores(cfg, works, metrics))
    rd.write_json("summary.json", summary)
    # telemetry hook: environment.json and the HTML run report, at the end of every run
    from rvos_ray.telemetry.report import write_run_report

    write_run_report(rd.uri)
    return summary


def work_per_node(events: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per node (its id, or the host where the executor knows no node): the actors it held and
    the stage calls and seconds of work it did, overall and per stage."""
    nodes: dict[str, dict[str, Any]] = {}

    def node(key: str) -> dict[str, Any]:
        return nodes.setdefault(key, {"actors": [], "calls": 0, "seconds": 0.0, "stages": {}})

    for e in events:
        if e.get("stage") == "driver":
            for stage, items in (e.get("placements") or {}).items() if e.get("item") == "actors_ready" else ():
                for p in items:
                    node(str(p.get("node_id") or p.get("host", "?")))["actors"].append(f"{stage} {p.get('name', '')}")
            continue
        if "start" not in e or "end" not in e:
            continue
        d = node(str(e.get("node") or e.get("host", "?")))
        sec = float(e["end"] - e["start"])
        d["calls"] += 1
        d["seconds"] += sec
        st = d["stages"].setdefault(e["stage"], {"calls": 0, "seconds": 0.0})
        st["calls"] += 1
        st["seconds"] += sec
    return nodes


def split_scores(cfg: DictConfig, works: Sequence[VideoWork], metrics: Any) -> dict[str, Any]:
    """J, F, J&F of the split from the per-expression metrics, aggregated by the evaluation
    protocol (expressions for "rvos", objects for "davis") exactly as the scorer does."""
    from rvos_ray.evaluation.scorer import ExpressionScore, ScoreReport

    obj_ids = {(w.video_id, e.exp_id): tuple(e.obj_ids) for w in works for e in w.expressions}
    m = metrics.to_pydict()
    rows = [ExpressionScore(video=v, exp_id=x, obj_ids=obj_ids.get((v, x), ()), J=j, F=f, n_frames=n)
            for v, x, j, f, n in zip(m["video"], m["exp_id"], m["J"], m["F"], m["n_frames"])]
    report = ScoreReport(protocol=str(cfg.evaluation.protocol), expressions=rows,
                         n_videos=len(set(m["video"])), n_annotated_frames=0, n_missing=0, missing=[])
    s = report.summary()
    return {"J": s["J"], "F": s["F"], "J&F": s["J&F"], "protocol": s["protocol"],
            "scored_expressions": s["n_expressions"] - s["n_expressions_without_frames"]}


def failure_from(video_id: str, stage: str, exc: BaseException, tb: str | None = None) -> Failure:
    """A failure record: the stage, the exception type, its message (first 2000 chars) and the
    traceback (``tb``: one formatted elsewhere, e.g. in a Ray worker; else ``exc``'s own)."""
    msg = str(exc).strip() or repr(exc)
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Failure(video_id=video_id, stage=stage, error=type(exc).__name__, message=msg[:2000],
                   traceback=tb[-20000:])
