"""Propagation work avoided (``propagation.avoid``), measured on the demo's pipeline.

    .venv/bin/python bench/propagate_work.py [--videos 24] [--seed 3]

`rvos-ray make-shapes --videos 24 --seed 3` writes the set; each setting below is one
`rvos-ray run --config configs/demo.yaml` on its valid split (the demo's shipped models: CondInst,
the small CFBI+, the five-variant grounder ensemble; local Ray, two propagator replicas), from
scratch, one after another in this process's run:

    off        the paper: every keyframe candidate propagated through the whole video
    dedup      same-keyframe duplicate candidates merged (mask IoU > 0.7)
    covered    candidates an earlier keyframe's tracklet covers at their frame (mask IoU > 0.5)
               not propagated
    both       dedup + covered
    both+cache both, and each propagator keeps the backbone features of a video's frames for
               its later calls (``feature_cache_frames``; a video's calls share a replica)

Per setting: propagated candidate-frames (rows of the runs' tracklets_all tables), CFBI+
backbone passes (``encoder_passes.propagation.backbone``), propagation seconds (the stage's
compute, summed over calls), the run's wall time, tracklets kept and J&F; and each one's
reduction vs ``off``. The last stdout line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _shapes_runs import REPO, make_shapes, propagated_frames, run_demo_config  # noqa: E402

SETTINGS = {
    "off": [],
    "dedup": ["propagation.avoid.duplicate_iou=0.7"],
    "covered": ["propagation.avoid.covered_iou=0.5"],
    "both": ["propagation.avoid.duplicate_iou=0.7", "propagation.avoid.covered_iou=0.5"],
    "both+cache": ["propagation.avoid.duplicate_iou=0.7", "propagation.avoid.covered_iou=0.5",
                   "propagation.avoid.feature_cache_frames=64"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--root", default=str(REPO / "runs" / "bench" / "propagate_work"))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    a = ap.parse_args()
    root = Path(a.root)
    data = make_shapes(root / f"shapes{a.videos}-seed{a.seed}", a.videos, a.seed)
    rows: dict[str, dict] = {}
    for name in a.settings:
        run_dir = root / "runs" / name
        s = run_demo_config(data, run_dir, SETTINGS[name])
        if s["failed"]:
            sys.exit(f"{name}: {s['failed']} videos failed: {s['failures'][:2]}")
        rows[name] = {
            "candidate_frames": propagated_frames(run_dir),
            "backbone_passes": int(s["encoder_passes"].get("propagation", {}).get("backbone", 0)),
            "propagation_s": round(float(s["stage_seconds"]["propagation"]), 1),
            "wall_s": round(float(s["bench_wall_s"]), 1),
            "J&F": round(100 * float(s["J&F"]), 2),
            "videos": s["done"], "expressions": s["expressions"],
        }
        print(f"{name:11s} {json.dumps(rows[name])}", flush=True)
    base = rows.get("off")
    print(f"\n{'setting':11s} {'cand-frames':>12s} {'backbone':>9s} {'prop s':>8s} {'x less':>7s} "
          f"{'wall s':>7s} {'J&F':>6s} {'dJ&F':>6s}")
    for name, r in rows.items():
        if base:
            r["propagation_x_less"] = round(base["propagation_s"] / max(r["propagation_s"], 1e-9), 2)
            r["candidate_frames_x_less"] = round(base["candidate_frames"] / max(r["candidate_frames"], 1), 2)
            r["dJ&F"] = round(r["J&F"] - base["J&F"], 2)
        print(f"{name:11s} {r['candidate_frames']:12d} {r['backbone_passes']:9d} {r['propagation_s']:8.1f} "
              f"{r.get('propagation_x_less', float('nan')):7.2f} {r['wall_s']:7.1f} {r['J&F']:6.2f} "
              f"{r.get('dJ&F', float('nan')):+6.2f}")
    print(json.dumps({"bench": "propagate_work", "videos": a.videos, "seed": a.seed, "settings": rows}))


if __name__ == "__main__":
    main()
