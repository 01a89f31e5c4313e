"""What the five-variant grounder ensemble is worth, on the demo's pipeline.

    .venv/bin/python bench/ensemble_value.py

Two synthetic sets: the demo's 8 valid videos (`make-shapes --videos 8 --seed 1 --min-frames 16
--max-frames 24`, what `make demo` runs) and 24 more (`make-shapes --videos 24 --seed 3`, 20-40
frames). On each, one
`rvos-ray run --config configs/demo.yaml` (as shipped: five variants; videos already finished by
an earlier run of this bench are reused), then J&F from the run's cached grounding tables (the
sweep's cache trials, no model runs) for

* each variant alone, the first two together (the former two-variant demo) and all five
  (the paper's mean of the variants' s_p);
* the best setting of a grid over the sweep's ensemble and NMS axes (mode, temperature,
  frame stride, P, tracklet-IoU threshold; five variants), **chosen on the 24-video set** and
  applied unchanged to the demo's 8 (held out from that choice).

The last stdout line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _shapes_runs import REPO, make_shapes, run_demo_config  # noqa: E402

GRID = {  # configs/sweeps/ensemble.yaml's axes, all five variants
    "ensemble.mode": ["mean", "logmean"],
    "ensemble.temperature": [1.0, 0.5, 2.0],
    "ensemble.frame_stride": [1, 2],
    "nms.max_tracklets": [10, 5, 3],
    "nms.iou_threshold": [0.5, 0.4],
}


def jf(cache, axes: dict) -> float:
    from rvos_ray.sweep.trial import cache_trial

    return round(100 * cache_trial(cache, axes)["J&F"], 2)


def main() -> None:
    from rvos_ray.sweep.cache import load_cache

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(REPO / "runs" / "bench" / "ensemble_value"))
    a = ap.parse_args()
    root = Path(a.root)
    sets = {"demo8": (8, 1, (16, 24)), "set24": (24, 3, None)}
    caches, out = {}, {}
    for name, (videos, seed, frames) in sets.items():
        data = make_shapes(root / f"shapes{videos}-seed{seed}", videos, seed, frames)
        s = run_demo_config(data, root / f"run-{name}", [], resume=True)
        if s["failed"]:
            sys.exit(f"{name}: {s['failed']} videos failed: {s['failures'][:2]}")
        caches[name] = cache = load_cache(str(root / f"run-{name}"), need_tracklets_all=True)
        variants = [str(v["name"]) for v in cache.cfg["grounding"]["variants"]]  # config order
        row = {f"1:{v}": jf(cache, {"ensemble.variants": [v]}) for v in variants}
        row["1:mean"] = round(sum(row.values()) / len(row), 2)
        row["2:first-two (former demo)"] = jf(cache, {"ensemble.variants": variants[:2]})
        row[f"{len(variants)}:all"] = jf(cache, {"ensemble.variants": variants})
        out[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    grid = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    scored = [(jf(caches["set24"], axes), i) for i, axes in enumerate(grid)]
    best_jf, best_i = max(scored, key=lambda x: (x[0], -x[1]))
    best = grid[best_i]
    out["best_setting"] = {"axes": best, "chosen_on": "set24", "trials": len(grid),
                           "set24": best_jf, "demo8": jf(caches["demo8"], best)}
    print(f"\n{'J&F':28s} {'demo 8':>8s} {'24 videos':>10s}")
    for key in out["demo8"]:
        print(f"{key:28s} {out['demo8'][key]:8.2f} {out['set24'][key]:10.2f}")
    print(f"{'5 + best sweep setting':28s} {out['best_setting']['demo8']:8.2f} {out['best_setting']['set24']:10.2f}"
          f"   ({json.dumps(best)}, chosen on the 24)")
    print(json.dumps({"bench": "ensemble_value", **out}))


if __name__ == "__main__":
    main()
