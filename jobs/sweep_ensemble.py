"""Ray job: sweep ensemble / tracklet-NMS settings over a finished run's cache.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".venv", "data", ".git"]}' \\
        -- python jobs/sweep_ensemble.py --run runs/tiny --config configs/sweeps/ensemble.yaml

Inside a job the driver joins the job's cluster (RAY_ADDRESS) and the trials run as CPU tasks
there; run directly, it starts a local Ray on 127.0.0.1 like `rvos-ray sweep`. The run
directory must be readable from the cluster (a shared path or a pyarrow.fs URI).
"""

from __future__ import annotations

import os
import sys

# `python jobs/sweep_ensemble.py` puts jobs/ on sys.path, not the working directory with the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rvos_ray.cli import job_main  # noqa: E402
from rvos_ray.sweep.sweep_cli import build_parser, report, sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = build_parser("jobs/sweep_ensemble.py").parse_intermixed_args(argv)
    report(sweep(args))
    return 0


if __name__ == "__main__":
    sys.exit(job_main("jobs/sweep_ensemble.py", main))
