"""A finished run's cached tables, loaded once for a sweep (no model, no Ray).

What a sweep trial needs from the run directory (:class:`rvos_ray.runtime.run_dir.RunDir`):

* the run's resolved config (its NMS and ensemble settings are the baseline of every trial);
* per scored video: the tracklet ids the run's NMS kept (``tracklets.parquet``), the grounding
  probabilities of every variant (``grounding.parquet``) and, when a sweep changes NMS, every
  propagated tracklet (``tracklets_all.parquet``);
* **pair metrics**: J, F and frame count of every expression for every tracklet it could pick
  (every grounded tracklet of its video) and for "no prediction" (tracklet id -1, an empty
  mask). An expression's J and F depend only on the tracklet it picks, so a trial scores its
  predictions by lookup instead of decoding masks again. They are computed once with the
  runtime's own scorer path (:func:`rvos_ray.runtime.pipeline.score_video`, the same masks,
  frames and protocol as the run), so a trial with the run's settings reproduces the run's
  J&F exactly, and kept in ``<run>/sweeps/pair_metrics.parquet`` for the next sweep.

Grounding probabilities exist only for the tracklets the run's NMS kept (the grounder saw that
set). A trial whose NMS keeps a tracklet outside it cannot score that tracklet from the cache:
see :mod:`rvos_ray.sweep.trial` (``missing_grounding``). Running the pipeline once with a
generous NMS (larger P, higher IoU threshold) makes the cache cover a wider sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from rvos_ray.config import RunConfig
from rvos_ray.data import io as fio
from rvos_ray.registry import ConfigError
from rvos_ray.runtime import pipeline as pl
from rvos_ray.runtime.run_dir import RunDir, table_bytes, table_from_bytes
from rvos_ray.types import GROUNDING_SCHEMA, PREDICTION_SCHEMA, SchemaError

__all__ = ["PAIR_SCHEMA", "NO_PREDICTION", "RunCache", "load_run_config", "load_cache", "pair_metrics_for_video"]

NO_PREDICTION = -1  # tracklet id of "no prediction": every frame scored as an empty mask

PAIR_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("exp_id", pa.string()),
        ("tracklet_id", pa.int32()),
        ("J", pa.float64()),
        ("F", pa.float64()),
        ("n_frames", pa.int32()),
        ("finished_at", pa.float64()),
    ]
)
"""J and F of one expression if it picked one tracklet (``NO_PREDICTION``: an empty mask).
``finished_at`` is the video's ``done.json`` time: rows of a video redone since are stale."""

PAIR_FILE = "sweeps/pair_metrics.parquet"


@dataclass
class RunCache:
    """Everything a cache trial reads; small enough to ship to every trial once (object store)."""

    run_uri: str
    cfg: dict[str, Any]  # the run's resolved config (plain containers)
    works: list[pl.VideoWork]  # the scored videos, sorted by id
    kept: dict[str, tuple[int, ...]]  # the run's NMS output per video (rank order)
    grounding: pa.Table  # every scored video's grounding rows (GROUNDING_SCHEMA)
    pairs: dict[tuple[str, str, int], tuple[float, float, int]]  # (video, exp, tracklet) -> J, F, n
    prediction: pa.Table  # the run's own predictions of the scored videos
    run_scores: dict[str, float]  # the run's J, F, J&F (summary.json, else from its metrics)
    tracklets_all: pa.Table | None = None  # every propagated tracklet (only when NMS is swept)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def variants(self) -> list[str]:
        return sorted(set(self.grounding.column("variant").to_pylist()))

    @property
    def config(self) -> DictConfig:
        """The run's config as a structured DictConfig (slow to build: not for every trial)."""
        return OmegaConf.merge(OmegaConf.structured(RunConfig), self.cfg)

    @property
    def protocol_view(self) -> SimpleNamespace:
        """What :func:`rvos_ray.runtime.run_lifecycle.split_scores` reads of the config
        (``evaluation.protocol``), without building an OmegaConf tree per trial."""
        return SimpleNamespace(evaluation=SimpleNamespace(protocol=str(self.cfg["evaluation"]["protocol"])))

    @cached_property
    def grounded(self) -> dict[str, set[int]]:
        """Tracklet ids that have grounding rows, per video."""
        out: dict[str, set[int]] = {w.video_id: set() for w in self.works}
        g = self.grounding
        for v, t in set(zip(g.column("video_id").to_pylist(), g.column("tracklet_id").to_pylist())):
            out.setdefault(v, set()).add(int(t))
        return out


def load_run_config(rd: RunDir) -> DictConfig:
    """The run's stored ``config.yaml`` over the structured defaults (read-only)."""
    if not fio.exists(rd.config_path):
        raise ConfigError(f"{rd.config_path} does not exist: {rd.uri} is not a run directory "
                          f"(rvos-ray run writes config.yaml first)")
    stored = OmegaConf.create(fio.read_bytes(rd.config_path).decode())
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), stored)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def pair_metrics_for_video(cfg: dict[str, Any], work: pl.VideoWork, tracklets: pa.Table,
                           tracklet_ids: Sequence[int], finished_at: float = 0.0) -> pa.Table:
    """PAIR_SCHEMA rows of one video: every expression scored as if it picked each of
    ``tracklet_ids`` (``NO_PREDICTION`` included by the caller when wanted)."""
    cols: dict[str, list] = {k: [] for k in PAIR_SCHEMA.names}
    for tid in tracklet_ids:
        pred = pa.table({
            "video_id": [work.video_id] * len(work.expressions),
            "exp_id": [e.exp_id for e in work.expressions],
            "tracklet_id": pa.array([tid] * len(work.expressions), pa.int32()),
            "score": pa.array([0.0] * len(work.expressions), pa.float32()),
        }, schema=PREDICTION_SCHEMA)
        scored = pl.score_video(cfg, work, tracklets, pred)
        if scored is None:
            raise ConfigError(f"video {work.video_id!r} has no ground truth to score against")
        m = scored[0].to_pydict()
        cols["video"] += m["video"]
        cols["exp_id"] += m["exp_id"]
        cols["tracklet_id"] += [int(tid)] * len(m["video"])
        cols["J"] += m["J"]
        cols["F"] += m["F"]
        cols["n_frames"] += m["n_frames"]
        cols["finished_at"] += [float(finished_at)] * len(m["video"])
    return pa.table(cols, schema=PAIR_SCHEMA)


def load_cache(
    run_uri: str,
    need_tracklets_all: bool = False,
    map_videos: Callable[[Callable, list], list] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> RunCache:
    """Load the cache of the finished, scored videos of a run directory.

    ``map_videos(fn, items)`` computes missing pair metrics (``fn(item)`` per video; default:
    in this process); the sweep executor passes a Ray-backed map. Raises :class:`ConfigError`
    when the run has no scored video (a sweep needs ground truth).
    """
    t0 = time.perf_counter()
    rd = RunDir(run_uri)
    cfg = load_run_config(rd)
    c = OmegaConf.to_container(cfg, resolve=True)
    done = rd.done_videos()
    scored = sorted(v for v in done if rd.has_table(v, "metrics"))
    if not scored:
        raise ConfigError(f"{rd.uri}: no finished video has metrics (metrics.parquet); a sweep scores "
                          f"against ground truth, so the run must be on an annotated split with run.score=true")
    by_id = {w.video_id: w for w in list(pl.load_split(cfg).works)}
    missing = [v for v in scored if v not in by_id]
    if missing:
        raise ConfigError(f"{rd.uri}: videos {missing[:5]} are in the run but not in data "
                          f"{c['data']['root']} split {c['data']['split']}")
    works = [by_id[v] for v in scored]

    kept, grounding, preds, every = {}, [], [], []
    for v in scored:
        k = rd.read_table(v, "tracklets")
        kept[v] = tuple(dict.fromkeys(int(i) for i in k.column("tracklet_id").to_pylist()))
        grounding.append(rd.read_table(v, "grounding"))
        preds.append(rd.read_table(v, "prediction"))
        if need_tracklets_all:
            every.append(rd.read_table(v, "tracklets_all"))
    g = pa.concat_tables(grounding) if grounding else GROUNDING_SCHEMA.empty_table()
    t_all = pa.concat_tables(every).unify_dictionaries().combine_chunks() if need_tracklets_all else None
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs_table, computed = _pair_metrics(rd, c, works, g, map_videos, log)
    pairs = {(v, e, int(t)): (j, f, int(n)) for v, e, t, j, f, n in zip(*(pairs_table.column(k).to_pylist()
                                                                          for k in PAIR_SCHEMA.names[:6]))}
    pair_s = time.perf_counter() - t0
    run_scores = _run_scores(rd, cfg, works)
    return RunCache(
        run_uri=rd.uri, cfg=c, works=works, kept=kept, grounding=g, pairs=pairs,
        prediction=pa.concat_tables(preds) if preds else PREDICTION_SCHEMA.empty_table(),
        run_scores=run_scores, tracklets_all=t_all,
        timings={"load_s": load_s, "pair_metrics_s": pair_s, "pair_videos_computed": float(computed)},
    )


def _pair_metrics(rd: RunDir, c: dict, works: list[pl.VideoWork], grounding: pa.Table,
                  map_videos: Callable | None, log: Callable[[str], None]) -> tuple[pa.Table, int]:
    """Stored pair metrics plus those missing for these videos' grounded tracklets."""
    path = rd.path(PAIR_FILE)
    stored = PAIR_SCHEMA.empty_table()
    if fio.exists(path):
        try:
            stored = table_from_bytes(fio.read_bytes(path), PAIR_SCHEMA, path)
        except SchemaError as e:  # written by another version: recompute rather than trust it
            log(f"{path}: {e}; scoring the pairs again")
    stamps = {w.video_id: float(rd.done_record(w.video_id)["finished_at"]) for w in works}
    # a video finished again since its pairs were scored (run.resume=false) has other tracklets
    fresh = [stamps.get(v, t) == t for v, t in zip(stored.column("video").to_pylist(),
                                                 stored.column("finished_at").to_pylist())]
    stored = stored.filter(pa.array(fresh, pa.bool_()))
    have: dict[str, set[int]] = {}
    for v, t in set(zip(stored.column("video").to_pylist(), stored.column("tracklet_id").to_pylist())):
        have.setdefault(v, set()).add(int(t))
    grounded: dict[str, set[int]] = {}
    for v, t in set(zip(grounding.column("video_id").to_pylist(), grounding.column("tracklet_id").to_pylist())):
        grounded.setdefault(v, set()).add(int(t))
    todo = []
    for w in works:
        need = sorted((grounded.get(w.video_id, set()) | {NO_PREDICTION}) - have.get(w.video_id, set()))
        if need:
            todo.append((w, need))
    if not todo:
        return stored, 0
    log(f"scoring every (expression, tracklet) pair of {len(todo)} videos once (kept in {path})")
    items = [(c, w, rd.uri, ids, stamps[w.video_id]) for w, ids in todo]
    parts = (map_videos or (lambda fn, xs: [fn(x) for x in xs]))(pair_metrics_task, items)
    table = pa.concat_tables([stored, *parts]).sort_by([("video", "ascending"), ("exp_id", "ascending"),
                                                         ("tracklet_id", "ascending")])
    fio.write_bytes(path, table_bytes(table))
    return table, len(todo)


def pair_metrics_task(item: tuple) -> pa.Table:
    """One video's missing pair metrics (a unit of work a Ray task can run: reads its own
    ``tracklets_all`` from the run directory)."""
    c, work, run_uri, ids, finished_at = item
    tracklets = RunDir(run_uri).read_table(work.video_id, "tracklets_all")
    return pair_metrics_for_video(c, work, tracklets, ids, finished_at)


def _run_scores(rd: RunDir, cfg: DictConfig, works: list[pl.VideoWork]) -> dict[str, float]:
    """The run's own J, F, J&F over the scored videos, aggregated as the run aggregates."""
    from rvos_ray.runtime.run_lifecycle import split_scores

    parts = [rd.read_table(w.video_id, "metrics") for w in works]
    metrics = pa.concat_tables(parts).sort_by([("video", "ascending"), ("exp_id", "ascending")])
    s = split_scores(cfg, works, metrics)
    return {"J": float(s["J"]), "F": float(s["F"]), "J&F": float(s["J&F"])}
