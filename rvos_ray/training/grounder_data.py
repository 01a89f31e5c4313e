"""Training data for the grounder: clips, their sources, the frozen-feature cache, batches.

A *clip* is one expression over a *group*: a video (or a one-frame image) with its candidate
tracklets as a :class:`~rvos_ray.stages.ground.TrackletGrid` and the frames that can be trained
on. Sources:

* :func:`refcoco_clips`: RefCOCO/+/g; each image is a one-frame group whose candidates are its
  instance masks, the target is the referred instance.
* :func:`refytvos_clips`: a Ref-YouTube-VOS-layout split; candidates are the ground-truth
  object tracklets (:func:`gt_tracklet_table`), or optionally the pipeline's tracklets
  (``<tracklets_dir>/<video>.parquet``, ``TRACKLET_SCHEMA``) matched to the referred object by
  tracklet-IoU over the annotated frames.

Frozen encoders make training cheap: :func:`build_feature_cache` runs each backbone once per
group frame (pooled tracklet features, Eq. 5) and each text encoder once per expression, and
stores the result (``torch.save`` of plain tensors, read back with ``weights_only=True``); the
training steps then only run projections and the head.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from rvos_ray import masks as rle
from rvos_ray.data import io as fio
from rvos_ray.data.errors import DataError
from rvos_ray.data.io import read_image
from rvos_ray.models.grounder import Grounder, boxes_from_rles, geometry_features, mask_weights, pool_with_weights
from rvos_ray.models.grounder_group import TrackletGrid, tracklet_grid
from rvos_ray.types import TRACKLET_SCHEMA, Video, table_from_columns

__all__ = [
    "Group", "Clip", "gt_tracklet_table", "refytvos_clips", "refcoco_clips",
    "build_feature_cache", "FeatureCache", "make_batch",
]


@dataclass(frozen=True)
class Group:
    """Frames with candidates: ``grid`` covers every frame of ``video``; ``frames`` are the
    frames with ground truth (the ones trained on)."""

    key: str
    video: Video
    grid: TrackletGrid
    frames: tuple[int, ...]


@dataclass(frozen=True)
class Clip:
    group: int  # index into the group list
    text: str
    targets: tuple[int, ...]  # candidate indices of the referred object(s)
    kind: str | None = None
    exp_id: str = ""


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def gt_tracklet_table(reader, vid: str) -> pa.Table:
    """Ground-truth object tracklets of one video (``TRACKLET_SCHEMA``): one tracklet per object
    id (tracklet_id = object id), rows on the annotated frames (empty RLE where not visible)."""
    video = reader.video(vid)
    index = {n: i for i, n in enumerate(video.frame_names)}
    names = reader.annotated_frames(vid)
    labels = [reader.label_map(vid, n) for n in names]
    objs = sorted(int(o) for o in reader.categories().get(vid, {}))
    if not objs:  # no meta.json entry: every id seen in the annotations
        objs = sorted({int(v) for lab in labels for v in np.unique(lab) if v})
    cols: dict[str, list] = {k: [] for k in TRACKLET_SCHEMA.names}
    for n, lab in zip(names, labels):
        if n not in index:
            raise DataError(f"{reader.annotation_path(vid, n)}: frame {n!r} is not a frame of video {vid}")
        h, w = lab.shape
        codes = rle.encode_many(np.stack([lab == o for o in objs])) if objs else []
        for o, c in zip(objs, codes):
            cols["video_id"].append(vid)
            cols["tracklet_id"].append(o)
            cols["keyframe"].append(-1)
            cols["source"].append("gt")
            cols["det_score"].append(1.0)
            cols["frame"].append(index[n])
            cols["height"].append(h)
            cols["width"].append(w)
            cols["rle"].append(c)
            cols["prob"].append(1.0)
    return table_from_columns(cols, TRACKLET_SCHEMA, f"gt tracklets of {vid}")


def _match(pipeline: TrackletGrid, gt: TrackletGrid, frames: Sequence[int], obj_col: int, min_iou: float) -> int | None:
    """Index of the pipeline tracklet best matching gt column ``obj_col`` (tracklet-IoU over
    ``frames``), or None when none reaches ``min_iou``."""
    def column(grid: TrackletGrid, cols: range) -> list[list[bytes]]:
        return [[grid.rles[t][p] or rle.empty(grid.height, grid.width) for p in cols] for t in frames]
    a = column(pipeline, range(len(pipeline.tracklet_ids)))
    b = column(gt, range(obj_col, obj_col + 1))
    tiou = rle.tracklet_iou(a, b, gt.height, gt.width)[:, 0]
    if len(tiou) == 0 or tiou.max() < min_iou:
        return None
    return int(tiou.argmax())


def refytvos_clips(reader, tracklets_dir: str = "", match_iou: float = 0.5,
                   videos: Iterable[str] | None = None) -> tuple[list[Group], list[Clip]]:
    """Clips of a Ref-YouTube-VOS-layout split (``reader`` is a ``RefYTVOS``)."""
    groups: list[Group] = []
    clips: list[Clip] = []
    for vid in videos if videos is not None else reader.video_ids():
        video = reader.video(vid)
        gt = tracklet_grid(gt_tracklet_table(reader, vid), video)
        frames = tuple(t for t in range(video.num_frames) if any(c is not None for c in gt.rles[t]))
        grid = gt
        if tracklets_dir:
            path = fio.join(tracklets_dir, f"{vid}.parquet")
            if not fio.exists(path):
                raise DataError(f"pipeline tracklets for {vid}: {path} does not exist")
            import pyarrow.parquet as pq

            fs, local = fio.resolve(path)
            grid = tracklet_grid(pq.read_table(local, filesystem=fs), video)
        exprs = reader.expressions(vid)
        gidx = len(groups)
        used = False
        for e in exprs:
            cols = [gt.tracklet_ids.index(o) for o in e.obj_ids if o in gt.tracklet_ids]
            if not cols:
                continue
            if tracklets_dir:
                found = {_match(grid, gt, frames, c, match_iou) for c in cols} - {None}
                targets = tuple(sorted(found))
            else:
                targets = tuple(cols)
            if targets:
                clips.append(Clip(gidx, e.text, targets, e.kind, e.exp_id))
                used = True
        if used:
            groups.append(Group(vid, video, grid, frames))
    return groups, clips


def refcoco_clips(dataset, split: str, max_candidates: int | None = None) -> tuple[list[Group], list[Clip]]:
    """Clips of a REFER dataset (``dataset`` is a :class:`rvos_ray.data.refcoco.RefCOCO`)."""
    groups: list[Group] = []
    clips: list[Clip] = []
    index: dict[tuple, int] = {}
    for s in dataset.samples(split, max_candidates=max_candidates):
        key = (s.image_id, s.ann_ids)
        if key not in index:
            index[key] = len(groups)
            video = Video(f"coco{s.image_id}", ("0",), (s.image_path,))
            grid = TrackletGrid(s.ann_ids, [list(s.rles)], s.height, s.width)
            groups.append(Group(f"coco{s.image_id}-{s.ref_id}", video, grid, (0,)))
        clips.append(Clip(index[key], s.text, (s.target,), None, f"{s.ref_id}/{s.sent_id}"))
    return groups, clips


# --------------------------------------------------------------------------------------------
# Frozen-feature cache
# --------------------------------------------------------------------------------------------


@dataclass
class FeatureCache:
    """Per group: pooled (n, P, Cv) and present (n, P) over the group's ``frames``, and the
    boxes (T, P, 5) / box_present (T, P) of every frame of its video (for the temporal option's
    geometry, computed per variant by :meth:`with_geometry`); per clip: words (L, Ct), targets,
    kind. Depends on the encoders only, so variants sharing them share one cache."""

    pooled: list[torch.Tensor]
    present: list[torch.Tensor]
    frames: list[list[int]]
    boxes: list[torch.Tensor]
    box_present: list[torch.Tensor]
    words: list[torch.Tensor]
    clip_group: list[int]
    clip_targets: list[list[int]]
    clip_kind: list[str]
    geometry: list[torch.Tensor] | None = None  # (n, P, G) per group, set by with_geometry

    def state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "geometry"}

    @classmethod
    def load(cls, path: str) -> FeatureCache:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))

    def with_geometry(self, opts) -> FeatureCache:
        """Adds the geometry features of ``opts`` (a TemporalOptions; disabled: none)."""
        if not opts.enabled:
            self.geometry = None
            return self
        self.geometry = [
            torch.from_numpy(geometry_features(b.numpy(), p.numpy(), opts)[f])
            for b, p, f in zip(self.boxes, self.box_present, self.frames)
        ]
        return self


def cache_key(model: Grounder, groups: Sequence[Group], clips: Sequence[Clip]) -> str:
    """Names a cache by what it depends on: encoders (weights digests), temporal options, data."""
    h = hashlib.sha1()
    h.update(repr((model.visual.sharing_key(), model.text.sharing_key())).encode())
    for g in groups:
        h.update(repr((g.key, g.frames, g.video.frame_paths, g.grid.tracklet_ids)).encode())
        for row in g.grid.rles:
            h.update(b"".join(c or b"-" for c in row))
    h.update(json.dumps([(c.group, c.text, c.targets) for c in clips]).encode())
    return h.hexdigest()[:16]


@torch.inference_mode()
def build_feature_cache(model: Grounder, groups: Sequence[Group], clips: Sequence[Clip],
                        batch_size: int = 16, text_batch: int = 64) -> FeatureCache:
    """Runs the frozen backbones once per group frame and once per clip text."""
    pooled, present, boxes, box_present = [], [], [], []
    for g in groups:
        ps, pr = [], []
        for s in range(0, len(g.frames), batch_size):
            chunk = g.frames[s : s + batch_size]
            images = [read_image(g.video.frame_paths[t]) for t in chunk]
            fmap = model.visual.features(model.visual.preprocess(images)).float()
            w = torch.stack([mask_weights(g.grid.frame_masks(t), tuple(fmap.shape[-2:])) for t in chunk])
            p, m = pool_with_weights(fmap, w.to(fmap.device))
            ps.append(p.cpu())
            pr.append(m.cpu())
        pooled.append(torch.cat(ps))
        present.append(torch.cat(pr))
        b, bp = boxes_from_rles(g.grid.rles, g.grid.height, g.grid.width)
        boxes.append(torch.from_numpy(b))
        box_present.append(torch.from_numpy(bp))
    words = []
    for s in range(0, len(clips), text_batch):
        hidden, mask = model.text.encode([c.text for c in clips[s : s + text_batch]])
        words += [h[m].float().cpu() for h, m in zip(hidden, mask)]
    cache = FeatureCache(pooled, present, [list(g.frames) for g in groups], boxes, box_present, words,
                         [c.group for c in clips], [list(c.targets) for c in clips],
                         [c.kind or "" for c in clips])
    return cache.with_geometry(model.temporal)


# --------------------------------------------------------------------------------------------
# Batches: one row per (clip, frame)
# --------------------------------------------------------------------------------------------


def make_batch(cache: FeatureCache, clip_ids: Sequence[int], frames_per_clip: int | None,
               rng: random.Random | None = None) -> dict[str, torch.Tensor]:
    """Padded tensors for the head: rows = ``frames_per_clip`` frames per clip (None: all),
    sampled among the frames where a target is visible (all frames when it never is)."""
    rows = []
    for c in clip_ids:
        g = cache.clip_group[c]
        pres = cache.present[g]
        tg = cache.clip_targets[c]
        n = pres.shape[0]
        seen = [t for t in range(n) if bool(pres[t, tg].any())] or list(range(n))
        if frames_per_clip is not None and len(seen) > frames_per_clip:
            seen = (rng or random).sample(seen, frames_per_clip)
        rows += [(c, g, t) for t in seen]
    B = len(rows)
    P = max(cache.present[g].shape[1] for _, g, _ in rows)
    L = max(cache.words[c].shape[0] for c, _, _ in rows)
    Cv = cache.pooled[0].shape[-1]
    Ct = cache.words[0].shape[-1]
    out = {
        "pooled": torch.zeros(B, P, Cv),
        "present": torch.zeros(B, P, dtype=torch.bool),
        "valid": torch.zeros(B, P, dtype=torch.bool),
        "words": torch.zeros(B, L, Ct),
        "word_valid": torch.zeros(B, L, dtype=torch.bool),
        "target": torch.zeros(B, P, dtype=torch.bool),
        "clip": torch.tensor([c for c, _, _ in rows], dtype=torch.long),
    }
    if cache.geometry is not None:
        out["geometry"] = torch.zeros(B, P, cache.geometry[0].shape[-1])
    for i, (c, g, t) in enumerate(rows):
        p = cache.present[g].shape[1]
        out["pooled"][i, :p] = cache.pooled[g][t]
        out["present"][i, :p] = cache.present[g][t]
        out["valid"][i, :p] = True
        w = cache.words[c]
        out["words"][i, : len(w)] = w
        out["word_valid"][i, : len(w)] = True
        out["target"][i, cache.clip_targets[c]] = True
        if cache.geometry is not None:
            out["geometry"][i, :p] = cache.geometry[g][t]
    return out
