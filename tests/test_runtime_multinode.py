"""The Ray executor on several Ray nodes (ray.cluster_utils.Cluster: every node on 127.0.0.1).

- A head declaring {seg: 2, gnd: 2} with 4 CPUs and two workers declaring {prop: 2} with 3 CPUs
  each, the stages pinned by custom resources: the actors land where their resources say (seen
  from inside the actors), the head's CPUs are all held by actors (the writer, pinned to the
  driver's node for a local run directory, used to wait there forever), and the tables equal
  the in-process executor's.
- A propagation node removed while its actor is inside ``propagate``, a spare node able to host
  it: every video finishes, with the clean run's predictions.
- The only node able to host the propagator removed: failure records within the stall timeout,
  never a hang; and a task no node can place fails the run's videos with a report naming it.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from _runtime_support import VIDEOS, assert_same_results, make_data, tiny_cfg, write_test_config

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from rvos_ray.data.synthetic import make_shapes  # noqa: E402
from rvos_ray.runtime.local_exec import run_local  # noqa: E402
from rvos_ray.runtime.ray_exec import RayExecutor  # noqa: E402
from rvos_ray.runtime.ray_session import LOCAL_ENV  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.multinode]

PINNED = (
    "segmentation.resources.custom={seg: 1}",
    "propagation.resources.custom={prop: 1}",
    "propagation.resources.replicas=2",
    "grounding.resources.custom={gnd: 1}",
    "ray.max_videos_in_flight=3",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_test_config(tmp_path_factory.mktemp("config") / "tiny.yaml")  # 2 segmenters, 2 grounders


@pytest.fixture(scope="module")
def reference(data, config, tmp_path_factory):
    run = tmp_path_factory.mktemp("local") / "run"
    run_local(tiny_cfg(data, run, *PINNED, config=config), progress=False)
    return run


class _Nodes:
    """A Cluster on 127.0.0.1 with this process connected as its driver."""

    def __init__(self, head: dict, workers: list[dict]) -> None:
        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)
        self.cluster = Cluster(initialize_head=True, head_node_args={**head, "include_dashboard": False})
        self.workers = [self.cluster.add_node(**w) for w in workers]
        ray.init(address=self.cluster.address, log_to_driver=False)
        self.cluster.wait_for_nodes()
        self.head_id = self.cluster.head_node.node_id

    def node_of(self, node_id: str):
        return next(n for n in self.workers if n.node_id == node_id)

    def close(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


def test_actors_land_where_their_resources_say_and_tables_equal_in_process(data, config, reference, tmp_path):
    nodes = _Nodes({"num_cpus": 4, "resources": {"seg": 2, "gnd": 2}},
                   [{"num_cpus": 3, "resources": {"prop": 2}}, {"num_cpus": 3, "resources": {"prop": 2}}])
    try:
        run = tmp_path / "run"
        ex = RayExecutor(tiny_cfg(data, run, *PINNED, config=config))
        s = ex.run(progress=False)
        assert (s["done"], s["failed"]) == (VIDEOS, 0), s["failures"]
        workers = {n.node_id for n in nodes.workers}
        # placements are what each actor reported from inside itself (node id, assigned resources)
        for p in ex.placements["segmentation"] + ex.placements["grounding"]:
            assert p["node_id"] == nodes.head_id, p
        for p in ex.placements["propagation"]:
            assert p["node_id"] in workers and p["resources"].get("prop") == 1.0, p
        assert_same_results(reference, run)
        # summary.json says where the work ran
        per_node = json.loads((run / "summary.json").read_text())["nodes"]
        assert set(per_node) >= {nodes.head_id} and set(per_node) & workers
        prop_nodes = {n for n, d in per_node.items() if "propagation" in d["stages"]}
        assert prop_nodes <= workers and prop_nodes
        assert per_node[nodes.head_id]["stages"].get("writer", {}).get("calls") == VIDEOS
        html = (run / "report.html").read_text()
        assert 'id="nodes-table"' in html and all(n[:12] in html for n in per_node)
    finally:
        nodes.close()


@pytest.fixture(scope="module")
def longer(tmp_path_factory):
    """Videos of 20-24 frames: a propagation call lasts seconds, so a node removed right after
    a video's calls were sent takes a call in progress with it."""
    root = tmp_path_factory.mktemp("longer")
    make_shapes(str(root), videos=VIDEOS, seed=1, height=64, width=96, min_frames=20, max_frames=24)
    return root


def test_a_propagation_node_lost_mid_run_is_survived(longer, config, tmp_path):
    reference = tmp_path / "reference"
    run_local(tiny_cfg(longer, reference, *PINNED, config=config), progress=False)
    nodes = _Nodes({"num_cpus": 6, "resources": {"seg": 2, "gnd": 2}},
                   [{"num_cpus": 2, "resources": {"prop": 1}} for _ in range(3)])
    try:
        run = tmp_path / "run"
        ex = RayExecutor(tiny_cfg(longer, run, *PINNED, "ray.stall_timeout_s=300", config=config))
        removed = []

        def on_phase(phase: str, vid: str) -> None:
            # the first video entering propagation: its calls were just sent to the actors;
            # the first propagator's node goes while that actor is inside `propagate`
            if phase == "propagation" and not removed:
                removed.append((ex.placements["propagation"][0]["node_id"], time.time() + 0.5))
                threading.Timer(0.5, nodes.cluster.remove_node, args=(nodes.node_of(removed[0][0]),)).start()

        ex.on_phase = on_phase
        s = ex.run(progress=False)
        assert removed
        lost, at = removed[0]
        assert (s["done"], s["failed"]) == (VIDEOS, 0), s["failures"]
        assert not (run / "failures").exists() or not list((run / "failures").glob("*.json"))
        assert_same_results(reference, run)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert lost not in alive
        # the lost actor was restarted on the spare node and did propagation work after the loss
        moved = ray.get(ex.pools[("propagation",)][0].where.remote())["node_id"]
        assert moved != lost and moved in alive
        events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
        assert any(e.get("stage") == "propagation" and e.get("node") == moved and e["start"] > at for e in events)
    finally:
        nodes.close()


def test_the_only_node_for_a_stage_lost_gives_failure_records_not_a_hang(data, config, tmp_path):
    nodes = _Nodes({"num_cpus": 6, "resources": {"seg": 2, "gnd": 2}}, [{"num_cpus": 2, "resources": {"prop": 1}}])
    try:
        run = tmp_path / "run"
        cfg = tiny_cfg(data, run, *PINNED, "propagation.resources.replicas=1", "ray.stall_timeout_s=40", config=config)
        ex = RayExecutor(cfg)
        removed = []

        def on_phase(phase: str, vid: str) -> None:
            if phase == "propagation" and not removed:
                removed.append(True)
                threading.Timer(0.5, nodes.cluster.remove_node, args=(nodes.workers[0],)).start()

        ex.on_phase = on_phase
        s = ex.run(progress=False)
        assert removed
        assert s["failed"] >= 1 and s["done"] + s["failed"] == VIDEOS
        for f in s["failures"]:
            assert f["stage"] in ("propagation", "nms", "not started"), f
            assert "StallError" in f["error"] or "Actor" in f["error"], f
        record = json.loads((run / "failures" / f"{s['failures'][0]['video_id']}.json").read_text())
        assert record["traceback"]
    finally:
        nodes.close()


def test_a_task_no_node_can_place_fails_with_a_report_of_what_is_pending(data, tmp_path):
    """The CPU tasks ask for a resource no node has (the up-front check is off, as on an
    autoscaling cluster that never grows): the run ends within ray.stall_timeout_s."""
    config = write_test_config(tmp_path / "tiny-1x1.yaml", models=1, variants=1)
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        cfg = tiny_cfg(data, tmp_path / "run", "ray.autoscaling=true", "tasks.resources.custom={nowhere: 1}",
                       "ray.stall_timeout_s=20", config=config)
        s = RayExecutor(cfg).run(progress=False)
    finally:
        ray.shutdown()
    assert (s["done"], s["failed"]) == (0, VIDEOS)
    f = s["failures"][0]
    assert f["error"] == "StallError"
    for word in ("no call finished", "pooling all (waits for", "nowhere=1", "nodes (free / total)", "CPU="):
        assert word in f["message"] or word in json.loads(
            (tmp_path / "run" / "failures" / f"{f['video_id']}.json").read_text())["traceback"], word
