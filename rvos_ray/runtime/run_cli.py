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
import os
import sys
from typing import Any

from rvos_ray.config import load_config


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
    return p


#: RAY_AUTH_MODE for the local Ray a run starts (unless the user set one). Its ports listen on
#: 127.0.0.1 only, but any user of this machine could still connect and run code as you; token
#: authentication closes that (the token is ~/.ray/auth_token, created on first use and read by
#: `ray job submit` and the dashboard too). Ray reads the mode when it is imported, so it is set
#: here, before that. A cluster we join (--address, ray.address, RAY_ADDRESS) keeps its own mode.
LOCAL_AUTH_MODE = "token"


def run_from_args(args: argparse.Namespace, forced_overrides: list[str] | None = None) -> dict[str, Any]:
    """Load the config (``forced_overrides`` applied after the user's) and run it."""
    cfg = load_config(args.config, [*args.overrides, *(forced_overrides or [])])
    if args.executor == "local":
        from rvos_ray.runtime.local_exec import run_local

        return run_local(cfg, progress=not args.no_progress)
    joins = args.address or str(cfg.ray.address or "") or os.environ.get("RAY_ADDRESS")
    if not joins:
        os.environ.setdefault("RAY_AUTH_MODE", LOCAL_AUTH_MODE)
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
    print(f"run directory: {summary['run_dir']}")
    keys = ("videos", "done", "skipped", "failed", "wall_seconds", "J", "F", "J&F")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    report(run_from_args(args))
    return 0
