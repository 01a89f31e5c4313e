"""Training clips for the CFBI+ propagator: (reference, previous, current) frames of one object.

Sampled from a Ref-YouTube-VOS / YouTube-VOS layout split through
:class:`rvos_ray.data.refytvos.RefYTVOS`, over its annotated frames. Each object is its own
binary problem (object vs. everything else), as the propagator runs it. Per clip:

* a video, and (with probability ``reverse``) its frames in reverse order, so the network
  learns backward propagation too;
* previous frame i and current frame i + g, g uniform in 1..``max_gap`` (annotated frames);
* reference frame uniform in 0..i: the keyframe may be far from the frames being segmented;
* an object visible in the reference frame (at least ``min_pixels`` pixels there);
* the three frames scaled alike (short edge to ``short_edge``, 0 = as stored, times a random
  factor in ``scale_range``) and cropped alike to ``input_size`` (CFBI trains on crops: 465x465
  of 480p frames), the crop placed so that it holds a pixel of the object in the reference
  frame; frames smaller than the crop are scaled up to cover it;
* a horizontal flip of all three frames with probability ``flip``.

Training on crops at the inference resolution keeps the stride-4 output fine enough for small
objects while a step costs only the crop. Sampling is a pure function of the ``numpy``
generator it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rvos_ray.data.errors import DataError
from rvos_ray.data.io import read_image
from rvos_ray.models.cfbi import preprocess
from rvos_ray.models.cfbi_matching import downsample_masks


@dataclass
class ClipDataConfig:
    root: str = "data/shapes"  # dataset root (Ref-YouTube-VOS / YouTube-VOS layout), path or URI
    split: str = "train"
    videos: Any = None  # None (all), a count, or a list of video ids
    input_size: list[int] = field(default_factory=lambda: [96, 160])  # (h, w) crop fed to the model, x16
    short_edge: int = 0  # frames scaled so their short edge is this before cropping; 0 = as stored
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])  # extra random scale
    max_gap: int = 3  # previous -> current distance in annotated frames
    reverse: float = 0.5  # probability of a backward clip
    flip: float = 0.5  # probability of a horizontal flip
    min_pixels: int = 16  # an object must have this many pixels in the reference frame


class Clip(dict):
    """A batch of clips: ``ref``/``prev``/``cur`` images (B, 3, h, w) in [0, 1] and
    ``ref_mask``/``prev_mask``/``cur_mask`` (B, h, w) of 0/1."""


class ClipSampler:
    """Samples training clips from one split (see the module docstring)."""

    def __init__(self, cfg: ClipDataConfig) -> None:
        from rvos_ray.data.refytvos import RefYTVOS

        if not cfg.input_size or len(cfg.input_size) != 2:
            raise DataError(f"data.input_size must be [height, width], got {cfg.input_size}")
        self.cfg = cfg
        self.size = (int(cfg.input_size[0]), int(cfg.input_size[1]))
        self.ds = RefYTVOS(cfg.root, cfg.split)
        vids = self.ds.video_ids()
        if isinstance(cfg.videos, int):
            vids = vids[: cfg.videos]
        elif cfg.videos:
            vids = [v for v in vids if v in set(cfg.videos)]
        self.videos: list[tuple[str, list[str], list[str]]] = []  # (vid, frame names, paths)
        for vid in vids:
            video = self.ds.video(vid)
            path_of = dict(zip(video.frame_names, video.frame_paths))
            names = [n for n in self.ds.annotated_frames(vid) if n in path_of]
            if len(names) >= 2:
                self.videos.append((vid, names, [path_of[n] for n in names]))
        if not self.videos:
            raise DataError(f"{cfg.root} split {cfg.split!r}: no video with two annotated frames")

    def sample(self, rng: np.random.Generator, batch_size: int) -> Clip:
        items = [self._one(rng) for _ in range(batch_size)]
        return Clip({k: torch.stack([it[k] for it in items]) for k in items[0]})

    def _one(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        for _ in range(50):
            vid, names, paths = self.videos[int(rng.integers(len(self.videos)))]
            order = list(range(len(names)))
            if rng.random() < cfg.reverse:
                order.reverse()
            n = len(order)
            i_prev = int(rng.integers(0, n - 1))
            gap = int(rng.integers(1, min(cfg.max_gap, n - 1 - i_prev) + 1))
            i_ref = int(rng.integers(0, i_prev + 1))
            ref, prev, cur = order[i_ref], order[i_prev], order[i_prev + gap]
            ref_lab = self.ds.label_map(vid, names[ref])
            ids, counts = np.unique(ref_lab, return_counts=True)
            ok = [int(i) for i, c in zip(ids, counts) if i != 0 and c >= cfg.min_pixels]
            if ok:
                break
        else:
            raise DataError(f"{cfg.root}: no object with >= {cfg.min_pixels} pixels in 50 sampled clips")
        obj = ok[int(rng.integers(len(ok)))]
        h, w = ref_lab.shape
        scale = (cfg.short_edge / min(h, w) if cfg.short_edge else 1.0) * rng.uniform(*cfg.scale_range)
        ch, cw = self.size
        scale = max(scale, ch / h, cw / w)  # the scaled frame covers the crop
        sh, sw = max(ch, int(round(h * scale))), max(cw, int(round(w * scale)))
        ys, xs = np.nonzero(ref_lab == obj)
        i = int(rng.integers(len(ys)))
        py, px = int(ys[i] * sh / h), int(xs[i] * sw / w)  # an object pixel, in scaled coordinates
        y0 = int(np.clip(py - rng.integers(0, ch), 0, sh - ch))
        x0 = int(np.clip(px - rng.integers(0, cw), 0, sw - cw))
        out = {}
        for key, t, lab in (("ref", ref, ref_lab), ("prev", prev, None), ("cur", cur, None)):
            if lab is None:
                lab = self.ds.label_map(vid, names[t])
            image = preprocess(read_image(paths[t]), (sh, sw))[0]
            mask = downsample_masks(torch.from_numpy((lab == obj).astype(np.float32)), (sh, sw))
            out[key] = image[:, y0 : y0 + ch, x0 : x0 + cw]
            out[key + "_mask"] = mask[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < cfg.flip:
            out = {k: v.flip(-1) for k, v in out.items()}
        return out
