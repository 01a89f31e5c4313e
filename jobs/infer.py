"""Ray job: run a split and write its submission only (no scoring), e.g. for a test server.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".venv", "runs", "data", ".git"]}' \\
        -- python jobs/infer.py --config configs/paper.yaml data.split=valid run.dir=s3://bucket/runs/x

Writes ``<run.dir>/submission/Annotations/<vid>/<exp_id>/<frame>.png`` and ``submission.zip``
(in the benchmark's layout: ``Annotations/`` at the zip root; MeViS: the video folders), plus the tracklet/grounding cache and the
prediction table. Re-submitting resumes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rvos_ray.cli import job_main  # noqa: E402
from rvos_ray.runtime.run_cli import build_parser, exit_code, report, run_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("jobs/infer.py", "Write a split's submission on Ray (a Ray job entry point).")
    args = parser.parse_intermixed_args(argv)
    # Submission only: never score, even where annotations exist; always zip.
    summary = run_from_args(args, forced_overrides=["run.score=false", "run.submission_zip=true"])
    report(summary)
    return exit_code(args, summary)


if __name__ == "__main__":
    sys.exit(job_main("jobs/infer.py", main))
