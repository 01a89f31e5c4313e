"""Ray Train's torch backend with the process group kept on loopback when all workers share a node.

Ray Train's own setup (``TorchConfig``, ``init_method`` "env" or "tcp") meets in a
``torch.distributed`` TCPStore that rank 0 opens on *every* interface (its server binds the
wildcard address whatever ``MASTER_ADDR`` says), and gloo's data sockets bind the address the
host name resolves to. On a single node neither is needed: here the ranks meet through a file
(``init_method="file://..."``, torch's FileStore, in the node's temp directory) and gloo / NCCL
talk over ``lo`` (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``), so training on a local Ray
opens no port beyond 127.0.0.1. Workers spread over several nodes keep Ray Train's TCP
rendezvous: a multi-node run is a cluster configuration's decision, on its network.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchConfig

__all__ = ["LoopbackTorchConfig"]


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _join(backend: str, rank: int, world: int, name: str, timeout_s: float) -> None:
    """Runs in each worker: loopback sockets, then the process group through the file."""
    import torch.distributed as dist

    ctx = ray.train.get_context()  # torch's usual variables, as Ray Train's own setup sets them
    os.environ.update(LOCAL_RANK=str(ctx.get_local_rank()), LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
                      NODE_RANK=str(ctx.get_node_rank()), RANK=str(rank), WORLD_SIZE=str(world),
                      GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
    path = os.path.join(tempfile.gettempdir(), name)  # the same path on every worker of the node
    dist.init_process_group(backend=backend, init_method=f"file://{path}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))


class _LoopbackTorchBackend(TorchConfig().backend_cls):  # Ray Train's torch backend, public path
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        if len(set(worker_group.execute(_node_id))) > 1:
            super().on_start(worker_group, backend_config)  # workers on several nodes: Ray Train's TCP
            return
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus else "gloo")
        name = f"rvos-ray-ddp-{uuid.uuid4().hex}"
        world = len(worker_group)
        ray.get([worker_group.execute_single_async(i, _join, backend, i, world, name, backend_config.timeout_s)
                 for i in range(world)])


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """:class:`ray.train.torch.TorchConfig` whose single-node process group stays on loopback."""

    @property
    def backend_cls(self) -> type:
        return _LoopbackTorchBackend
