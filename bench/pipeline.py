"""Pipeline throughput on a synthetic split with the tiny models: the in-process executor, and
the Ray executor with 1 and 2 workers per stage; plus Ray's orchestration overhead.

    .venv/bin/python bench/pipeline.py [--videos 4] [--height 96 --width 160] [--frames 8 10]

Figures (all on the same data, in this one invocation, model loading excluded):

- ``*_videos_per_s``: videos / the time the executor spent on them (after its models loaded).
- ``*_wall_over_compute``: that time over the sum of the stage compute times the stages
  themselves measured (their events); below 1 where calls overlapped (the models of a stage run
  side by side, videos in flight, replicas).
- ``ray_overhead``: Ray with one worker per stage and one video in flight: the time during which
  no stage call was computing, over the time during which one was (from the run's event log).
  What is left is the executor's own cost: scheduling, object transfers, the driver's round
  trips. Target: <= 0.10. ``local_idle_over_busy`` is the same for the in-process executor.

The machine's cores are shared, so parallel figures depend on its load; the overhead figure does
not need spare cores. Last stdout line: the figures as one JSON object.
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


def cfg_for(data: Path, run: Path, replicas: int, in_flight: int):
    from rvos_ray.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [
        f"data.root={data}", f"run.dir={run}",
        f"segmentation.resources.replicas={replicas}", f"propagation.resources.replicas={replicas}",
        f"grounding.resources.replicas={replicas}", f"ray.max_videos_in_flight={in_flight}",
        "segmentation.resources.num_cpus=1", "propagation.resources.num_cpus=1",
        "grounding.resources.num_cpus=1", "tasks.resources.num_cpus=1",
    ])


def busy_and_span(run: Path) -> tuple[float, float]:
    """(seconds during which at least one stage call was computing, seconds from the first
    video's start to the last video's end), from the run's event log."""
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x]
    starts = [e["time"] for e in events if e.get("stage") == "driver" and e.get("item") == "video_start"]
    ends = [e["time"] for e in events if e.get("stage") == "driver" and e.get("item") in ("video_done", "video_failed")]
    calls = sorted((e["start"], e["end"]) for e in events if e.get("stage") != "driver" and "end" in e)
    busy, cur_s, cur_e = 0.0, None, None
    for a, b in calls:
        if cur_e is None or a > cur_e:
            busy += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    busy += 0.0 if cur_e is None else cur_e - cur_s
    return busy, max(ends) - min(starts)


def figures(name: str, s: dict, run: Path) -> dict:
    loop, compute = s["timings"]["loop_s"], s["compute_seconds"]
    busy, span = busy_and_span(run)
    return {f"{name}_videos_per_s": s["done"] / loop, f"{name}_loop_s": loop,
            f"{name}_compute_s": compute, f"{name}_wall_over_compute": loop / compute,
            f"{name}_idle_over_busy": (span - busy) / busy, f"{name}_setup_s": s["timings"]["setup_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, nargs=2, default=(8, 10), metavar=("MIN", "MAX"))
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--num-cpus", type=int, default=16, help="logical CPUs of the local Ray")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import ray

    from rvos_ray.data.synthetic import make_shapes
    from rvos_ray.runtime.local_exec import run_local
    from rvos_ray.runtime.ray_exec import RayExecutor

    out: dict[str, float] = {"videos": a.videos, "cores": os.cpu_count() or 0}
    with tempfile.TemporaryDirectory(prefix="rvos-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "shapes"
        make_shapes(str(data), videos=a.videos, seed=0, height=a.height, width=a.width,
                    min_frames=a.frames[0], max_frames=a.frames[1])
        print(f"{a.videos} synthetic videos of {a.height}x{a.width}, {a.frames[0]}-{a.frames[1]} frames; tiny models; "
              f"{out['cores']} cores on this machine")

        s = run_local(cfg_for(data, tmp / "local", 1, 1), progress=False)
        out.update(figures("local", s, tmp / "local"))
        print(f"in-process   {out['local_videos_per_s']:.3f} videos/s  (loop {out['local_loop_s']:.2f}s, "
              f"stage compute {out['local_compute_s']:.2f}s)")

        ray.init(address="local", num_cpus=a.num_cpus, resources={"seg": 8, "prop": 8, "gnd": 16}, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            for replicas, in_flight, name in ((1, 1, "ray_serial"), (1, 4, "ray1"), (2, 4, "ray2")):
                ex = RayExecutor(cfg_for(data, tmp / name, replicas, in_flight))
                s = ex.run(progress=False)
                assert s["done"] == a.videos and s["failed"] == 0, s["failures"]
                out.update(figures(name, s, tmp / name))
                print(f"{name:<12} {out[f'{name}_videos_per_s']:.3f} videos/s  (loop {out[f'{name}_loop_s']:.2f}s, "
                      f"stage compute {out[f'{name}_compute_s']:.2f}s, ratio {out[f'{name}_wall_over_compute']:.3f}; "
                      f"{replicas} worker(s) per stage, {in_flight} video(s) in flight)")
                for actors in ex.pools.values():
                    for actor in actors:
                        ray.kill(actor)
        finally:
            ray.shutdown()
    # Orchestration overhead: with one video in flight, every moment no stage computes is the
    # executor's own time (scheduling, object transfers, the driver's round trips).
    out["ray_overhead"] = out["ray_serial_idle_over_busy"]
    out["ray1_speedup_vs_local"] = out["ray1_videos_per_s"] / out["local_videos_per_s"]
    out["ray2_speedup_vs_local"] = out["ray2_videos_per_s"] / out["local_videos_per_s"]
    print(f"orchestration overhead (Ray, one video in flight: time no stage computed / time stages computed): "
          f"{100 * out['ray_overhead']:.1f}% (target <= 10%); in-process: {100 * out['local_idle_over_busy']:.1f}%")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
