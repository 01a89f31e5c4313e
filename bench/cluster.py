"""The Ray executor on a local 3-node cluster against one node, same work, same machine.

    .venv/bin/python bench/cluster.py [--videos 6] [--frames 8 10]

Both runs use configs/tiny.yaml with the stages pinned by custom resources (segmentation
{seg: 1}, propagation {prop: 1} x 2 replicas, grounding {gnd: 1}):

- ``one_node``: one Ray node declaring every resource;
- ``three_nodes``: ``ray.cluster_utils.Cluster`` on 127.0.0.1, a head {seg: 2, gnd: 2} with 4
  CPUs (the driver, the segmenters and grounders) and two workers {prop: 2} with 3 CPUs each.

Figures per run: videos/s over the executor's loop (models loaded before), each stage's busy
fraction (the share of the loop during which at least one call of the stage computed), and the
time lost waiting on the driver: per video, from the end of its pooling call (the counts the
driver needs) to the moment the driver had submitted its propagation calls (its ``fan_out``
event), summed; and, apart, the time those calls then queued for a free propagator. All nodes share this machine's 2 cores, so three nodes cannot be faster
than one here: the figure shows what the extra processes and object transfers cost, and the
bench says what limited the speed-up. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rvos_ray.runtime import ray_session  # noqa: E402

ray_session.prepare("")  # a local Ray on loopback with token auth, set before Ray is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

PINNED = ["segmentation.resources.custom={seg: 1}", "propagation.resources.custom={prop: 1}",
          "propagation.resources.replicas=2", "grounding.resources.custom={gnd: 1}", "ray.max_videos_in_flight=3"]


def _union(intervals: list[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for a, b in sorted(intervals):
        if cur_e is None or a > cur_e:
            total += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    return total + (0.0 if cur_e is None else cur_e - cur_s)


def figures(name: str, s: dict, run: Path) -> dict:
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x]
    calls = [e for e in events if e.get("stage") != "driver" and "end" in e]
    loop = s["timings"]["loop_s"]
    out = {f"{name}_videos_per_s": s["done"] / loop, f"{name}_loop_s": loop}
    for stage in sorted({e["stage"] for e in calls}):
        out[f"{name}_busy_{stage}"] = _union([(e["start"], e["end"]) for e in calls if e["stage"] == stage]) / loop
    lost, queued = 0.0, 0.0
    fan_out = {e["video_id"]: e["time"] for e in events if e.get("item") == "fan_out"}
    for vid in {e["video_id"] for e in calls}:
        pool = [e["end"] for e in calls if e["video_id"] == vid and e["stage"] == "pooling"]
        prop = [e["start"] for e in calls if e["video_id"] == vid and e["stage"] == "propagation"]
        if pool and vid in fan_out:
            lost += max(0.0, fan_out[vid] - max(pool))  # the driver fetching counts and submitting
        if prop and vid in fan_out:
            queued += max(0.0, min(prop) - fan_out[vid])  # the calls waiting for a free propagator
    out[f"{name}_driver_wait_s"] = lost
    out[f"{name}_propagation_queue_s"] = queued
    out[f"{name}_nodes"] = len(s.get("nodes", {}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--frames", type=int, nargs=2, default=(8, 10), metavar=("MIN", "MAX"))
    a = ap.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from rvos_ray.config import load_config
    from rvos_ray.data.synthetic import make_shapes
    from rvos_ray.runtime.ray_exec import RayExecutor

    out: dict[str, float] = {"videos": a.videos, "cores": os.cpu_count() or 0}
    with tempfile.TemporaryDirectory(prefix="rvos-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "shapes"
        make_shapes(str(data), videos=a.videos, seed=0, height=96, width=160,
                    min_frames=a.frames[0], max_frames=a.frames[1])
        print(f"{a.videos} synthetic videos of 96x160, {a.frames[0]}-{a.frames[1]} frames; tiny models; "
              f"{out['cores']} cores on this machine", flush=True)

        def run(name: str) -> None:
            cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.root={data}", f"run.dir={tmp / name}", *PINNED])
            s = RayExecutor(cfg).run(progress=False)
            assert s["done"] == a.videos and s["failed"] == 0, s["failures"]
            out.update(figures(name, s, tmp / name))
            busy = ", ".join(f"{k.split('_busy_')[1]} {100 * v:.0f}%" for k, v in out.items() if k.startswith(f"{name}_busy_"))
            print(f"{name:<12} {out[f'{name}_videos_per_s']:.3f} videos/s on {out[f'{name}_nodes']} node(s) "
                  f"(loop {out[f'{name}_loop_s']:.1f}s; waiting on the driver {out[f'{name}_driver_wait_s']:.2f}s, "
                  f"for a free propagator {out[f'{name}_propagation_queue_s']:.2f}s); "
                  f"busy: {busy}", flush=True)

        ray.init(address="local", num_cpus=10, resources={"seg": 2, "prop": 4, "gnd": 2}, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            run("one_node")
        finally:
            ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {"seg": 2, "gnd": 2},
                                                                "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=3, resources={"prop": 2})
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            cluster.wait_for_nodes()
            run("three_nodes")
        finally:
            ray.shutdown()
            cluster.shutdown()
    out["speedup_three_vs_one"] = out["three_nodes_videos_per_s"] / out["one_node_videos_per_s"]
    print(f"three nodes vs one: {out['speedup_three_vs_one']:.2f}x. Every node shares this machine's "
          f"{out['cores']} cores: more nodes add processes and object transfers, not compute; on "
          f"separate machines the propagation replicas (the busiest stage) would each have their own.")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
