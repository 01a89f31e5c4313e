"""The in-process executor: every stage of :mod:`rvos_ray.runtime.pipeline`, one video after
another, in this process. No Ray. For tests, debugging (a plain traceback, pdb works) and as
the reference the Ray executor must reproduce exactly.
"""

from __future__ import annotations

import time
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rvos_ray.runtime import graph
from rvos_ray.runtime import pipeline as pl
from rvos_ray.runtime import run_lifecycle as lifecycle
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.seeding import seeded
from rvos_ray.telemetry.progress import StageRates


class LocalStages:
    """The stages with models of a run, set up once (seeded with ``run.seed``; the Ray
    executor sets up the same, one per actor), for runs whose model sections are the same."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = c = OmegaConf.to_container(cfg, resolve=True)
        self.models = {k: s for k, s in graph.stages_of(c).items() if s.has_models}
        for s in self.models.values():
            seeded(int(c["run"]["seed"]), s.setup)

    def of_run(self, c: dict[str, Any], run_uri: str) -> dict[graph.StageKey, Any]:
        """Every stage object of a run of config ``c``: these models, the run's own tasks."""
        return {**graph.stages_of(c, run_uri), **self.models}


def process_video(stages: LocalStages, rd: RunDir, work: pl.VideoWork, c: dict[str, Any] | None = None,
                  run: dict[graph.StageKey, Any] | None = None) -> dict[str, Any]:
    """The video's graph (:mod:`rvos_ray.runtime.graph`), call after call, under the run's
    config ``c`` (a plain dict; default: the one the models were built from) and its stage
    objects ``run`` (default: :meth:`LocalStages.of_run`). Returns the done record; raises
    :class:`rvos_ray.runtime.graph.StageError` naming the stage of the call that failed."""
    c = stages.cfg if c is None else c
    g, run = graph.VideoGraph(c, work, rd.uri), run or stages.of_run(c, rd.uri)
    g.values.update({graph.VIDEO: work.video, graph.WORK: work})
    while True:
        new = g.plan()  # raises StageError naming the node that could not plan
        if not new:
            raise RuntimeError(f"video {work.video_id!r}: the graph stopped planning at {g.waiting}")
        for call in new:
            args = [g.values[a] if isinstance(a, graph.Out) else a for a in call.args]
            try:
                result = graph.execute(call, run[call.key], *args)
            except Exception as e:  # noqa: BLE001 - recorded per video, naming the stage
                raise graph.StageError(call.stage, e) from e
            if call.writer:
                return result
            g.values.update({call.out(i): x for i, x in enumerate(result)})


def run_local(cfg: DictConfig, progress: bool = True, stages: LocalStages | None = None) -> dict[str, Any]:
    """Run the split in this process; returns the summary (also in ``summary.json``).

    ``stages``: models already built (by :class:`LocalStages` for a config with the same model
    sections), reused instead of building them again, e.g. across runs of a test."""
    split = pl.load_split(cfg)  # a bad data root or selection fails before the run dir is touched
    rd = lifecycle.start_run(cfg)
    works = list(split.works)
    p = lifecycle.plan(rd, split, cfg.run.resume)
    out = lifecycle.Outcome(executor="local")
    out.event("run_start", videos=len(p.ids), todo=len(p.todo), skipped=len(p.skipped))
    lifecycle.record_invalid(rd, p, out)
    t0 = time.perf_counter()
    if stages is None and p.todo:
        stages = LocalStages(cfg)
    run_c = OmegaConf.to_container(cfg, resolve=True)  # models may be reused; the run's own settings
    run = stages.of_run(run_c, rd.uri) if stages is not None else {}
    out.timings["setup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bar = tqdm(total=len(p.todo), desc="videos", unit="video", disable=not progress)
    rates = StageRates()  # telemetry hook: per-stage rates on the bar
    for work in p.todo:
        out.event("video_start", work.video_id)
        try:
            out.done[work.video_id] = process_video(stages, rd, work, run_c, run)
            rates.add(out.done[work.video_id])
            out.event("video_done", work.video_id)
        except graph.StageError as e:
            lifecycle.record_failure(rd, out, lifecycle.failure_from(work.video_id, e.stage, e.cause))
        bar.update(1)
        bar.set_postfix(failed=len(out.failed), skipped=len(p.skipped), rates=rates.postfix())
    bar.close()
    out.timings["loop_s"] = time.perf_counter() - t0
    out.event("run_end")
    return lifecycle.finish_run(rd, cfg, works, p, out)
