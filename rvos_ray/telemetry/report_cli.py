"""``rvos-ray report RUN_DIR [--out FILE] [--worst N]``: the run's self-contained HTML report.

Per-stage throughput over time, latency distributions, stage time per video, J / F / J&F
distributions, the worst expressions with overlay thumbnails, config and environment. Runs
write it themselves when they finish (``<run>/report.html``); this command rebuilds it, also
for a run that was interrupted.
"""

from __future__ import annotations

import argparse

from rvos_ray.data import io as fio
from rvos_ray.runtime.run_dir import RunDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rvos-ray report", description=(
        "Write a run's self-contained HTML report (per-stage throughput, latency, stage time per video, "
        "J/F/J&F, worst expressions with thumbnails, config, environment)."))
    p.add_argument("run_dir", help="the run directory (local path or URI)")
    p.add_argument("--out", default=None, help="where to write the HTML (default: RUN_DIR/report.html)")
    p.add_argument("--worst", type=int, default=10, help="how many worst expressions to show (default 10)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    rd = RunDir(args.run_dir)
    if not fio.exists(rd.config_path):
        from rvos_ray.cli import UserError

        raise UserError(f"{args.run_dir}: not a run directory (no config.yaml); give the run.dir of a run")
    from rvos_ray.telemetry.report import write_report

    print(write_report(args.run_dir, args.out, args.worst))
    return 0
