"""Mask propagation (CFBI+): accuracy of a tiny trained model, backbone passes and speed vs the
number of candidates, and peak memory vs video length.

1. **Accuracy**: a tiny CFBI+ trained by ``rvos-ray train-propagator`` (``--checkpoint``; default:
   the demo's, ``configs/demo_models/cfbi_demo.yaml``, shipped in ``rvos_ray/assets/demo``; run at
   ``--long-edge``, default 320: the frames' own size; it was trained on 96x160 crops of frames
   scaled by 0.5-1.0, so full-size objects are within what it saw), fed the ground-truth masks of the first
   frame of every synthetic valid video (each object present there is one candidate), propagated
   to the last frame. J per annotated frame after the first (DAVIS J; 1 when both masks are empty), mean over
   frames per object, then over objects. Baseline, measured in the same run on the same videos:
   "copy the first-frame mask to every frame" (what a propagator that ignores the video scores).
2. **Candidates**: for N = 1, 8, 32 candidates (the frame-0 objects, cycled, each shifted by a
   few pixels so no two are equal) on one valid video: backbone forward passes per call (must be
   the number of frames, whatever N) and frames/s of the call (1 torch thread).
3. **Memory**: peak RSS of a fresh process while it propagates the frame-0 objects through a
   40-frame and a 400-frame synthetic video of the same resolution (made with ``make_shapes``),
   and their ratio (target <= 1.3). Each process loads the model and propagates the first 5 frames
   as a warm-up, then resets the kernel's peak-RSS counter and propagates it again, so the peak
   is that of propagation (model, features, RLE output), not of importing torch or loading the
   checkpoint.

Last stdout line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rvos_ray import masks  # noqa: E402
from rvos_ray.data.refytvos import RefYTVOS  # noqa: E402
from rvos_ray.data.synthetic import make_shapes  # noqa: E402
from rvos_ray.types import Candidates  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def propagator(checkpoint: str, long_edge: int):
    from rvos_ray.stages.propagate import PropagateStage

    options = {"checkpoint": checkpoint, "long_edge": long_edge, "device": "cpu", "num_threads": 1, "candidate_batch": 8}
    stage = PropagateStage({"backend": "cfbi", "options": options})
    stage.setup()
    return stage.model


def first_frame_candidates(reader: RefYTVOS, vid: str) -> tuple[Candidates, list[int]]:
    video = reader.video(vid)
    lab = reader.label_map(vid, video.frame_names[0])
    ids = [int(i) for i in np.unique(lab) if i != 0]
    h, w = lab.shape
    rles = tuple(masks.encode((lab == i).astype(np.uint8)) for i in ids)
    return Candidates(vid, 0, h, w, rles, (1.0,) * len(ids), (0,) * len(ids), ("gt",) * len(ids)), ids


def mean_j(prop, reader: RefYTVOS, vids: list[str], copy_baseline: bool = False) -> float:
    """Mean over objects of the mean J over annotated frames (first frame excluded)."""
    from rvos_ray.evaluation.metrics import jaccard

    per_object = []
    for vid in vids:
        video = reader.video(vid)
        cands, ids = first_frame_candidates(reader, vid)
        if not ids:
            continue
        annotated = set(reader.annotated_frames(vid))
        if copy_baseline:
            rows = {(k, t): cands.rles[k] for k in range(len(ids)) for t in range(video.num_frames)}
        else:
            table = prop.propagate(video, cands, list(range(len(ids))))
            rows = {(k, t): r for k, t, r in zip(table["tracklet_id"].to_pylist(), table["frame"].to_pylist(),
                                                  table["rle"].to_pylist())}
        labels = {t: reader.label_map(vid, n) for t, n in enumerate(video.frame_names) if t > 0 and n in annotated}
        for k, obj in enumerate(ids):
            js = [jaccard(lab == obj, masks.decode(rows[(k, t)], cands.height, cands.width)) for t, lab in labels.items()]
            if js:
                per_object.append(float(np.mean(js)))
    return float(np.mean(per_object))


def shifted(cands: Candidates, n: int) -> Candidates:
    """n candidates: the given ones cycled, copy c shifted right by c pixels (distinct masks)."""
    rles = []
    for i in range(n):
        m = masks.decode(cands.rles[i % len(cands)], cands.height, cands.width)
        rles.append(masks.encode(np.roll(m, i // len(cands), axis=1)))
    return Candidates(cands.video_id, cands.frame, cands.height, cands.width, tuple(rles),
                      (1.0,) * n, (0,) * n, ("gt",) * n)


def _vm(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def rss_child(root: str, checkpoint: str, long_edge: str) -> None:
    """(subprocess) propagate the frame-0 objects of the valid video; print RSS figures in MiB.

    The peak is reset (``/proc/self/clear_refs``) once the model is loaded and warm, so the
    figure is the peak *during propagation*, not the import/checkpoint-loading spike."""
    import torch

    torch.set_num_threads(1)
    reader = RefYTVOS(root, "valid")
    vid = reader.video_ids()[0]
    video = reader.video(vid)
    prop = propagator(checkpoint, int(long_edge))
    cands, ids = first_frame_candidates(reader, vid)
    short = dataclasses.replace(video, frame_names=video.frame_names[:5], frame_paths=video.frame_paths[:5])
    prop.propagate(short, cands, list(range(len(ids))))  # warm-up: allocator pools, lazy init
    warm = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    table = prop.propagate(video, cands, list(range(len(ids))))
    print(json.dumps({"frames": video.num_frames, "objects": len(ids), "rows": table.num_rows,
                      "rss_before_mib": warm, "rss_peak_mib": _vm("VmHWM")}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/shapes", help="synthetic benchmark root (made if absent)")
    p.add_argument("--checkpoint", default="rvos_ray/assets/demo/propagator.pt", help="train-propagator model.pt")
    p.add_argument("--long-edge", type=int, default=320, help="model input's long edge (frames are resized to it)")
    p.add_argument("--videos", type=int, default=40, help="valid videos scored for J")
    p.add_argument("--work", default="runs/bench-propagate", help="scratch folder (long videos for RSS)")
    p.add_argument("--rss-child", nargs=3, metavar=("ROOT", "CHECKPOINT", "LONG_EDGE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0

    import torch

    torch.set_num_threads(1)
    if not os.path.exists(args.checkpoint):
        print(f"no checkpoint at {args.checkpoint}; train it first:\n  rvos-ray make-shapes --out {args.data} "
              f"--videos 40 --seed 0\n  rvos-ray train-propagator --config configs/propagator/tiny.yaml", file=sys.stderr)
        return 2
    make_shapes(args.data, videos=40, seed=0)  # no-op when already there with these parameters
    reader = RefYTVOS(args.data, "valid")
    vids = reader.video_ids()[: args.videos]
    figures: dict[str, float] = {}

    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    figures["checkpoint_mib"] = round(os.path.getsize(args.checkpoint) / 2**20, 2)
    figures["training_steps"] = int(state.get("step", 0))
    figures["training_seconds"] = round(float(state.get("seconds", float("nan"))), 1)
    print(f"checkpoint {args.checkpoint}: {figures['checkpoint_mib']} MiB, {figures['training_steps']} steps, "
          f"{figures['training_seconds']} s of training")

    # 1. accuracy -----------------------------------------------------------------------------
    trained = propagator(args.checkpoint, args.long_edge)
    t0 = time.perf_counter()
    figures["mean_J_trained"] = round(mean_j(trained, reader, vids), 4)
    figures["accuracy_seconds"] = round(time.perf_counter() - t0, 1)
    figures["mean_J_copy_first_mask"] = round(mean_j(None, reader, vids, copy_baseline=True), 4)
    print(f"mean J over {len(vids)} valid videos, first-frame GT masks: trained {figures['mean_J_trained']} "
          f"(target >= 0.8), copy-first-mask baseline "
          f"{figures['mean_J_copy_first_mask']}")

    # 2. candidates vs backbone passes and speed ------------------------------------------------
    vid = vids[0]
    video = reader.video(vid)
    base, _ = first_frame_candidates(reader, vid)
    trained.propagate(video, shifted(base, 1), [0])  # warm-up
    for n in (1, 8, 32):
        before = trained.backbone_forward_passes
        t0 = time.perf_counter()
        trained.propagate(video, shifted(base, n), list(range(n)))
        dt = time.perf_counter() - t0
        figures[f"backbone_passes_N{n}"] = trained.backbone_forward_passes - before
        figures[f"frames_per_s_N{n}"] = round(video.num_frames / dt, 2)
        print(f"N={n:2d}: {figures[f'backbone_passes_N{n}']} backbone passes for {video.num_frames} frames, "
              f"{figures[f'frames_per_s_N{n}']} frames/s")
    figures["frames_in_call"] = video.num_frames

    # 3. memory vs video length ----------------------------------------------------------------
    for frames in (40, 400):
        root = os.path.join(args.work, f"shapes{frames}")
        make_shapes(root, videos=1, seed=1, min_frames=frames, max_frames=frames)
        out = subprocess.run([sys.executable, __file__, "--rss-child", root, args.checkpoint, str(args.long_edge)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        figures[f"rss_peak_mib_{frames}"] = round(r["rss_peak_mib"], 1)
        figures[f"rss_before_mib_{frames}"] = round(r["rss_before_mib"], 1)
        print(f"{frames} frames x {r['objects']} objects: peak RSS during propagation {r['rss_peak_mib']:.1f} MiB "
              f"(RSS before it {r['rss_before_mib']:.1f} MiB)")
    figures["rss_ratio_400_vs_40"] = round(figures["rss_peak_mib_400"] / figures["rss_peak_mib_40"], 3)
    print(f"peak RSS ratio 400 vs 40 frames: {figures['rss_ratio_400_vs_40']} (target <= 1.3)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
