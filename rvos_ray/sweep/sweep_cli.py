"""``rvos-ray sweep --run RUN_DIR --config configs/sweeps/ensemble.yaml [--smoke-test] [key=value ...]``.

Ray Tune over a finished run's cached tracklet and grounding tables: every trial re-runs only
what its settings touch (tracklet-NMS when swept, the ensemble, the argmax) and scores the
predictions from the cache, without any model forward pass. Writes the leaderboard, the best
settings as a run config and a summary under ``<run>/sweeps/<name>/`` (see
:mod:`rvos_ray.sweep.report`), prints the top of the leaderboard and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from typing import Any

from omegaconf import OmegaConf

from rvos_ray.data import io as fio
from rvos_ray.runtime import ray_session
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.sweep.cache import load_cache, load_run_config
from rvos_ray.sweep.report import best_config, format_table, leaderboard_frame, write_leaderboard
from rvos_ray.sweep.space import build_space, load_sweep_config
from rvos_ray.sweep.trial import TrialSettings, cache_trial

SMOKE_MAX_SAMPLES = 2


def build_parser(prog: str = "rvos-ray sweep") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[1])
    p.add_argument("--run", required=True, help="a finished run directory (rvos-ray run's run.dir)")
    p.add_argument("--config", required=True, help="sweep YAML, e.g. configs/sweeps/ensemble.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the sweep config")
    p.add_argument("--address", default=None, help="an existing Ray cluster; default: a local Ray on 127.0.0.1")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: the machine's)")
    p.add_argument("--smoke-test", action="store_true",
                   help="a few trials only (grids cut to two values, at most 2 samples), 2 local CPUs")
    return p


def sweep(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Run the sweep of ``args``; returns its summary (also written to summary.json)."""
    sc = load_sweep_config(args.config, args.overrides)
    ray_session.prepare(ray_session.target_address(args.address, sc.ray.address))  # before Ray is imported
    from rvos_ray.runtime import sweep_exec

    rd = RunDir(args.run)
    run_cfg = load_run_config(rd)
    variants = [str(v["name"]) for v in run_cfg.grounding.variants]
    space = build_space(sc, run_cfg, variants, where=str(args.config))
    num_samples = int(sc.search.num_samples)
    if args.smoke_test:
        space = space.smoke()
        num_samples = min(num_samples, SMOKE_MAX_SAMPLES) if sc.search.algorithm != "grid" else 1
    num_cpus = args.num_cpus if args.num_cpus is not None else (2 if args.smoke_test else None)
    out_dir = rd.path("sweeps", str(sc.name))
    started = sweep_exec.init_sweep_ray(sc, args.address, num_cpus)
    try:
        t0 = time.perf_counter()
        cache = load_cache(rd.uri, need_tracklets_all=space.sweeps_nms, map_videos=sweep_exec.ray_map, log=log)
        prep_s = time.perf_counter() - t0
        base = cache_trial(cache, {}, str(sc.missing_grounding))
        base_settings = TrialSettings.of_run(cache.cfg)
        baseline = {"trial_id": "baseline", "kind": "baseline", **base,
                    **{a.key: _plain(OmegaConf.select(run_cfg, a.key)) if a.model else base_settings.value(a.key)
                       for a in space.axes}}
        t0 = time.perf_counter()
        rows = sweep_exec.run_tune(cache, space, sc, rd.path("sweeps"), str(sc.name), num_samples)
        tune_s = time.perf_counter() - t0
    finally:
        ray_session.disconnect(started)
    kind = "full" if space.full_pipeline else "cache"
    for r in rows:
        r["kind"] = kind
    df = leaderboard_frame([baseline, *rows], space.keys)
    pq_path, csv_path = write_leaderboard(out_dir, df)

    ok = [r for r in [baseline, *rows] if r.get("status") == "ok" and not math.isnan(r["J&F"])]
    best = max(ok, key=lambda r: r["J&F"]) if ok else None
    best_path = fio.join(out_dir, "best.yaml")
    if best is not None:
        if best["kind"] == "full":
            settings = {k: best[k] for k in space.keys}
        else:
            cfg_axes = {k: best[k] for k in space.keys if k in best and best["kind"] != "baseline"}
            settings = base_settings.with_axes(cfg_axes, cache.variants).overrides()
        fio.write_bytes(best_path, best_config(run_cfg, settings, fio.join(out_dir, "best_run")).encode())
    n = len(rows)
    summary = {
        "run_dir": rd.uri,
        "sweep": str(sc.name),
        "trials": n,
        "failed_trials": sum(1 for r in rows if r.get("status") == "error"),
        "kind": kind,
        "run_J&F": cache.run_scores["J&F"],
        "baseline_J&F": base["J&F"],
        "reproduces_run": base["J&F"] == cache.run_scores["J&F"],
        "best_J&F": None if best is None else best["J&F"],
        "best_J": None if best is None else best["J"],
        "best_F": None if best is None else best["F"],
        "best_trial": None if best is None else best["trial_id"],
        "cache_prep_s": prep_s,
        "tune_s": tune_s,
        "trials_per_s": n / tune_s if tune_s > 0 else math.nan,
        "mean_trial_s": float(df.loc[df["kind"] != "baseline", "time_s"].mean()) if n and "time_s" in df else math.nan,
        "leaderboard": pq_path,
        "leaderboard_csv": csv_path,
        "best_config": best_path if best is not None else None,
    }
    fio.write_bytes(fio.join(out_dir, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    log(format_table(df, space.keys, int(sc.top)))
    return summary


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def report(s: dict[str, Any]) -> None:
    repro = "reproduced exactly" if s["reproduces_run"] else "DIFFERS from the run (see the sweep README)"
    print(f"{s['trials']} trials ({s['kind']}) in {s['tune_s']:.1f}s, {s['trials_per_s']:.2f} trials/s; "
          f"{s['failed_trials']} failed")
    print(f"baseline (the run's own settings from the cache): J&F {s['baseline_J&F']:.4f}; "
          f"run: {s['run_J&F']:.4f} ({repro})")
    if s["best_J&F"] is not None:
        print(f"best: {s['best_trial']} J&F {s['best_J&F']:.4f} (J {s['best_J']:.4f}, F {s['best_F']:.4f}); "
              f"settings: {s['best_config']}")
    print(f"leaderboard: {s['leaderboard']} (+ .csv)")
    keys = ("trials", "failed_trials", "trials_per_s", "mean_trial_s", "run_J&F", "baseline_J&F", "best_J&F",
            "reproduces_run")
    print(json.dumps({k: s[k] for k in keys}))


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report(sweep(args))
    return 0
