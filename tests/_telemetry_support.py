"""A hand-made run directory for the report tests: the synthetic benchmark's ground truth as
tracklets, so every expression's IoU and the worst frame are known in advance.

Per video: tracklet 0 is object 1's ground truth on every frame, tracklet 1 is empty.
Expression ``0`` of each video is predicted as its own object's tracklet when that object is
1 (IoU 1), otherwise as the empty tracklet (IoU 0 on a frame where the object is visible).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from rvos_ray import masks as rle
from rvos_ray.config import RunConfig
from rvos_ray.data.datasets import open_dataset
from rvos_ray.data.synthetic import make_shapes
from rvos_ray.runtime.run_dir import RunDir, table_bytes
from rvos_ray.types import METRICS_SCHEMA, PREDICTION_SCHEMA, TRACKLET_SCHEMA, table_from_columns

STAGES = ("segmentation", "pooling", "propagation", "nms", "grounding", "ensemble", "writer")


def make_run(tmp: Path, videos: int = 3) -> dict:
    """Write data + run dir; returns {"run": path, "data": path, "expected": {(vid, exp): J}}."""
    data = tmp / "shapes"
    make_shapes(str(data), videos=videos, seed=0, height=64, width=96, min_frames=4, max_frames=5)
    reader = open_dataset(str(data), "valid", "refytvos")
    run = tmp / "run"
    rd = RunDir(str(run))
    cfg = OmegaConf.structured(RunConfig)
    cfg.data.root, cfg.data.split, cfg.run.dir = str(data), "valid", str(run)
    rd.write_config(cfg)

    t = 1000.0
    events = [{"stage": "driver", "item": "run_start", "video_id": "", "time": t}]
    preds = {"video_id": [], "exp_id": [], "tracklet_id": [], "score": []}
    mets = {"video": [], "exp_id": [], "J": [], "F": [], "J&F": [], "n_frames": []}
    expected = {}
    for i, vid in enumerate(reader.video_ids()):
        video = reader.video(vid)
        annotated = set(reader.annotated_frames(vid))
        cols = {n: [] for n in TRACKLET_SCHEMA.names}
        for f, name in enumerate(video.frame_names):
            gt = reader.object_mask(vid, name, (1,)) if name in annotated else None
            h, w = (gt.shape if gt is not None else (64, 96))
            for tid, mask_rle in ((0, rle.encode(gt) if gt is not None else rle.empty(h, w)), (1, rle.empty(h, w))):
                for k, v in (("video_id", vid), ("tracklet_id", tid), ("keyframe", 0), ("source", "gt"),
                             ("det_score", 1.0), ("frame", f), ("height", h), ("width", w), ("rle", mask_rle),
                             ("prob", 1.0)):
                    cols[k].append(v)
        rd.write_table(vid, "tracklets", table_from_columns(cols, TRACKLET_SCHEMA, "tracklets"))
        for e in reader.expressions(vid):
            own = 0 if tuple(e.obj_ids) == (1,) else 1
            j = 1.0 if own == 0 else 0.0
            expected[(vid, e.exp_id)] = j
            preds["video_id"].append(vid), preds["exp_id"].append(e.exp_id)
            preds["tracklet_id"].append(own), preds["score"].append(1.0)
            for k, v in (("video", vid), ("exp_id", e.exp_id), ("J", j), ("F", j), ("J&F", j),
                         ("n_frames", len(annotated))):
                mets[k].append(v)
        # stage events: every stage once, segmentation twice (two models)
        start = t + i
        vid_events = []
        for s_i, stage in enumerate(STAGES):
            extra = {"model": "htc"} if stage == "segmentation" else {"variant": "bert"} if stage == "grounding" else {}
            vid_events.append({"video_id": vid, "stage": stage, "item": "all", "start": start + 0.1 * s_i,
                               "end": start + 0.1 * s_i + 0.05 * (s_i + 1), **extra})
        rd.write_events(vid, vid_events)
        events.extend(vid_events)
        rd.mark_done(vid, {"frames": video.num_frames, "expressions": len(reader.expressions(vid))})
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "predictions.parquet").write_bytes(table_bytes(table_from_columns(preds, PREDICTION_SCHEMA, "p")))
    (run / "metrics.parquet").write_bytes(table_bytes(table_from_columns(mets, METRICS_SCHEMA, "m")))
    n = len(expected)
    mean = sum(expected.values()) / n
    rd.write_json("summary.json", {"executor": "local", "run_dir": str(run), "videos": videos, "done": videos,
                                   "skipped": 0, "failed": 0, "expressions": n, "wall_seconds": 5.0,
                                   "compute_seconds": 2.0, "J": mean, "F": mean, "J&F": mean, "failures": []})
    return {"run": run, "data": data, "expected": expected}
