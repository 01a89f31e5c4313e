"""Benchmark: `rvos-ray score` against a plain per-frame loop of the same DAVIS definitions.

Data: the synthetic benchmark at 480x854 (valid split); the ground truth is written as a
perturbed submission (shifted, eroded/dilated, noisy, emptied and missing frames, some exact).

- **score**: the whole `rvos-ray score` process, timed from outside (interpreter start, imports,
  PNG reading, all cores across videos, writing the CSV).
- **baseline**: a straightforward loop in this process: per expression and frame, read both
  PNGs with PIL, full-frame DAVIS ``seg2bmap``, ``scipy.ndimage.binary_dilation`` with the disk,
  count. On the first ``--baseline-frames`` expression-frames of the same data (default 300,
  whole expressions; 0 = all): it is slow enough that all of it would take many minutes.

For reference it also times the same loop with ``cv2.dilate`` over the whole frame (what the
DAVIS-2017 toolkit does), which is much faster than scipy's dilation.

Frames/s counts expression-frames (one predicted mask scored against its ground truth). Both
runs' per-expression J and F are compared (they must agree to 1e-6). The last stdout line is
one JSON object of the figures.

    .venv/bin/python bench/score.py [--videos 4] [--seed 0] [--workers N] [--baseline-frames K]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

# Runs from a checkout even before `make install` has put the package in the venv.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from rvos_ray.data.refytvos import RefYTVOS  # noqa: E402
from rvos_ray.data.synthetic import make_shapes  # noqa: E402

HEIGHT, WIDTH = 480, 854


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


def perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A plausible prediction of ``mask`` (0/1): None means the frame is left out."""
    roll = rng.random()
    if roll < 0.03:
        return None
    if roll < 0.06:
        return np.zeros_like(mask)
    if roll < 0.25:
        return mask.copy()
    out = np.roll(mask, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    if roll < 0.5:
        out = cv2.erode(out, k)
    elif roll < 0.75:
        out = cv2.dilate(out, k)
    if rng.random() < 0.3:  # a spurious blob elsewhere
        cy, cx = int(rng.integers(0, HEIGHT)), int(rng.integers(0, WIDTH))
        cv2.circle(out, (cx, cy), int(rng.integers(5, 30)), 1, -1)
    return out


def write_submission(reader: RefYTVOS, folder: str, seed: int) -> int:
    """Write the perturbed submission once (a marker file makes re-runs skip it)."""
    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker):
        return -1
    rng = np.random.default_rng(seed)
    n = 0
    for vid in reader.video_ids():
        exps = reader.expressions(vid)
        for frame in reader.annotated_frames(vid):
            lab = reader.label_map(vid, frame)
            for e in exps:
                pred = perturb((lab == e.obj_ids[0]).astype(np.uint8), rng)
                if pred is None:
                    continue
                d = os.path.join(folder, "Annotations", vid, e.exp_id)
                os.makedirs(d, exist_ok=True)
                Image.fromarray(pred * 255).save(os.path.join(d, frame + ".png"))
                n += 1
    open(marker, "w").close()
    return n


# ------------------------------------------------------------------------------------------
# The plain per-frame loop (DAVIS definitions written out, full frame)
# ------------------------------------------------------------------------------------------


def plain_seg2bmap(seg: np.ndarray) -> np.ndarray:
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def plain_disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def scipy_dilate(b: np.ndarray, r: int) -> np.ndarray:
    return ndimage.binary_dilation(b, structure=plain_disk(r))


def cv2_dilate(b: np.ndarray, r: int) -> np.ndarray:
    """What the DAVIS-2017 toolkit does: OpenCV dilation over the whole frame."""
    return cv2.dilate(b.astype(np.uint8), plain_disk(r).astype(np.uint8)).astype(bool)


def plain_frame(gt: np.ndarray, pred: np.ndarray, dilate=scipy_dilate) -> tuple[float, float]:
    union = np.sum(gt | pred)
    j = 1.0 if union == 0 else np.sum(gt & pred) / union
    h, w = gt.shape
    r = math.ceil(0.008 * math.sqrt(h * h + w * w))
    fg_b, gt_b = plain_seg2bmap(pred), plain_seg2bmap(gt)
    fg_dil = dilate(fg_b, r)
    gt_dil = dilate(gt_b, r)
    n_fg, n_gt = np.sum(fg_b), np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        p, rc = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1.0, 1.0
    else:
        p, rc = np.sum(fg_b & gt_dil) / n_fg, np.sum(gt_b & fg_dil) / n_gt
    f = 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)
    return float(j), float(f)


def baseline(reader: RefYTVOS, sub: str, limit: int, dilate=scipy_dilate) -> tuple[int, float, float, dict]:
    """Plain loop over (video, expression, frame); returns (frames, seconds, CPU seconds,
    per-expression J/F of the expressions it finished)."""
    done: dict[tuple[str, str], tuple[float, float]] = {}
    n = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    ann = os.path.join(reader.split_dir, "Annotations")
    for vid in reader.video_ids():
        for e in reader.expressions(vid):
            frames = reader.annotated_frames(vid)
            if limit and n + len(frames) > limit:
                return n, time.perf_counter() - start, time.process_time() - cpu0, done
            js, fs = [], []
            for frame in frames:
                gt = np.array(Image.open(os.path.join(ann, vid, frame + ".png"))) == e.obj_ids[0]
                p = os.path.join(sub, "Annotations", vid, e.exp_id, frame + ".png")
                pred = np.array(Image.open(p)) != 0 if os.path.exists(p) else np.zeros_like(gt)
                j, f = plain_frame(gt, pred, dilate)
                js.append(j)
                fs.append(f)
                n += 1
            done[(vid, e.exp_id)] = (float(np.mean(js)), float(np.mean(fs)))
    return n, time.perf_counter() - start, time.process_time() - cpu0, done


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=4, help="synthetic videos (valid split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="rvos-ray score --workers (default all cores)")
    ap.add_argument("--baseline-frames", type=int, default=300,
                    help="the plain loop scores whole expressions, in order, up to this many "
                    "expression-frames of the same data (0: all; it runs ~100x longer than score)")
    ap.add_argument("--repeat", type=int, default=2, help="score runs; the fastest counts")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "rvos-ray-bench-score"))
    a = ap.parse_args()

    data = os.path.join(a.dir, f"shapes-{HEIGHT}x{WIDTH}-v{a.videos}-s{a.seed}")
    t = time.perf_counter()
    made = make_shapes(data, videos=a.videos, seed=a.seed, height=HEIGHT, width=WIDTH)
    reader = RefYTVOS(data, "valid")
    sub = os.path.join(data, "submission")
    written = write_submission(reader, sub, a.seed)
    print(f"data: {data} ({'reused' if made['skipped'] else 'generated'}; submission "
          f"{'reused' if written < 0 else f'{written} PNGs written'}) in {time.perf_counter() - t:.1f} s")

    out = os.path.join(a.dir, "metrics.csv")
    cmd = [sys.executable, "-m", "rvos_ray.cli", "score", "--data-root", data, "--split", "valid",
           "--predictions", sub, "--out", out, "--json"]
    if a.workers:
        cmd += ["--workers", str(a.workers)]
    times, cpus = [], []
    for _ in range(max(1, a.repeat)):
        t = time.perf_counter()
        c = _children_cpu()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t)
        cpus.append(_children_cpu() - c)
        if res.returncode != 0:
            print(res.stdout + res.stderr, file=sys.stderr)
            return 1
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    print("\n".join(res.stdout.strip().splitlines()[:-1]))
    frames = int(summary["n_frames"])
    best = int(np.argmin(times))
    score_s, score_cpu = times[best], cpus[best]
    score_fps = frames / score_s
    print(f"rvos-ray score: {frames} expression-frames in {score_s:.2f} s (runs: "
          f"{', '.join(f'{x:.2f}' for x in times)}) -> {score_fps:.1f} frames/s, whole process; "
          f"{1e3 * score_cpu / frames:.2f} CPU ms/frame")

    n_base, base_s, base_cpu, base_vals = baseline(reader, sub, a.baseline_frames)
    base_fps = n_base / base_s
    print(f"plain loop:     {n_base} expression-frames in {base_s:.2f} s -> {base_fps:.1f} frames/s; "
          f"{1e3 * base_cpu / n_base:.2f} CPU ms/frame (PIL, full-frame seg2bmap, scipy binary_dilation)")
    n_cv, cv_s, cv_cpu, cv_vals = baseline(reader, sub, a.baseline_frames, cv2_dilate)
    cv_fps = n_cv / cv_s
    print(f"DAVIS-toolkit-style loop: {n_cv} expression-frames in {cv_s:.2f} s -> {cv_fps:.1f} frames/s; "
          f"{1e3 * cv_cpu / n_cv:.2f} CPU ms/frame (same, but cv2.dilate over the whole frame, as the "
          "DAVIS-2017 toolkit does)")

    with open(out, newline="") as f:
        rows = {(r["video"], r["exp_id"]): (float(r["J"]), float(r["F"])) for r in csv.DictReader(f)}
    both = [*base_vals.items(), *cv_vals.items()]
    dj = max(abs(rows[k][0] - v[0]) for k, v in both)
    df = max(abs(rows[k][1] - v[1]) for k, v in both)
    print(f"agreement on {len(base_vals)} expressions (both loops): max |dJ| {dj:.2e}, max |dF| {df:.2e}")
    if max(dj, df) > 1e-6:
        print("ERROR: the scorer and the plain loop disagree", file=sys.stderr)
        return 1
    speedup = score_fps / base_fps
    print(f"speedup: {speedup:.1f}x vs the plain loop, {score_fps / cv_fps:.1f}x vs the DAVIS-toolkit-style "
          f"loop ({os.cpu_count()} cores)")
    print(json.dumps({
        "score_fps": round(score_fps, 2),
        "baseline_fps": round(base_fps, 2),
        "speedup": round(speedup, 2),
        "davis_style_fps": round(cv_fps, 2),
        "speedup_vs_davis_style": round(score_fps / cv_fps, 2),
        "frames": frames,
        "baseline_frames": n_base,
        "score_seconds": round(score_s, 3),
        "baseline_seconds": round(base_s, 3),
        "J&F": summary["J&F"],
        "max_abs_diff": max(dj, df),
        "score_cpu_ms_per_frame": round(1e3 * score_cpu / frames, 3),
        "baseline_cpu_ms_per_frame": round(1e3 * base_cpu / n_base, 3),
        "davis_style_cpu_ms_per_frame": round(1e3 * cv_cpu / n_cv, 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
