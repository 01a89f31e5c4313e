"""Placement of the model actors: what each asks for, whether the cluster can hold it, and an
error that says both when it cannot.

Ray itself never fails an infeasible actor: it waits (forever, on a fixed cluster) and logs a
warning on the driver. So the executor checks every request against the nodes before creating
actors (:func:`check_feasible`), and bounds the wait for them to start (:class:`PlacementError`
from the caller after ``ray.placement_timeout_s``). Pure Python: the executor passes in
``ray.nodes()`` so this module stays testable without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rvos_ray.types import Resources


class PlacementError(RuntimeError):
    """The cluster cannot (or did not in time) place the actors the config asks for."""


@dataclass(frozen=True)
class ActorRequest:
    """One actor the run needs: who it is and the resources one replica asks for."""

    stage: str  # segmentation / propagation / grounding
    name: str  # model or variant name
    num_cpus: float
    num_gpus: float
    custom: Mapping[str, float] = field(default_factory=dict)

    @staticmethod
    def of(stage: str, name: str, res: Resources) -> ActorRequest:
        return ActorRequest(stage, name, res.num_cpus, res.num_gpus, dict(res.custom))

    def as_dict(self) -> dict[str, float]:
        d = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.custom}
        return {k: v for k, v in d.items() if v}

    def describe(self) -> str:
        want = ", ".join(f"{k}={_num(v)}" for k, v in self.as_dict().items()) or "nothing"
        return f"{self.stage} actor {self.name!r} ({want})"


@dataclass(frozen=True)
class NodeResources:
    node_id: str
    address: str
    total: Mapping[str, float]

    @staticmethod
    def from_ray_nodes(nodes: Sequence[Mapping]) -> list[NodeResources]:
        """From ``ray.nodes()``: alive nodes only, Ray's internal per-node keys dropped."""
        out = []
        for n in nodes:
            if not n.get("Alive", False):
                continue
            total = {
                k: float(v)
                for k, v in n.get("Resources", {}).items()
                if not k.startswith("node:") and k not in ("memory", "object_store_memory")
                and not k.startswith("accelerator_type:")
            }
            out.append(NodeResources(n.get("NodeID", "?"), n.get("NodeManagerAddress", "?"), total))
        return out

    def fits(self, want: Mapping[str, float]) -> bool:
        return all(self.total.get(k, 0.0) + 1e-9 >= v for k, v in want.items())

    def describe(self) -> str:
        have = ", ".join(f"{k}={_num(v)}" for k, v in sorted(self.total.items()))
        return f"node {self.address} ({self.node_id[:8]}): {have or 'no resources'}"


def requests_of(c: Mapping) -> list[ActorRequest]:
    """Every actor replica a run of the config ``c`` (a plain dict) needs (one per replica of
    each stage with models), plus one slot for the tasks of the other stages (pooling, NMS,
    ensemble, writer), which ask for the ``tasks`` section's."""
    from rvos_ray.runtime.graph import stages_of

    out = [ActorRequest.of(s.stage, s.name or s.stage, s.resources) for s in stages_of(c).values() if s.has_models
           for _ in range(s.resources.replicas)]
    out.append(ActorRequest.of("tasks", "pooling/nms/ensemble/writer", Resources.of(c["tasks"])))
    return out


def local_node_size(requests: Sequence[ActorRequest], cpu_count: int) -> tuple[int, dict[str, float]]:
    """(logical CPUs, custom resources) a local Ray declares so that every request fits: at
    least the machine's cores, more when the actors and the task slot together ask for more
    (logical CPUs are scheduling slots: the models' threads are capped to their actor's share),
    and each custom resource the requests name, summed."""
    cpus = sum(r.num_cpus for r in requests)
    custom: dict[str, float] = {}
    for r in requests:
        for k, v in r.custom.items():
            custom[k] = custom.get(k, 0.0) + float(v)
    return max(int(cpu_count), int(-(-cpus // 1))), custom


def check_feasible(requests: Sequence[ActorRequest], nodes: Sequence[NodeResources]) -> None:
    """Raise :class:`PlacementError` if some actor fits on no node at all, or if the actors
    together need more of a resource than the whole cluster has. (A packing that fits the
    totals may still not fit node by node; the executor's start timeout covers that case.)"""
    if not nodes:
        raise PlacementError(explain("the cluster has no alive nodes", requests, nodes))
    unplaceable = [r for r in requests if not any(n.fits(r.as_dict()) for n in nodes)]
    if unplaceable:
        what = "; ".join(r.describe() for r in unplaceable)
        raise PlacementError(explain(f"no node can host {what}", requests, nodes))
    need: dict[str, float] = {}
    for r in requests:
        for k, v in r.as_dict().items():
            need[k] = need.get(k, 0.0) + v
    have: dict[str, float] = {}
    for n in nodes:
        for k, v in n.total.items():
            have[k] = have.get(k, 0.0) + v
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}
    if short:
        what = ", ".join(f"{k}: {_num(a)} requested, {_num(b)} in the cluster" for k, (a, b) in short.items())
        raise PlacementError(explain(f"the actors together need more than the cluster has ({what})",
                                     requests, nodes))


def explain(reason: str, requests: Sequence[ActorRequest], nodes: Sequence[NodeResources]) -> str:
    """The full placement message: the reason, every request, every node, what to do."""
    lines = [f"cannot place the model actors: {reason}.", "requested (per replica):"]
    lines += [f"  {r.describe()}" for r in requests]
    lines.append("the cluster has:")
    lines += [f"  {n.describe()}" for n in nodes] or ["  (no alive nodes)"]
    lines.append(
        "Run `ray status` to see the cluster's resources and pending demands; lower the stages' "
        "`resources:` (num_cpus, num_gpus, custom, replicas) or start nodes that declare them "
        "(e.g. `ray start --resources='{\"seg\": 1}'`, see cluster/start_local.sh)."
    )
    return "\n".join(lines)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
