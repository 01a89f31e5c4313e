"""The synthetic benchmark: moving coloured shapes in the exact Ref-YouTube-VOS layout.

``make_shapes(out_dir, videos=N, seed=S)`` writes ``train/`` and ``valid/`` (N videos each,
both annotated)::

    <out>/<split>/JPEGImages/<vid>/<frame>.jpg          JPEG, quality 90
    <out>/<split>/Annotations/<vid>/<frame>.png         palette PNG, pixel = object id
    <out>/<split>/meta.json                             objects: category (+ color/size/motion)
    <out>/meta_expressions/<split>/meta_expressions.json  expressions with an extra "kind"
    <out>/shapes.json                                   the parameters (a re-run with the same
                                                        ones is a no-op)

Every video has 3-5 objects (shape x colour x size, unique per video, with same-shape
distractors), moving left/right/up/down, entering, leaving and occluding each other over a
seeded textured background. Each object gets 2-3 expressions that are checked to be
unambiguous in its video (:mod:`rvos_ray.data.synthetic_text`). Output is a pure function of
the parameters: the same seed gives byte-identical files.

CLI: ``rvos-ray make-shapes --out DIR --videos N --seed S [--height H --width W]``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import Counter

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from rvos_ray.data import io as dio
from rvos_ray.data.errors import DataError
from rvos_ray.data.palette import encode_palette_png
from rvos_ray.data.synthetic_scene import VISIBLE_GOOD, Scene, sample_scene
from rvos_ray.data.synthetic_text import KINDS, expressions_for

SPLITS: tuple[str, ...] = ("train", "valid")
FORMAT_VERSION = 2  # bump whenever the output changes, so make-shapes regenerates
JPEG_QUALITY = 90
_MAX_TRIES = 200  # scenes are resampled until every object is seen well enough


def frame_name(t: int) -> str:
    """Ref-YouTube-VOS names frames by their index in the 30 fps source, every 5th kept."""
    return f"{5 * t:05d}"


def video_id(split: str, index: int) -> str:
    return f"{split}{index:04d}"


def _scene_ok(scene: Scene) -> bool:
    # Every object must be well seen (>= 40% of it) on at least 3 frames, so every expression's
    # referent is really in the video and a tracker has something to follow.
    return bool((scene.visible(VISIBLE_GOOD).sum(axis=0) >= 3).all())


def generate_video(seed: int, split_index: int, index: int, height: int, width: int,
                   min_frames: int, max_frames: int) -> tuple[Scene, list[np.ndarray], list[np.ndarray], list]:
    """One video's scene, frames, label maps and per-object (text, kind) lists.

    Seeded by (seed, split, index) alone, so any video can be regenerated on its own.
    """
    rng = np.random.default_rng([seed, split_index, index])
    for _ in range(_MAX_TRIES):
        num_frames = int(rng.integers(min_frames, max_frames + 1))
        scene = sample_scene(rng, height, width, num_frames)
        frames, labels = scene.render()
        if _scene_ok(scene):
            exps = [expressions_for(o, scene, rng) for o in scene.objects]
            return scene, frames, labels, exps
    raise RuntimeError(f"no valid scene after {_MAX_TRIES} tries (seed {seed}, video {index}); "
                       f"frame {height}x{width} too small?")


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write_split(out: str, split: str, split_index: int, n: int, params: dict) -> Counter:
    meta_exps: dict[str, dict] = {}
    meta: dict[str, dict] = {}
    stats: Counter = Counter()
    for i in range(n):
        vid = video_id(split, i)
        scene, frames, labels, exps = generate_video(
            params["seed"], split_index, i, params["height"], params["width"],
            params["min_frames"], params["max_frames"])
        names = [frame_name(t) for t in range(scene.num_frames)]
        for name, frame, lab in zip(names, frames, labels):
            dio.write_bytes(dio.join(out, split, "JPEGImages", vid, name + ".jpg"), _jpeg(frame))
            dio.write_bytes(dio.join(out, split, "Annotations", vid, name + ".png"), encode_palette_png(lab))
        expressions: dict[str, dict] = {}
        objects: dict[str, dict] = {}
        for o, obj_exps in zip(scene.objects, exps):
            for text, kind in obj_exps:
                expressions[str(len(expressions))] = {"exp": text, "obj_id": str(o.obj_id), "kind": kind}
                stats[kind] += 1
            assert scene.visible_area is not None
            seen = [names[t] for t in range(scene.num_frames) if scene.visible_area[t, o.obj_id - 1] > 0]
            objects[str(o.obj_id)] = {"category": o.shape, "frames": seen,
                                      "color": o.color, "size": o.size, "motion": o.direction}
        meta_exps[vid] = {"expressions": expressions, "frames": names}
        meta[vid] = {"objects": objects}
        stats["videos"] += 1
        stats["frames"] += scene.num_frames
        stats["objects"] += len(scene.objects)
    dio.write_bytes(dio.join(out, "meta_expressions", split, "meta_expressions.json"),
                    json.dumps({"videos": meta_exps}, indent=1).encode())
    dio.write_bytes(dio.join(out, split, "meta.json"), json.dumps({"videos": meta}, indent=1).encode())
    return stats


def make_shapes(out_dir: str, videos: int, seed: int, height: int = 192, width: int = 320,
                min_frames: int = 20, max_frames: int = 40, force: bool = False) -> dict:
    """Write the synthetic benchmark to ``out_dir`` (local path or URI); returns a summary.

    A folder already holding the same parameters' complete output is left as it is (summary
    ``"skipped": True``) unless ``force``. A folder from other parameters is replaced; a
    non-empty folder that make-shapes did not write is refused (:class:`DataError`).
    """
    if videos < 1:
        raise DataError(f"--videos must be >= 1, got {videos}")
    if not (1 <= min_frames <= max_frames):
        raise DataError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if min(height, width) < 64:
        raise DataError(f"frames of {height}x{width} are too small for 3-5 objects; use >= 64 px")
    out = str(out_dir)
    params = {"generator": "rvos-ray make-shapes", "version": FORMAT_VERSION, "videos": videos,
              "seed": seed, "height": height, "width": width, "min_frames": min_frames,
              "max_frames": max_frames}
    manifest = dio.join(out, "shapes.json")
    previous = _read_manifest(manifest)
    if previous == {**params, "complete": True} and not force:
        return {**params, "out": out, "skipped": True}
    if previous is None and dio.is_dir(out) and dio.list_dir(out):
        raise DataError(f"{out} is not empty and was not written by make-shapes (no shapes.json); "
                        "choose another --out")
    _clear(out)
    dio.write_bytes(manifest, json.dumps({**params, "complete": False}, indent=1).encode())
    start = time.perf_counter()
    totals: dict[str, dict] = {}
    for si, split in enumerate(SPLITS):
        totals[split] = dict(_write_split(out, split, si, videos, params))
    dio.write_bytes(manifest, json.dumps({**params, "complete": True}, indent=1).encode())
    return {**params, "out": out, "skipped": False, "seconds": time.perf_counter() - start,
            "splits": totals}


def _read_manifest(uri: str) -> dict | None:
    if not dio.exists(uri):
        return None
    try:
        return json.loads(dio.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _clear(out: str) -> None:
    """Remove what an earlier make-shapes wrote, so no stale video or frame survives."""
    fs, path = dio.resolve(out)
    for name in (*SPLITS, "meta_expressions"):
        sub = f"{path.rstrip('/')}/{name}"
        if fs.get_file_info(sub).type == pafs.FileType.Directory:
            fs.delete_dir(sub)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rvos-ray make-shapes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (local path or URI)")
    ap.add_argument("--videos", type=int, default=20, help="videos per split (train and valid)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--min-frames", type=int, default=20)
    ap.add_argument("--max-frames", type=int, default=40)
    ap.add_argument("--force", action="store_true", help="regenerate even if up to date")
    a = ap.parse_args(argv)
    s = make_shapes(a.out, a.videos, a.seed, a.height, a.width, a.min_frames, a.max_frames, a.force)
    if s["skipped"]:
        print(f"{a.out}: up to date ({a.videos} videos per split, seed {a.seed}); --force to regenerate")
        return 0
    for split, st in s["splits"].items():
        kinds = ", ".join(f"{st.get(k, 0)} {k}" for k in KINDS)
        print(f"{a.out}/{split}: {st['videos']} videos, {st['frames']} frames, {st['objects']} objects, "
              f"{sum(st.get(k, 0) for k in KINDS)} expressions ({kinds})")
    print(f"wrote the synthetic benchmark ({a.height}x{a.width}, seed {a.seed}) in {s['seconds']:.1f} s")
    return 0
