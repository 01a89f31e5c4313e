"""Ray job: finetune the CondInst segmenter on a cluster node with a GPU.

Submit from anywhere that reaches the cluster (the data root and work dir must be visible to the
worker, e.g. shared storage)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/finetune_segmenter.py --config configs/segmenter/condinst_r50_rvos.py \\
        --data-root /data/ref-youtube-vos --work-dir /shared/runs/segmenter/condinst_r50_rvos \\
        --num-gpus 1

The training itself is :func:`rvos_ray.training.finetune_segmenter.finetune` (mmdet's own loop);
this entry point only places it: one Ray task holding ``--num-gpus`` GPUs and ``--num-cpus``
CPUs (dataloader workers), retried once if its node dies. Every other option is passed through
to ``rvos-ray finetune-segmenter``.
"""

from __future__ import annotations

import argparse
import os
import sys


def _train(argv: list[str]) -> int:
    from rvos_ray.training.finetune_segmenter import main

    return main(argv)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"), help="Ray cluster address")
    p.add_argument("--num-gpus", type=float, default=1.0)
    p.add_argument("--num-cpus", type=float, default=4.0)
    args, rest = p.parse_known_args()
    if not rest:
        p.error("pass the finetune-segmenter options (--config, --data-root, --work-dir, ...)")

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rvos_ray.runtime import ray_session

    ray_session.connect(args.address)  # joins the cluster (default: RAY_ADDRESS, else "auto")
    import ray

    task = ray.remote(num_gpus=args.num_gpus, num_cpus=args.num_cpus, max_retries=1)(_train)
    code = ray.get(task.remote(rest))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
