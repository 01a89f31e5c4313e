"""Ray job: train the CFBI+ propagator on a cluster node (one GPU by default).

Submit from anywhere that reaches the cluster (the data root and work dir must be visible to the
worker, e.g. shared storage or s3:// URIs)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train_propagator.py --config configs/propagator/paper.yaml \\
        data.root=/data/youtube-vos work_dir=/shared/runs/propagator/cfbi_r101

The training is :func:`rvos_ray.training.train_propagator.train` (what ``rvos-ray
train-propagator`` runs); this entry point only places it: one Ray task holding ``--num-gpus``
GPUs and ``--num-cpus`` CPUs, retried once if its node dies. A retry resumes from the work dir's
``last.pt``, so a lost node costs at most ``checkpoint_every`` steps.
"""

from __future__ import annotations

import argparse
import os
import sys


def _train(argv: list[str]) -> int:
    from rvos_ray.training.train_propagator import main

    return main(argv)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"), help="Ray cluster address")
    p.add_argument("--num-gpus", type=float, default=1.0)
    p.add_argument("--num-cpus", type=float, default=4.0)
    args, rest = p.parse_known_args()
    if "--config" not in rest:
        p.error("pass the train-propagator options: --config FILE [key=value ...]")

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rvos_ray.runtime import ray_session

    ray_session.connect(args.address)  # joins the cluster (default: RAY_ADDRESS, else "auto")
    import ray

    task = ray.remote(num_gpus=args.num_gpus, num_cpus=args.num_cpus, max_retries=1)(_train)
    return int(ray.get(task.remote(rest)))


if __name__ == "__main__":
    sys.exit(main())
