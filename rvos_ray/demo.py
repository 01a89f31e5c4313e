"""``rvos-ray demo``: the whole paper pipeline on local Ray, on the embedded default.

What it does, in order:

1. writes the synthetic shapes benchmark if it is not there yet (``make-shapes``, seed 1, so its
   valid videos were never seen by the demo models, which trained on seed 0's train split);
2. starts a local Ray bound to 127.0.0.1 (no dashboard unless ``--dashboard``);
3. runs ``configs/demo.yaml`` through the Ray executor: keyframes -> mmdet CondInst ->
   CFBI+ propagation forward and backward -> tracklet-NMS -> two grounder variants (MiniLM text
   encoder) -> ensemble -> submission zip -> per-expression J/F scoring, with the small models
   shipped in ``rvos_ray/assets/demo/`` (``MANIFEST.json``: command, config, seed, sha256);
4. runs the ablation's first row, the image-level baseline of ``configs/ablation/table3.yaml``
   (keyframe candidates only, naive similarity grounding), on the same videos for contrast;
5. prints J, F, J&F, per-stage throughput, both rows, and where the submission, metrics and
   HTML report are. The last stdout line is one JSON object with the figures.

Everything is written under ``--out`` (default ``runs/demo`` in the current directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rvos_ray.demo_models import ASSETS
from rvos_ray.runtime import ray_session

#: the repository this package lives in (the demo's configs are read from its configs/)
REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
ABLATION_CONFIG = REPO / "configs" / "ablation" / "table3.yaml"
#: prefix of asset paths in configs/demo.yaml, rewritten to the installed package's folder
ASSET_PREFIX = "rvos_ray/assets/demo/"
#: seed of the demo's synthetic benchmark; the demo models trained on seed 0's train split
DATA_SEED = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rvos-ray demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEMO_CONFIG), help="pipeline config (default: configs/demo.yaml)")
    p.add_argument("--data", default="data/demo-shapes",
                   help="synthetic benchmark folder, written if absent (default: data/demo-shapes)")
    p.add_argument("--videos", type=int, default=8, help="videos per split of the synthetic benchmark")
    p.add_argument("--frames", type=int, nargs=2, default=(16, 24), metavar=("MIN", "MAX"),
                   help="frames per synthetic video (default 16 24)")
    p.add_argument("--out", default="runs/demo", help="output folder: the run, the baseline run, demo.json")
    p.add_argument("--no-baseline", action="store_true", help="skip the image-level baseline row")
    p.add_argument("--address", default=None, help="an existing Ray cluster instead of a local Ray")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (on 127.0.0.1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo config")
    return p


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def _assets(node: Any, assets: Path) -> Any:
    """Every string starting with ``rvos_ray/assets/demo/`` -> the absolute path in ``assets``."""
    if isinstance(node, dict):
        return {k: _assets(v, assets) for k, v in node.items()}
    if isinstance(node, list):
        return [_assets(v, assets) for v in node]
    if isinstance(node, str) and node.startswith(ASSET_PREFIX):
        return str(assets / node[len(ASSET_PREFIX):])
    return node


def resolved_config(config: str, overrides: list[str], data_root: str, run_dir: str,
                    assets: Path = ASSETS, out_file: str | None = None):
    """The demo config with absolute data / run / asset paths (validated, read-only). With
    ``out_file`` it is also written there as YAML (the ablation row reads its base from a file)."""
    from omegaconf import OmegaConf

    from rvos_ray.config import load_config

    cfg = load_config(config, [f"data.root={os.path.abspath(data_root)}", f"run.dir={os.path.abspath(run_dir)}",
                               *overrides])
    c = _assets(OmegaConf.to_container(cfg, resolve=True), Path(assets))
    missing = sorted({p for p in _paths(c) if p.startswith(str(assets)) and not os.path.isfile(p)})
    if missing:
        from rvos_ray.cli import UserError

        raise UserError(f"demo models missing: {', '.join(missing)} (run `make demo-models`)")
    if out_file:
        os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
        tmp = f"{out_file}.tmp"
        Path(tmp).write_text(OmegaConf.to_yaml(OmegaConf.create(c)))
        os.replace(tmp, out_file)
    return load_config(out_file) if out_file else _validated(c)


def _validated(c: dict):
    from omegaconf import OmegaConf

    from rvos_ray.config import RunConfig

    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), c)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _paths(node: Any):
    if isinstance(node, dict):
        for v in node.values():
            yield from _paths(v)
    elif isinstance(node, list):
        for v in node:
            yield from _paths(v)
    elif isinstance(node, str):
        yield node


def baseline_config(base_file: str, run_dir: str, ablation: str = str(ABLATION_CONFIG)):
    """The ablation's first row (the image-level baseline) applied to the demo config."""
    from rvos_ray.sweep.ablation import load_ablation_config, row_config

    acfg = load_ablation_config(ablation)
    row = acfg.rows[0]
    return str(row.name), row_config(base_file, [], row, os.path.abspath(run_dir), f"{ablation} rows[0]")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def stage_throughput(run_dir: str, video_ids: list[str]) -> dict[str, dict[str, float]]:
    """Per stage: compute seconds, frames, and frames/s of that stage's own compute time,
    summed over the run's done records (what one worker of the stage sustains)."""
    from rvos_ray.runtime.run_dir import RunDir

    rd = RunDir(run_dir)
    seconds: dict[str, float] = {}
    frames: dict[str, int] = {}
    for v in video_ids:
        if not rd.is_done(v):
            continue
        rec = rd.done_record(v)
        for stage, sec in (rec.get("stage_seconds") or {}).items():
            seconds[stage] = seconds.get(stage, 0.0) + float(sec)
            frames[stage] = frames.get(stage, 0) + int(rec.get("frames", 0))
    from rvos_ray.runtime.pipeline import STAGES

    order = [s for s in STAGES if s in seconds] + sorted(set(seconds) - set(STAGES))
    return {s: {"seconds": round(seconds[s], 3), "frames": frames[s],
                "frames_per_s": round(frames[s] / seconds[s], 2) if seconds[s] > 0 else float("inf")}
            for s in order}


def _row(name: str, s: dict[str, Any]) -> dict[str, Any]:
    nan = float("nan")
    return {"name": name, "J&F": float(s.get("J&F", nan)), "J": float(s.get("J", nan)), "F": float(s.get("F", nan)),
            "run_dir": str(s["run_dir"]), "wall_seconds": round(float(s["wall_seconds"]), 1),
            "failed": int(s["failed"])}


def print_report(full: dict[str, Any], baseline: dict[str, Any] | None, stages: dict[str, dict[str, float]],
                 summary: dict[str, Any], wall: float) -> None:
    from rvos_ray.runtime.run_dir import RunDir
    from rvos_ray.sweep.ablation import table_markdown

    rd = RunDir(full["run_dir"])
    print()
    print(f"== rvos-ray demo: {summary['videos']} synthetic valid videos, {summary.get('scored_expressions', 0)} "
          f"expressions, {summary['failed']} failed")
    print(f"   J {full['J']:.4f}   F {full['F']:.4f}   J&F {full['J&F']:.4f}")
    print()
    print("per-stage throughput (frames per second of each stage's own compute time):")
    for stage, st in stages.items():
        print(f"   {stage:<13s} {st['frames_per_s']:>9.2f} f/s   ({st['seconds']:.1f} s for {st['frames']} frames)")
    vps = summary["videos"] / summary["wall_seconds"] if summary["wall_seconds"] else 0.0
    print(f"   pipeline      {vps:.3f} videos/s over {summary['wall_seconds']:.1f} s of wall time "
          f"(model loading {summary.get('timings', {}).get('setup_s', 0.0):.1f} s)")
    print()
    rows = ([baseline] if baseline else []) + [full]  # the ablation's order: baseline first
    print(table_markdown("the ablation's image-level baseline and the demo pipeline (same videos)", rows), end="")
    print()
    print(f"submission:  {rd.submission_zip}")
    print(f"metrics:     {rd.path('metrics.parquet')} (per expression), {rd.path('summary.json')}")
    print(f"report:      {rd.path('report.html')}   (rvos-ray report {rd.uri} rewrites it)")
    if baseline:
        print(f"baseline:    {baseline['run_dir']}")
    print(f"demo wall time: {wall:.1f} s")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Everything :func:`main` does, returning the figures (also written to ``<out>/demo.json``)."""
    t0 = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from rvos_ray.data.synthetic import make_shapes

    made = make_shapes(args.data, videos=int(args.videos), seed=DATA_SEED,
                       min_frames=int(args.frames[0]), max_frames=int(args.frames[1]))
    print(f"synthetic benchmark: {os.path.abspath(args.data)} "
          f"({'present' if made.get('skipped') else 'written'}; {args.videos} videos per split, seed {DATA_SEED})",
          flush=True)
    out = os.path.abspath(args.out)
    cfg_file = os.path.join(out, "demo-config.yaml")
    overrides = list(args.overrides) + (["ray.dashboard=true"] if args.dashboard else [])
    cfg = resolved_config(args.config, overrides, args.data, os.path.join(out, "pipeline"), out_file=cfg_file)

    # Ray reads its loopback and authentication settings when it is first imported: set them
    # before the runtime imports it (a cluster given by --address keeps its own).
    ray_session.prepare(ray_session.target_address(args.address, cfg.ray.address))
    from rvos_ray.runtime.ray_exec import init_ray, run_ray

    started = init_ray(cfg, args.address)
    if args.dashboard and started:
        print("Ray dashboard on 127.0.0.1:8265", flush=True)
    try:
        print("running the pipeline on Ray ...", flush=True)
        summary = run_ray(cfg, address=args.address, progress=not args.no_progress)
        full = _row(f"Demo pipeline (tracklets + NMS + {len(cfg.grounding.variants)}-variant ensemble)", summary)
        baseline = None
        if not args.no_baseline:
            name, bcfg = baseline_config(cfg_file, os.path.join(out, "baseline"))
            print(f"running the ablation's {name!r} row on the same videos ...", flush=True)
            b = run_ray(bcfg, address=args.address, progress=not args.no_progress)
            baseline = _row(name, b)
    finally:
        ray_session.disconnect(started)
    from rvos_ray.runtime.pipeline import load_split

    ids = [w.video_id for w in load_split(cfg).works]
    stages = stage_throughput(full["run_dir"], ids)
    wall = time.time() - t0
    print_report(full, baseline, stages, summary, wall)
    figures = {"J": full["J"], "F": full["F"], "J&F": full["J&F"], "videos": summary["videos"],
               "failed": summary["failed"], "expressions": summary.get("scored_expressions", 0),
               "wall_seconds": round(wall, 1), "pipeline_wall_seconds": full["wall_seconds"],
               "stage_frames_per_s": {s: v["frames_per_s"] for s, v in stages.items()}}
    if baseline:
        figures.update({"baseline_J&F": baseline["J&F"], "baseline_J": baseline["J"], "baseline_F": baseline["F"]})
    tmp = os.path.join(out, "demo.json.tmp")
    Path(tmp).write_text(json.dumps({"figures": figures, "rows": [full] + ([baseline] if baseline else []),
                                     "stages": stages}, indent=1))
    os.replace(tmp, os.path.join(out, "demo.json"))
    return figures


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    figures = run_demo(args)
    print(json.dumps(figures))
    return 0 if figures["failed"] == 0 else 1
