"""Sweep throughput: cache trials per second, and a trial's time against a full pipeline re-run.

    .venv/bin/python bench/sweep.py [--videos 3] [--trials 16] [--config configs/tiny.yaml]

1. Writes a small synthetic split and runs the whole pipeline on it in-process with the given
   config (``rvos-ray run --executor local``): that wall time is what a trial would cost if a
   sweep re-ran the models (the baseline).
2. Loads the run's cache (including the one-time pair metrics) and times cache trials
   in-process (no Ray): the per-trial cost the sweep pays instead, and the ratio of the two.
3. Runs a grid of ``--trials`` cache trials with Ray Tune on a local Ray (2 concurrent trials):
   trials/s including Tune's own scheduling.

The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--trials", type=int, default=16, help="Tune trials (a grid of this size)")
    p.add_argument("--inprocess-trials", type=int, default=20)
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline config")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from rvos_ray.config import load_config
    from rvos_ray.data.synthetic import make_shapes
    from rvos_ray.runtime import sweep_exec
    from rvos_ray.runtime.local_exec import run_local
    from rvos_ray.sweep.cache import load_cache
    from rvos_ray.sweep.space import Axis, SweepConfig, SweepSpace
    from rvos_ray.sweep.trial import cache_trial

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sweep-"))
    data = work / "shapes"
    make_shapes(str(data), videos=args.videos, seed=0, height=96, width=160, min_frames=8, max_frames=12)
    cfg = load_config(args.config, [f"data.root={data}", f"run.dir={work / 'run'}", "run.submission_zip=false",
                                    *args.overrides])
    t0 = time.perf_counter()
    summary = run_local(cfg, progress=False)
    full_s = time.perf_counter() - t0
    print(f"full pipeline (in-process, {args.config}): {summary['done']} videos, "
          f"{summary.get('scored_expressions', 0)} expressions in {full_s:.2f}s; J&F {summary.get('J&F', float('nan')):.4f}")

    t0 = time.perf_counter()
    cache = load_cache(str(work / "run"), need_tracklets_all=True)
    prep_s = time.perf_counter() - t0
    print(f"cache load + pair metrics (once per run): {prep_s:.2f}s")

    variants = cache.variants
    temps = [0.5, 1.0, 2.0, 4.0]
    configs = [{"ensemble.temperature": temps[i % 4], "ensemble.mode": ("mean", "logmean")[(i // 4) % 2],
                "nms.max_tracklets": (10, 5)[(i // 8) % 2]} for i in range(args.inprocess_trials)]
    base = cache_trial(cache, {})
    times = []
    for c in configs:
        r = cache_trial(cache, c)
        assert r["model_calls"] == 0
        times.append(r["time_s"])
    trial_s = sum(times) / len(times)
    ratio = trial_s / full_s
    print(f"cache trial (in-process): {trial_s * 1000:.1f} ms mean over {len(times)}; "
          f"{trial_s / full_s:.5f} of a full re-run ({full_s / trial_s:.0f}x cheaper)")
    print(f"baseline trial J&F {base['J&F']:.6f} vs run {summary.get('J&F', float('nan')):.6f} "
          f"(identical: {base['J&F'] == summary.get('J&F')})")

    # Tune: a grid of --trials points over temperature x mode (x P)
    n = max(1, args.trials)
    temps_grid = [0.25 * (k + 1) for k in range(max(1, n // 4))]
    axes = [Axis("ensemble.temperature", "grid", tuple(temps_grid)), Axis("ensemble.mode", "grid", ("mean", "logmean")),
            Axis("nms.max_tracklets", "grid", (10, 5))]
    space = SweepSpace(axes, variants)
    sc = OmegaConf.structured(SweepConfig)
    sc.search.max_concurrent_trials = 2
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = sweep_exec.init_sweep_ray(sc, None, 2)
    try:
        t0 = time.perf_counter()
        rows = sweep_exec.run_tune(cache, space, sc, str(work / "tune"), "bench", 1)
        tune_s = time.perf_counter() - t0
    finally:
        if started:
            import ray

            ray.shutdown()
    ok = sum(1 for r in rows if r.get("status") == "ok")
    tps = len(rows) / tune_s
    print(f"Ray Tune: {len(rows)} trials ({ok} ok, 2 concurrent) in {tune_s:.2f}s = {tps:.2f} trials/s "
          f"(each trial {trial_s * 1000:.1f} ms of work; the rest is Tune's scheduling)")
    print(json.dumps({
        "videos": summary["done"], "full_pipeline_s": full_s, "cache_prep_s": prep_s,
        "trial_s": trial_s, "trial_to_pipeline_ratio": ratio, "inprocess_trials_per_s": 1.0 / trial_s,
        "tune_trials": len(rows), "tune_trials_per_s": tps, "baseline_reproduces_run": base["J&F"] == summary.get("J&F"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
