"""CFBI+ propagation backend (registered as ``propagation.backend: cfbi``).

Each candidate of a keyframe is propagated as its own candidate-vs-background problem, but the
backbone runs once per frame for all candidates of a call, and matching + ensembler run batched
over ``candidate_batch`` candidates at a time. Frames are streamed (read, resized, encoded, then
dropped); the only state kept is the reference frame's features and masks, the previous frame's
features and masks, and the RLE masks already produced. Memory is flat in video length.

See :mod:`rvos_ray.stages.propagate` for the frame order and the definition of the propagation
probability.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from rvos_ray import masks as rle
from rvos_ray.data.errors import DataError
from rvos_ray.data.io import read_image
from rvos_ray.models.cfbi import CFBIConfig, config_from_dict
from rvos_ray.registry import ConfigError
from rvos_ray.stages.propagate import (
    ModelPropagator,
    TrackletBuilder,
    decode_candidates,
    frame_order,
    keyframe_rows,
    masks_and_probabilities,
)
from rvos_ray.types import Candidates, Video


class CFBIPropagator(ModelPropagator):
    """Propagates keyframe candidates with a CFBI+ network (:mod:`rvos_ray.models.cfbi`).

    ``feature_cache_frames`` (``propagation.avoid``): the backbone features of that many recent
    frames are kept (least recently used out), so a video's later calls on this propagator --
    its other keyframes and candidate chunks -- do not encode the same frames again."""

    FEATURE_CACHE = True

    @dataclass
    class Options:
        # network architecture; None: the one stored in ``checkpoint`` (paper defaults without)
        model: Optional[CFBIConfig] = None
        checkpoint: str = ""  # train-propagator model.pt (path or URI); "" = random init
        long_edge: int = 800  # frames resized so the long edge is this (multiple of 16 sides)
        candidate_batch: int = 8  # candidates matched + decoded together (memory vs speed)
        threshold: float = 0.5  # foreground probability above which a pixel is in the mask
        device: str = "auto"  # cpu | cuda | cuda:N | auto (cuda when available)
        num_threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def __init__(self, options: Options, feature_cache_frames: int = 0) -> None:
        import torch

        from rvos_ray.models.cfbi import CFBIPlus

        self.options = options
        self.cache_frames = max(int(feature_cache_frames), 0)
        self._features: OrderedDict[tuple, Any] = OrderedDict()
        if options.candidate_batch < 1:
            raise ConfigError(f"propagation.options.candidate_batch must be >= 1, got {options.candidate_batch}")
        if options.num_threads > 0:
            torch.set_num_threads(options.num_threads)
        dev = options.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        state = read_checkpoint(options.checkpoint) if options.checkpoint else None
        cfg = options.model
        if cfg is None:
            cfg = config_from_dict(state["config"]) if state is not None else CFBIConfig()
        try:
            self.model = CFBIPlus(cfg)
        except ValueError as e:
            raise ConfigError(f"propagation.options.model: {e}") from e
        if state is not None:
            load_weights(self.model, state, options.checkpoint)
        self.model.to(self.device).eval()

    @property
    def backbone_forward_passes(self) -> int:
        """Backbone (encoder) forward passes so far; one per frame per propagate call."""
        return self.model.encoder_calls

    # ------------------------------------------------------------------------------------------
    def _run(self, video: Video, candidates: Candidates, builder: TrackletBuilder) -> None:
        import torch
        import torch.nn.functional as F

        from rvos_ray.models.cfbi import input_size
        from rvos_ray.models.cfbi_matching import downsample_masks

        h, w = candidates.height, candidates.width
        size = input_size(h, w, self.options.long_edge, self.model.cfg.stride)
        kf = candidates.frame
        ref_masks = torch.from_numpy(decode_candidates(candidates)).to(self.device)
        ref_masks = downsample_masks(ref_masks.unsqueeze(0), size)  # 1, K, h_in, w_in
        builder.record(kf, *keyframe_rows(candidates))
        ref_feats = self._encode(video, kf, size, (h, w))
        k, step = len(candidates), self.options.candidate_batch
        for order in frame_order(video.num_frames, kf):
            prev_feats, prev_masks = ref_feats, ref_masks
            for t in order:
                feats = self._encode(video, t, size, (h, w))
                new_prev = torch.empty_like(prev_masks)
                rles, probs = [], []
                for s in range(0, k, step):
                    sl = slice(s, min(s + step, k))
                    logits = self.model.decode(feats, ref_feats, ref_masks[:, sl], prev_feats, prev_masks[:, sl])
                    new_prev[:, sl] = (F.interpolate(logits, size=size, mode="bilinear") > 0).float()
                    prob = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear"))[0]
                    m, p = masks_and_probabilities(prob.float().cpu().numpy(), self.options.threshold)
                    rles += rle.encode_many(m)
                    probs += p
                builder.record(t, rles, probs)
                prev_feats, prev_masks = feats, new_prev

    def _encode(self, video: Video, t: int, size: tuple[int, int], frame_hw: tuple[int, int]):
        from rvos_ray.models.cfbi import preprocess

        key = (video.video_id, video.frame_paths[t], size)
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key]
        image = read_image(video.frame_paths[t])
        if image.shape[:2] != frame_hw:
            raise DataError(
                f"{video.frame_paths[t]}: frame is {image.shape[0]}x{image.shape[1]}, the keyframe "
                f"candidates are {frame_hw[0]}x{frame_hw[1]}"
            )
        feats = self.model.encode(preprocess(image, size).to(self.device))
        if self.cache_frames:
            self._features[key] = feats
            while len(self._features) > self.cache_frames:
                self._features.popitem(last=False)
        return feats


def read_checkpoint(path: str) -> dict:
    """A train-propagator checkpoint (``{"config", "model", ...}``), loaded ``weights_only``."""
    from rvos_ray.models.cfbi import load_state

    try:
        state = load_state(path)
    except FileNotFoundError as e:
        raise ConfigError(f"propagation checkpoint {path} does not exist") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"{path}: not a train-propagator checkpoint (expected keys 'config', 'model')")
    return state


def load_weights(model, state: dict, path: str) -> None:
    """Load checkpoint weights into ``model``; a checkpoint built for another architecture is
    a ConfigError naming the differing keys."""
    saved = state["config"]
    want = dataclasses.asdict(model.cfg)
    diff = sorted(k for k in saved if k != "backbone_weights" and saved[k] != want.get(k))
    if diff:
        raise ConfigError(
            f"{path}: checkpoint architecture differs from propagation.options.model in "
            + ", ".join(f"{k} (checkpoint {saved[k]!r}, config {want.get(k)!r})" for k in diff)
        )
    model.load_state_dict(state["model"])

