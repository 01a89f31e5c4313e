"""The in-process executor: every stage of :mod:`rvos_ray.runtime.pipeline`, one video after
another, in this process. No Ray. For tests, debugging (a plain traceback, pdb works) and as
the reference the Ray executor must reproduce exactly.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rvos_ray.runtime import pipeline as pl
from rvos_ray.runtime import resume
from rvos_ray.runtime import stage_adapters as adapters
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.seeding import seeded
from rvos_ray.telemetry import metrics as telemetry
from rvos_ray.telemetry.progress import StageRates

log = logging.getLogger(__name__)


class LocalStages:
    """Every model of the run, built once: segmenters per model, one propagator, a grounding
    stage per group of variants sharing an encoder (the Ray executor builds the same, one per
    actor)."""

    def __init__(self, cfg: DictConfig) -> None:
        c = OmegaConf.to_container(cfg, resolve=True)
        seed = int(c["run"]["seed"])
        self.segmenters = [
            (str(m["name"]), seeded(seed, lambda m=m, i=i: adapters.build_segmenter(m, f"segmentation.models[{i}]")))
            for i, m in enumerate(c["segmentation"]["models"])
        ]
        self.propagator = seeded(seed, lambda: adapters.build_propagator(c["propagation"]))
        self.grounders = [(adapters.group_name(g), adapters.build_grounder(g, c["grounding"], seed))
                          for g in adapters.grounder_groups(c["grounding"])]
        self.cfg = c


def process_video(stages: LocalStages, rd: RunDir, work: pl.VideoWork, c: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The whole stage sequence of one video under the run's config ``c`` (a plain dict;
    default: the one the models were built from); raises :class:`StageFailure` naming the stage."""
    c = stages.cfg if c is None else c
    video = work.video
    events: list[dict] = []
    with _stage("segmentation"):
        keyframes, batches = pl.keyframe_batches(video, c["keyframes"]["k"],
                                                 c["segmentation"]["resources"]["batch_size"])
        per_model = []
        for name, seg in stages.segmenters:
            results = []
            for frames in batches:
                cands, ev = pl.segment_call(seg, name, video, frames)
                results.append(cands)
                events.append(ev)
            per_model.append(results)
    with _stage("pooling"):
        pooled, counts, ev = pl.pool_call(video, keyframes, per_model)
        events.append(ev)
    with _stage("propagation"):
        tables = []
        for call in pl.propagation_plan(counts, c["propagation"]["candidates_per_call"]):
            t, ev = pl.propagate_call(stages.propagator, video, pooled[call.keyframe_index], call)
            tables.append(t)
            events.append(ev)
    with _stage("nms"):
        every, kept, ev = pl.nms_call(c["nms"], video, tables)
        events.append(ev)
    with _stage("grounding"):
        grounding = []
        for name, g in stages.grounders:
            t, ev = pl.ground_call(g, name, work, kept)
            grounding.append(t)
            events.append(ev)
    with _stage("ensemble"):
        g_all, pred, ev = pl.ensemble_call(c["ensemble"], work, grounding)
        events.append(ev)
    with _stage("writer"):
        return pl.finish_video(rd.uri, c, work, every, kept, g_all, pred, events)


class StageFailure(RuntimeError):
    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


class _stage:
    """Context manager tagging any exception with the stage it came from."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is not None and not isinstance(exc, (StageFailure, KeyboardInterrupt)) and isinstance(exc, Exception):
            raise StageFailure(self.name, exc) from exc
        return False


def _failed(f) -> None:
    telemetry.current().video_failed(f.stage, f.video_id, pl.STAGES)  # telemetry hook
    log.warning("video %s failed in %s: %s: %s", f.video_id, f.stage, f.error, f.message)


def run_local(cfg: DictConfig, progress: bool = True, stages: LocalStages | None = None) -> dict[str, Any]:
    """Run the split in this process; returns the summary (also in ``summary.json``).

    ``stages``: models already built (by :class:`LocalStages` for a config with the same model
    sections), reused instead of building them again, e.g. across runs of a test."""
    split = pl.load_split(cfg)  # a bad data root or selection fails before the run dir is touched
    rd = resume.start_run(cfg)
    works = list(split.works)
    p = resume.plan(rd, split, cfg.run.resume)
    out = resume.Outcome(executor="local")
    out.event("run_start", videos=len(p.ids), todo=len(p.todo), skipped=len(p.skipped))
    resume.record_invalid(rd, p, out, _failed)
    t0 = time.perf_counter()
    if stages is None and p.todo:
        stages = LocalStages(cfg)
    run_c = OmegaConf.to_container(cfg, resolve=True)  # models may be reused; the run's own settings
    out.timings["setup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bar = tqdm(total=len(p.todo), desc="videos", unit="video", disable=not progress)
    rates = StageRates()  # telemetry hook: per-stage rates on the bar
    for work in p.todo:
        out.event("video_start", work.video_id)
        try:
            out.done[work.video_id] = process_video(stages, rd, work, run_c)
            rates.add(out.done[work.video_id])
            out.event("video_done", work.video_id)
        except StageFailure as e:
            f = resume.failure_from(work.video_id, e.stage, e.cause)
            rd.write_failure(f)
            out.failed[work.video_id] = f
            out.event("video_failed", work.video_id, failed_stage=f.stage, error=f.error)
            _failed(f)
        bar.update(1)
        bar.set_postfix(failed=len(out.failed), skipped=len(p.skipped), rates=rates.postfix())
    bar.close()
    out.timings["loop_s"] = time.perf_counter() - t0
    out.event("run_end")
    return resume.finish_run(rd, cfg, works, p, out)
