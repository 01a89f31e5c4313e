"""Placement checks: an impossible request fails at once, naming the request and the cluster."""

import pytest

from rvos_ray.runtime.placement import ActorRequest, NodeResources, PlacementError, check_feasible
from rvos_ray.types import Resources

# What ray.nodes() returns, trimmed to the fields placement reads.
NODES = [
    {"Alive": True, "NodeID": "aaaa1111", "NodeManagerAddress": "10.0.0.1",
     "Resources": {"CPU": 8.0, "GPU": 1.0, "seg": 1.0, "memory": 1e9, "node:10.0.0.1": 1.0,
                   "accelerator_type:A10G": 1.0}},
    {"Alive": True, "NodeID": "bbbb2222", "NodeManagerAddress": "10.0.0.2",
     "Resources": {"CPU": 8.0, "GPU": 2.0, "prop": 2.0}},
    {"Alive": False, "NodeID": "dead", "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 64.0, "gnd": 8.0}},
]


def nodes():
    return NodeResources.from_ray_nodes(NODES)


def test_internal_keys_and_dead_nodes_are_dropped():
    ns = nodes()
    assert [n.address for n in ns] == ["10.0.0.1", "10.0.0.2"]
    assert ns[0].total == {"CPU": 8.0, "GPU": 1.0, "seg": 1.0}


def test_feasible_requests_pass():
    reqs = [ActorRequest.of("segmentation", "htc", Resources(num_cpus=2, num_gpus=1, custom={"seg": 1})),
            ActorRequest.of("propagation", "propagator", Resources(num_cpus=1, num_gpus=1, custom={"prop": 1})),
            ActorRequest.of("propagation", "propagator", Resources(num_cpus=1, num_gpus=1, custom={"prop": 1}))]
    check_feasible(reqs, nodes())


def test_resource_no_node_has_names_request_cluster_and_ray_status():
    reqs = [ActorRequest.of("grounding", "resnet-bert", Resources(num_cpus=1, num_gpus=1, custom={"gnd": 1}))]
    with pytest.raises(PlacementError) as e:
        check_feasible(reqs, nodes())
    msg = str(e.value)
    assert "no node can host grounding actor 'resnet-bert' (CPU=1, GPU=1, gnd=1)" in msg
    assert "node 10.0.0.1 (aaaa1111): CPU=8, GPU=1, seg=1" in msg
    assert "node 10.0.0.2 (bbbb2222): CPU=8, GPU=2, prop=2" in msg
    assert "`ray status`" in msg


def test_totals_beyond_the_cluster_are_refused():
    # each fits a node alone, but three propagators need prop=3 and the cluster has 2
    reqs = [ActorRequest.of("propagation", "propagator", Resources(num_cpus=1, custom={"prop": 1}))] * 3
    with pytest.raises(PlacementError, match="prop: 3 requested, 2 in the cluster"):
        check_feasible(reqs, nodes())


def test_gpu_requested_where_there_is_none():
    reqs = [ActorRequest.of("segmentation", "htc", Resources(num_cpus=1, num_gpus=1))]
    with pytest.raises(PlacementError, match=r"segmentation actor 'htc' \(CPU=1, GPU=1\)"):
        check_feasible(reqs, [NodeResources("n", "127.0.0.1", {"CPU": 4.0})])


def test_no_nodes():
    with pytest.raises(PlacementError, match="no alive nodes"):
        check_feasible([ActorRequest("tasks", "x", 1, 0)], [])
