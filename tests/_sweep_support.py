"""A finished run directory built without models, for the sweep tests and bench.

The tracklets come from the synthetic benchmark's ground truth (one tracklet per object, a
one-pixel-shifted duplicate of each that tracklet-NMS should suppress, and one low-scored
distractor box), the NMS is the real stage (:class:`rvos_ray.stages.tracklet_nms.NMSStage`), the grounding probabilities are made up per
variant (``good`` prefers the referred object's tracklet, ``noisy`` is random, ``bad``
prefers a wrong one), and everything after that is the runtime's own code path: the ensemble
stage, :class:`rvos_ray.runtime.pipeline.WriteStage` (tables, metrics via the scorer,
``done.json``) and :func:`rvos_ray.runtime.lifecycle.finish_run` (merged tables, summary.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from omegaconf import OmegaConf

from rvos_ray import masks as rle
from rvos_ray.config import load_config
from rvos_ray.data.datasets import open_dataset
from rvos_ray.data.synthetic import make_shapes
from rvos_ray.runtime import pipeline as pl
from rvos_ray.runtime import run_lifecycle as lifecycle
from rvos_ray.stages.propagate import TrackletBuilder
from rvos_ray.stages.ensemble import EnsembleStage
from rvos_ray.stages.tracklet_nms import NMSStage
from rvos_ray.types import GROUNDING_SCHEMA, Candidates, table_from_columns

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
VARIANTS = ("good", "noisy", "bad")
VIDEOS = 3


def make_data(root: Path, videos: int = VIDEOS) -> Path:
    make_shapes(str(root), videos=videos, seed=0, height=64, width=96, min_frames=6, max_frames=8)
    return root


def run_config(data: Path, run: Path, *overrides: str):
    variants = "[" + ",".join("{name: %s}" % v for v in VARIANTS) + "]"
    return load_config(TINY, [f"data.root={data}", f"run.dir={run}", f"grounding.variants={variants}",
                              "run.submission_zip=false", *overrides])


def gt_tracklets(reader, work: pl.VideoWork) -> tuple[pa.Table, dict[int, int]]:
    """Tracklets from ground truth; returns (table, object id -> its tracklet id)."""
    vid = work.video_id
    frames = work.video.frame_names
    annotated = set(reader.annotated_frames(vid))
    first = reader.label_map(vid, frames[0])
    h, w = first.shape
    maps = [reader.label_map(vid, f) if f in annotated else np.zeros((h, w), np.uint8) for f in frames]
    objects = sorted({int(o) for m in maps for o in np.unique(m) if o})
    masks: list[list[np.ndarray]] = []  # [tracklet][frame]
    scores: list[float] = []
    for o in objects:  # the object itself
        masks.append([(m == o).astype(np.uint8) for m in maps])
        scores.append(0.9)
    for o in objects:  # a near duplicate (shifted by one pixel): NMS removes it
        masks.append([np.roll((m == o).astype(np.uint8), 1, axis=1) for m in maps])
        scores.append(0.6)
    box = np.zeros((h, w), np.uint8)
    box[h // 4 : h // 2, w // 4 : w // 2] = 1
    masks.append([box] * len(frames))  # a distractor
    scores.append(0.3)
    n = len(masks)
    cands = Candidates(vid, 0, h, w, tuple(rle.encode(m[0]) for m in masks), tuple(scores),
                       tuple([0] * n), tuple(["gt"] * n))
    b = TrackletBuilder(work.video, cands, list(range(n)))
    for t in range(len(frames)):
        b.record(t, [rle.encode(m[t]) for m in masks], [1.0] * n)
    return b.table(), {o: i for i, o in enumerate(objects)}


def made_up_grounding(work: pl.VideoWork, kept: pa.Table, obj_to_tid: dict[int, int], seed: int) -> list[pa.Table]:
    """One grounding table per variant over the kept tracklets (softmax per frame)."""
    rng = np.random.default_rng(seed)
    ids = sorted(set(kept.column("tracklet_id").to_pylist()))
    frames = range(work.video.num_frames)
    out = []
    for variant in VARIANTS:
        cols = {k: [] for k in GROUNDING_SCHEMA.names}
        for e in work.expressions:
            target = obj_to_tid.get(e.obj_ids[0], -1)
            for f in frames:
                logits = rng.normal(0.0, 1.0, len(ids))
                if variant == "good":
                    logits += 3.0 * np.array([t == target for t in ids])
                elif variant == "bad":
                    logits += 3.0 * np.array([t != target for t in ids]) * np.linspace(1, 0, len(ids))
                p = np.exp(logits - logits.max())
                p /= p.sum()
                cols["video_id"] += [work.video_id] * len(ids)
                cols["exp_id"] += [e.exp_id] * len(ids)
                cols["variant"] += [variant] * len(ids)
                cols["tracklet_id"] += ids
                cols["frame"] += [f] * len(ids)
                cols["prob"] += p.tolist()
        out.append(table_from_columns(cols, GROUNDING_SCHEMA, "grounding"))
    return out


def build_run(data: Path, run: Path, *overrides: str) -> dict:
    """A finished, scored run directory; returns its summary (summary.json)."""
    cfg = run_config(data, run, *overrides)
    c = OmegaConf.to_container(cfg, resolve=True)
    rd = lifecycle.start_run(cfg)
    works = list(pl.load_split(cfg).works)
    plan = lifecycle.plan(rd, works, False)
    out = lifecycle.Outcome(executor="test")
    reader = open_dataset(str(data), "valid", "refytvos")
    nms, ens, writer = NMSStage(c["nms"]), EnsembleStage(c["ensemble"]), pl.WriteStage(rd.uri, c)
    for i, work in enumerate(works):
        table, obj_to_tid = gt_tracklets(reader, work)
        every, kept = nms.process(table)
        (g_all, pred), ev = pl.timed("ensemble", work.video_id, "all", lambda: ens.process(
            *made_up_grounding(work, kept, obj_to_tid, i)))
        out.done[work.video_id] = writer.process(work, every, kept, g_all, pred, 0, ev)
    return lifecycle.finish_run(rd, cfg, works, plan, out)
