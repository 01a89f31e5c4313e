"""A group of grounder variants run together: every expression of a video against its
tracklets, with every variant of the group (the model of :class:`rvos_ray.stages.ground.GroundStage`).

Cost model, which is the point of this module: the backbones are the expensive part, so

* each frame is read once and each *distinct* visual backbone runs once per grounded frame
  (batched ``batch_size`` frames per call), no matter how many expressions or variants use it;
* each distinct text encoder runs once per expression;
* variants whose backbones are equal (same :meth:`sharing_key`: name, stage, input size and a
  digest of the weights) share one backbone module and its outputs; only their projections and
  heads, which are small, run per variant.

Feature maps are reduced to per-tracklet pooled features (Eq. 5) right after each backbone call,
so no full-resolution map is kept. Ray-free; the runtime runs one group per actor.

``counts`` records the encoder work done (frames read, frames / expressions through each
backbone, backbone calls), so benches and tests can check the "once per frame" claims.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rvos_ray import masks as rle
from rvos_ray.data.errors import DataError
from rvos_ray.data.io import read_image
from rvos_ray.models.grounder import (
    Grounder,
    boxes_from_rles,
    geometry_features,
    mask_weights,
    masked_softmax,
    pool_with_weights,
)
from rvos_ray.registry import ConfigError
from rvos_ray.seeding import seeded
from rvos_ray.types import (
    GROUNDING_SCHEMA,
    TRACKLET_SCHEMA,
    Expression,
    Resources,
    Video,
    table_from_columns,
    validate,
)

__all__ = ["EncoderCounts", "GrounderGroup", "TrackletGrid", "tracklet_grid"]


@dataclass
class EncoderCounts:
    """Work done by the encoders since the stage was built (keys: encoder labels)."""

    frames_read: int = 0
    visual_frames: Counter = field(default_factory=Counter)  # frames through each visual backbone
    visual_calls: Counter = field(default_factory=Counter)  # batched backbone calls
    text_expressions: Counter = field(default_factory=Counter)  # expressions through each text encoder
    text_calls: Counter = field(default_factory=Counter)
    head_pairs: Counter = field(default_factory=Counter)  # (expression, frame) pairs per variant

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class TrackletGrid:
    """A video's tracklet table as a frame x tracklet grid of RLEs (None = no row)."""

    tracklet_ids: tuple[int, ...]
    rles: list[list[bytes | None]]  # [frame][p]
    height: int
    width: int

    def frame_masks(self, t: int) -> np.ndarray:
        """(P, H, W) uint8 masks of frame t (zeros where a tracklet has no mask)."""
        out = np.zeros((len(self.tracklet_ids), self.height, self.width), dtype=np.uint8)
        for p, c in enumerate(self.rles[t]):
            if c is not None:
                out[p] = rle.decode(c, self.height, self.width)
        return out


def tracklet_grid(table: pa.Table, video: Video) -> TrackletGrid:
    """Rows of ``video`` in a tracklet table -> :class:`TrackletGrid` over the video's frames."""
    table = validate(table, TRACKLET_SCHEMA, f"tracklets of {video.video_id}")
    table = table.filter(pc.equal(table["video_id"], video.video_id))
    tids = table["tracklet_id"].to_pylist()
    frames = table["frame"].to_pylist()
    counts = table["rle"].to_pylist()
    sizes = set(zip(table["height"].to_pylist(), table["width"].to_pylist()))
    if len(sizes) > 1:
        raise DataError(f"tracklets of {video.video_id}: masks of several sizes {sorted(sizes)}")
    height, width = sizes.pop() if sizes else (0, 0)
    ids = tuple(sorted(set(tids)))
    col = {t: i for i, t in enumerate(ids)}
    grid: list[list[bytes | None]] = [[None] * len(ids) for _ in range(video.num_frames)]
    for tid, f, c in zip(tids, frames, counts):
        if not 0 <= f < video.num_frames:
            raise DataError(f"tracklets of {video.video_id}: frame {f} outside the video's "
                            f"{video.num_frames} frames (tracklet {tid})")
        grid[f][col[tid]] = c
    return TrackletGrid(ids, grid, int(height), int(width))


def _label(key: tuple) -> str:
    # ("timm", "resnet18", 3, 0, digest) -> "timm:resnet18/3/0#abcd1234"
    return f"{key[0]}:{'/'.join(map(str, key[1:-1]))}#{str(key[-1])[:8]}"


class GrounderGroup:
    """Grounds all expressions of a video with several :class:`Grounder` variants.

    ``frame_stride`` grounds every n-th frame (s_p then averages over those); ``batch_size``
    frames go through a backbone per call; ``pairs_per_call`` (expression, frame) pairs through
    a head per call.
    """

    def __init__(
        self,
        variants: Sequence[Grounder],
        frame_stride: int = 1,
        batch_size: int = Resources.batch_size,
        pairs_per_call: int = 512,
        device: str | torch.device = "cpu",
    ) -> None:
        if not variants:
            raise ConfigError("grounding: no variants to run")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"grounding: variant names must be unique, got {names}")
        if frame_stride < 1 or batch_size < 1:
            raise ConfigError(f"grounding: frame_stride {frame_stride} and batch_size {batch_size} must be >= 1")
        self.frame_stride = int(frame_stride)
        self.batch_size = int(batch_size)
        self.pairs_per_call = int(pairs_per_call)
        self.device = torch.device(device)
        self.variants = [v.to(self.device).eval() for v in variants]
        # One backbone per sharing key; variants with an equal key point at the same module.
        self.visual: dict[tuple, Any] = {}
        self.text: dict[tuple, Any] = {}
        self._keys: dict[str, tuple[tuple, tuple]] = {}
        for v in self.variants:
            vk, tk = v.visual.sharing_key(), v.text.sharing_key()
            if vk in self.visual:
                v.visual.backbone = self.visual[vk].backbone
            else:
                self.visual[vk] = v.visual
            if tk in self.text:
                v.text.model = self.text[tk].model
            else:
                self.text[tk] = v.text
            self._keys[v.name] = (vk, tk)
        self.counts = EncoderCounts()

    @classmethod
    def from_config(cls, section: Mapping[str, Any], variants: Sequence[str] | None = None,
                    device: str | None = None, seed: int | None = None) -> GrounderGroup:
        """From the ``grounding`` config section; ``variants`` picks a subset by name; ``seed``:
        every variant is built with the RNGs seeded to it (a head without a checkpoint gets the
        same weights whichever variants share its stage)."""
        entries = list(section.get("variants") or [])
        if variants is not None:
            known = [str(e.get("name")) for e in entries]
            missing = [n for n in variants if n not in known]
            if missing:
                raise ConfigError(f"grounding.variants: no variant named {missing}; known: {known}")
            entries = [(i, e) for i, e in enumerate(entries) if str(e.get("name")) in set(variants)]
        else:
            entries = list(enumerate(entries))
        res = Resources.of(section)
        if device is None:
            device = "cuda" if res.num_gpus > 0 and torch.cuda.is_available() else "cpu"

        def build(i: int, e: Mapping[str, Any]) -> Grounder:
            return Grounder.from_config(e, f"grounding.variants[{i}]")

        models = [build(i, e) if seed is None else seeded(seed, lambda i=i, e=e: build(i, e)) for i, e in entries]
        return cls(models, frame_stride=int(section.get("frame_stride", 1)), batch_size=res.batch_size,
                   device=device)

    # ------------------------------------------------------------------------------------------

    def ground(self, video: Video, tracklets: pa.Table, expressions: Sequence[Expression]) -> pa.Table:
        """The grounding table (``GROUNDING_SCHEMA``) of every (variant, expression, grounded
        frame, tracklet). A video without tracklets or expressions gives an empty table."""
        grid = tracklet_grid(tracklets, video)
        P, E = len(grid.tracklet_ids), len(expressions)
        frames = list(range(0, video.num_frames, self.frame_stride))
        if P == 0 or E == 0 or not frames:
            return GROUNDING_SCHEMA.empty_table()
        with torch.inference_mode():
            pooled, present = self._pool_visual(video, grid, frames)
            words = self._encode_text(expressions)
            geometry = self._geometry(grid, frames)
            cols: dict[str, list] = {k: [] for k in GROUNDING_SCHEMA.names}
            for v in self.variants:
                vk, tk = self._keys[v.name]
                probs = self._score(v, pooled[vk], present[vk], *words[tk], geometry.get(v.name))
                self._emit(cols, video.video_id, v.name, expressions, frames, grid.tracklet_ids, probs)
        return table_from_columns(cols, GROUNDING_SCHEMA, "grounding")

    def _pool_visual(self, video: Video, grid: TrackletGrid, frames: list[int]):
        n, P = len(frames), len(grid.tracklet_ids)
        pooled = {k: torch.zeros(n, P, enc.width, device=self.device) for k, enc in self.visual.items()}
        present = {k: torch.zeros(n, P, dtype=torch.bool, device=self.device) for k in self.visual}
        for s in range(0, n, self.batch_size):
            chunk = frames[s : s + self.batch_size]
            images = [read_image(video.frame_paths[f]) for f in chunk]
            self.counts.frames_read += len(images)
            for f, im in zip(chunk, images):
                if im.shape[:2] != (grid.height, grid.width):
                    raise DataError(f"{video.frame_paths[f]}: frame is {im.shape[1]}x{im.shape[0]} but "
                                    f"its tracklet masks are {grid.width}x{grid.height}")
            masks = [grid.frame_masks(f) for f in chunk]
            for key, enc in self.visual.items():
                fmap = enc.features(enc.preprocess(images))
                self.counts.visual_frames[_label(key)] += len(chunk)
                self.counts.visual_calls[_label(key)] += 1
                w = torch.stack([mask_weights(m, tuple(fmap.shape[-2:])) for m in masks]).to(fmap.device)
                p, pres = pool_with_weights(fmap.float(), w)
                pooled[key][s : s + len(chunk)] = p
                present[key][s : s + len(chunk)] = pres
        return pooled, present

    def _encode_text(self, expressions: Sequence[Expression]):
        texts = [e.text for e in expressions]
        out = {}
        for key, enc in self.text.items():
            hidden, mask = enc.encode(texts)
            self.counts.text_expressions[_label(key)] += len(texts)
            self.counts.text_calls[_label(key)] += 1
            out[key] = (hidden.float(), mask)
        return out

    def _geometry(self, grid: TrackletGrid, frames: list[int]) -> dict[str, torch.Tensor]:
        temporal = [v for v in self.variants if v.temporal.enabled]
        if not temporal:
            return {}
        boxes, present = boxes_from_rles(grid.rles, grid.height, grid.width)
        out = {}
        for v in temporal:
            g = geometry_features(boxes, present, v.temporal)[frames]
            out[v.name] = torch.from_numpy(g).to(self.device)
        return out

    def _score(self, v: Grounder, pooled, present, words, word_valid, geometry) -> torch.Tensor:
        """(E, n, P) probabilities s_p^t for every expression and grounded frame."""
        n, P, _ = pooled.shape
        E = words.shape[0]
        vis = v.visual.project(pooled)  # projected once per frame, reused by every expression
        txt = v.text.project(words)  # once per expression, reused by every frame
        valid = torch.ones(n, P, dtype=torch.bool, device=self.device)
        out = torch.empty(E * n, P, device=self.device)
        pair_e = torch.arange(E, device=self.device).repeat_interleave(n)
        pair_f = torch.arange(n, device=self.device).repeat(E)
        for s in range(0, E * n, self.pairs_per_call):
            e, f = pair_e[s : s + self.pairs_per_call], pair_f[s : s + self.pairs_per_call]
            logits = v.head(vis[f], present[f], valid[f], txt[e], word_valid[e],
                            None if geometry is None else geometry[f])
            out[s : s + len(e)] = masked_softmax(logits, valid[f])
        self.counts.head_pairs[v.name] += E * n
        return out.view(E, n, P)

    @staticmethod
    def _emit(cols, video_id, variant, expressions, frames, tracklet_ids, probs) -> None:
        E, n, P = probs.shape
        cols["video_id"] += [video_id] * (E * n * P)
        cols["exp_id"] += [e.exp_id for e in expressions for _ in range(n * P)]
        cols["variant"] += [variant] * (E * n * P)
        cols["tracklet_id"] += list(tracklet_ids) * (E * n)
        cols["frame"] += [f for f in frames for _ in range(P)] * E
        cols["prob"] += probs.reshape(-1).cpu().numpy().tolist()
