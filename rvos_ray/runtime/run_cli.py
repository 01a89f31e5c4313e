"""``rvos-ray run --config CFG [key=value ...] [--address ADDR] [--executor ray|local]``.

Runs a whole split: tracklets, NMS, grounding, ensemble, submission and (annotated splits)
per-expression metrics, into ``run.dir``. Re-running the same command resumes: finished
videos are skipped. With no ``--address`` (and no ``ray.address`` / ``RAY_ADDRESS``) a local
Ray is started on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from rvos_ray.config import load_config
from rvos_ray.runtime import ray_session


def build_parser(prog: str = "rvos-ray run", description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n\n")[1])
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="OmegaConf dotlist overrides, e.g. run.dir=runs/x data.videos=3")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster (auto, 127.0.0.1:6379, ray://...); default: "
                        "ray.address from the config, else a local Ray on 127.0.0.1")
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default) or local: every stage in this process, no Ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true",
                   help="a video with broken input (a listed frame without its JPEG, a malformed "
                        "expression) stops the run before any video runs (data.strict=true); default: "
                        "that video gets a failure record and the rest of the split runs")
    p.add_argument("--fail-on-error", action="store_true",
                   help="exit with status 1 when any video failed (for CI and `ray job submit`); "
                        "default: 0 once the run finished, failed videos listed in the summary")
    return p


def run_from_args(args: argparse.Namespace, forced_overrides: list[str] | None = None) -> dict[str, Any]:
    """Load the config (``forced_overrides`` applied after the user's) and run it."""
    extra = ["data.strict=true"] if getattr(args, "strict", False) else []
    cfg = load_config(args.config, [*args.overrides, *extra, *(forced_overrides or [])])
    if args.executor == "local":
        from rvos_ray.runtime.local_exec import run_local

        return run_local(cfg, progress=not args.no_progress)
    # before Ray is imported: loopback and token authentication for a local Ray
    ray_session.prepare(ray_session.target_address(args.address, cfg.ray.address))
    from rvos_ray.runtime.ray_exec import run_ray

    return run_ray(cfg, address=args.address, progress=not args.no_progress)


def report(summary: dict[str, Any]) -> None:
    """Figures for people on stdout; the last line is the summary's numbers as JSON."""
    line = (f"{summary['videos']} videos: {summary['done']} done, {summary['skipped']} skipped "
            f"(finished earlier), {summary['failed']} failed; {summary['wall_seconds']:.1f}s")
    if "J&F" in summary:
        line += f"; J&F {summary['J&F']:.4f} (J {summary['J']:.4f}, F {summary['F']:.4f}) over " \
                f"{summary['scored_expressions']} expressions"
    print(line)
    for f in summary["failures"]:
        print(f"  failed {f['video_id']} in {f['stage']}: {f['error']}: {f['message'].splitlines()[0][:200]}")
    if summary["failures"]:
        print(f"  tracebacks: {summary['run_dir']}/failures/<video>.json and failures.parquet")
    print(f"run directory: {summary['run_dir']}")
    keys = ("videos", "done", "skipped", "failed", "wall_seconds", "J", "F", "J&F")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))


def exit_code(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    return 1 if args.fail_on_error and summary["failed"] else 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    summary = run_from_args(args)
    report(summary)
    return exit_code(args, summary)
