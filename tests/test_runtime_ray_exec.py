"""The Ray executor on a local Ray (127.0.0.1, 4 logical CPUs, the project's custom resources):
same results as the in-process executor, placement by custom resources, a killed propagator,
unreadable frames, and a placement that cannot succeed.

One executor (one set of actors) serves every run of the module, as a long-lived service
would; each run has its own run directory.
"""

import json
import os
import signal

import pyarrow.parquet as pq
import pytest

from _runtime_support import VIDEOS, assert_same_results, copy_data, corrupt_video, make_data, tiny_cfg

ray = pytest.importorskip("ray")

from rvos_ray.runtime import graph  # noqa: E402
from rvos_ray.runtime.local_exec import run_local  # noqa: E402
from rvos_ray.runtime.placement import PlacementError  # noqa: E402
from rvos_ray.runtime.ray_exec import RayExecutor  # noqa: E402
from rvos_ray.runtime.ray_session import LOCAL_ENV  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Every model stage asks for its custom resource; the local Ray declares them.
PINNED = (
    "segmentation.resources.custom={seg: 1}",
    "propagation.resources.custom={prop: 1}",
    "grounding.resources.custom={gnd: 1}",
    "segmentation.resources.num_cpus=0.5",
    "propagation.resources.num_cpus=0.5",
    "grounding.resources.num_cpus=0.5",
    "tasks.resources.num_cpus=0.5",
    "ray.max_videos_in_flight=3",
)


@pytest.fixture(scope="module")
def local_ray():
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    # RAY_AUTH_MODE is left as the process found it: Ray read it at import (unset: a new local
    # Ray uses token auth, Ray's default).
    ray.init(address="local", num_cpus=4, resources={"seg": 2, "prop": 2, "gnd": 8}, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The in-process executor's run: what every Ray run must reproduce."""
    run = tmp_path_factory.mktemp("local") / "run"
    run_local(tiny_cfg(data, run, *PINNED), progress=False)
    return run


@pytest.fixture(scope="module")
def executor(local_ray, data, tmp_path_factory):
    return RayExecutor(tiny_cfg(data, tmp_path_factory.mktemp("unused") / "run", *PINNED))


def test_ray_and_local_give_identical_tables(executor, reference, data, tmp_path):
    run = tmp_path / "run"
    s = executor.run(tiny_cfg(data, run, *PINNED), progress=False)
    assert (s["done"], s["failed"], s["executor"]) == (VIDEOS, 0, "ray")
    assert_same_results(reference, run)
    assert (run / "submission.zip").read_bytes() == (reference / "submission.zip").read_bytes()
    # the shared encoders ran once per frame / expression on Ray too, as in-process
    local = json.loads((reference / "summary.json").read_text())["encoder_passes"]
    assert s["encoder_passes"] == local and local["visual"] and local["text"]


def test_each_actor_runs_where_its_resources_say(executor, data, tmp_path):
    if not executor.placements:
        executor.run(tiny_cfg(data, tmp_path / "run", *PINNED), progress=False)
    want = {"segmentation": "seg", "propagation": "prop", "grounding": "gnd"}
    for stage, resource in want.items():
        placed = executor.placements[stage]
        assert placed, stage
        for p in placed:  # reported by ray.get_runtime_context() inside the actor
            assert p["resources"].get(resource) == 1.0, (stage, p)
            assert p["resources"].get("CPU") == 0.5, (stage, p)
            others = set(want.values()) - {resource}
            assert not others & set(p["resources"]), (stage, p)
    n_models = len(executor.c["segmentation"]["models"])
    # tiny.yaml's two variants share both encoders: one grounding actor holds them both
    n_groups = len(graph.group_names(executor.c))
    assert n_groups == 1 < len(executor.c["grounding"]["variants"])
    assert len(executor.placements["segmentation"]) == n_models
    assert len(executor.placements["grounding"]) == n_groups
    assert len({p["pid"] for ps in executor.placements.values() for p in ps}) == n_models + 1 + n_groups


def test_a_killed_propagator_restarts_and_results_are_identical(executor, reference, data, tmp_path):
    killed = []

    def kill_once(phase, vid):
        # The first video's propagation calls have just been submitted: kill the actor's process.
        if phase == "propagation" and not killed:
            pid = executor.actor_pids("propagation")[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    executor.on_phase = kill_once
    try:
        run = tmp_path / "run"
        s = executor.run(tiny_cfg(data, run, *PINNED), progress=False)
    finally:
        executor.on_phase = lambda phase, vid: None
    assert killed
    assert (s["done"], s["failed"]) == (VIDEOS, 0)
    assert_same_results(reference, run)
    # the actor was restarted in a new process
    new_pid = ray.get(executor.pools[("propagation",)][0].where.remote())["pid"]
    assert new_pid != killed[0]


def test_unreadable_frames_fail_one_video_and_the_rest_is_scored(executor, reference, data, tmp_path):
    bad = copy_data(data, tmp_path / "bad")
    vid = corrupt_video(bad)
    run = tmp_path / "run"
    s = executor.run(tiny_cfg(bad, run, *PINNED), progress=False)
    assert (s["done"], s["failed"]) == (VIDEOS - 1, 1)
    [f] = s["failures"]
    assert (f["video_id"], f["stage"], f["error"]) == (vid, "segmentation", "DataError")
    assert "cannot read frame" in f["message"]
    assert pq.read_table(run / "failures.parquet").column("video_id").to_pylist() == [vid]
    # the worker's traceback is kept, down to the frame reader
    tb = json.loads((run / "failures" / f"{vid}.json").read_text())["traceback"]
    assert "ModelActor.call" in tb and "segment.py\", line" in tb and "read_image" in tb and ", line " in tb and "DataError" in tb
    metrics = pq.read_table(run / "metrics.parquet")
    ref = pq.read_table(reference / "metrics.parquet")
    assert ref.filter(ref.column("video").to_numpy(zero_copy_only=False) != vid).equals(metrics)


# propagation.avoid on, two propagator replicas; CPU-only, beside the module's executor
AVOID = (*(o for o in PINNED if ".resources." not in o), "propagation.resources.replicas=2",
         *(f"{s}.resources.num_cpus=0.25" for s in ("segmentation", "propagation", "grounding", "tasks")),
         "propagation.avoid.duplicate_iou=0.7", "propagation.avoid.covered_iou=0.3",
         "propagation.avoid.feature_cache_frames=16", "data.videos=2")


def test_propagation_work_avoided_gives_identical_tables_on_both_executors(local_ray, reference, data, tmp_path):
    """Covered candidates skipped (keyframes in order: a call waits for the earlier keyframes'
    tables), duplicates merged and frame features kept: Ray's tables equal the in-process ones,
    and with a video's calls on one replica every frame is encoded once per video there too."""
    local = tmp_path / "local"
    ls = run_local(tiny_cfg(data, local, *AVOID), progress=False)
    ex = RayExecutor(tiny_cfg(data, tmp_path / "unused", *AVOID))
    try:
        s = ex.run(tiny_cfg(data, tmp_path / "ray", *AVOID), progress=False)
    finally:
        for actors in ex.pools.values():
            for a in actors:
                ray.kill(a)
    assert (s["done"], s["failed"], ls["done"]) == (2, 0, 2)
    assert_same_results(local, tmp_path / "ray")
    done = {p.parent.name: json.loads(p.read_text()) for p in local.glob("videos/*/done.json")}
    frames = sum(d["frames"] for d in done.values())
    assert s["encoder_passes"] == ls["encoder_passes"]
    assert ls["encoder_passes"]["propagation"]["backbone"] == frames
    off = [json.loads((reference / "videos" / v / "done.json").read_text()) for v in done]
    assert sum(d["encoder_passes"]["propagation"]["backbone"] for d in off) > frames  # off: once per call


def test_a_resource_the_cluster_lacks_is_a_placement_error(local_ray, data, tmp_path):
    cfg = tiny_cfg(data, tmp_path / "run", "grounding.resources.custom={gnd_a100: 1}")
    with pytest.raises(PlacementError) as e:
        RayExecutor(cfg).run(progress=False)
    msg = str(e.value)
    assert "grounding actor" in msg and "gnd_a100=1" in msg
    assert "seg=2" in msg and "prop=2" in msg  # what the cluster has
    assert "ray status" in msg
