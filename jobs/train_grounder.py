"""Ray job: train one grounder variant with Ray Train (pretrain on RefCOCO/+/g, finetune on a
Ref-YouTube-VOS-layout split), as configured in the config's ``train_grounder`` section.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".venv", "runs", "data", ".git"]}' \\
        -- python jobs/train_grounder.py --config configs/paper.yaml --variant r101-bert

Inside a job the driver joins the job's cluster (RAY_ADDRESS); run directly, it starts a local
Ray on 127.0.0.1. Re-submitting resumes: finished phases are skipped, an unfinished one continues
from its latest Ray Train checkpoint.
"""

from __future__ import annotations

import os
import sys

# `python jobs/train_grounder.py` puts jobs/ on sys.path, not the directory with the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rvos_ray.cli import job_main  # noqa: E402
from rvos_ray.training.train_grounder import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/train_grounder.py", main))
