"""Ray job: run a split and score it (per-expression J, F, J&F when the split is annotated).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".venv", "runs", "data", ".git"]}' \\
        -- python jobs/evaluate.py --config configs/tiny.yaml run.dir=runs/tiny-eval

Inside a job the driver joins the job's cluster (RAY_ADDRESS); run directly, it starts a local
Ray like `rvos-ray run`. Re-submitting the same job resumes: finished videos are skipped.
"""

from __future__ import annotations

import os
import sys

# `python jobs/evaluate.py` puts jobs/ on sys.path, not the working directory with the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rvos_ray.cli import job_main  # noqa: E402
from rvos_ray.runtime.run_cli import build_parser, exit_code, report, run_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("jobs/evaluate.py", "Run and score a split on Ray (a Ray job entry point).")
    args = parser.parse_intermixed_args(argv)
    summary = run_from_args(args)
    report(summary)
    return exit_code(args, summary)


if __name__ == "__main__":
    sys.exit(job_main("jobs/evaluate.py", main))
