"""The tracklet-language grounder (paper Eqs. 4-6), readable top to bottom.

Per frame t and expression Q:

* tracklet tokens τ_p^t = mask average pooling of the visual feature map under M_p^t (Eq. 5),
  masks reduced to the feature grid by area averaging, so a mask smaller than a feature cell
  still weighs in. A tracklet whose mask is empty on frame t gets a learned ``absent`` token;
  nothing is ever divided by zero.
* tokens [Γ^t + e_v ; Q + e_l] go through a Transformer encoder with key padding masks for
  padded words and for fewer than P tracklets (Eq. 6). e_v / e_l are one learned vector per
  modality added to every token of that modality: a per-slot e_v would make the answer depend on
  the order of the tracklets, which carries no meaning.
* a 2-layer MLP scores each tracklet token; softmax over the real tracklets gives s_p^t;
  s_p = mean_t s_p^t and the answer is argmax_p s_p (done by the stage / ensemble).

Temporal option (``head.temporal.enabled``, off in the paper config): a per-frame grounder
cannot tell "the dog running left" from a dog standing still, so each tracklet token can get an
embedding of its mask geometry: box centre, size and fill on frame t, and the change of centre
and size to the frames t-k and t+k for each offset k. The geometry is computed from the tracklet's
RLE masks over the whole video, so it is available for every grounded frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rvos_ray import masks as rle
from rvos_ray.registry import TEXT_ENCODERS, VISUAL_ENCODERS, ConfigError, parse_options

__all__ = [
    "TemporalOptions",
    "HeadOptions",
    "GroundingHead",
    "Grounder",
    "geometry_features",
    "boxes_from_rles",
    "mask_weights",
    "pool_with_weights",
    "masked_softmax",
    "grounding_loss",
]


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass
class TemporalOptions:
    enabled: bool = False  # add mask-geometry / motion context to every tracklet token
    offsets: list[int] = field(default_factory=lambda: [1, 3])  # frame offsets k of the box change
    velocity_scale: float = 10.0  # change per frame is multiplied by this before the MLP


@dataclass
class HeadOptions:
    dim: int = 768  # D: width of tokens, Transformer and projections (paper: 768)
    layers: int = 4  # Transformer encoder layers (paper: 4)
    heads: int = 12  # attention heads per layer (paper: 12)
    ffn_dim: int = 3072  # feed-forward width inside each layer
    dropout: float = 0.1
    mlp_hidden: int = 768  # hidden width of the 2-layer scoring MLP
    temporal: TemporalOptions = field(default_factory=TemporalOptions)


def geometry_dim(t: TemporalOptions) -> int:
    # static: cx, cy, w, h, fill, present; per offset and direction: dcx, dcy, dw, dh, valid
    return 6 + 10 * len(t.offsets)


# --------------------------------------------------------------------------------------------
# Mask pooling and geometry (numpy / torch helpers shared by the stage and training)
# --------------------------------------------------------------------------------------------


def mask_weights(masks: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(P, H, W) 0/1 masks -> (P, h, w) fraction of each feature cell the mask covers."""
    m = torch.as_tensor(masks).float()
    if m.ndim != 3:
        raise ValueError(f"mask_weights expects (P, H, W) masks, got shape {tuple(m.shape)}")
    if m.shape[0] == 0:
        return m.new_zeros((0, *grid))
    return F.adaptive_avg_pool2d(m[None], grid)[0]


def pool_with_weights(fmap: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5. ``fmap`` (N, C, h, w), ``weights`` (N, P, h, w) -> pooled (N, P, C), present (N, P).

    Rows of empty masks are zeros with ``present`` False (the head swaps in its absent token).
    """
    weights = weights.to(fmap.dtype)
    den = weights.sum(dim=(2, 3))  # (N, P)
    num = torch.einsum("nphw,nchw->npc", weights, fmap)
    present = den > 0
    pooled = num / den.clamp_min(1e-12).unsqueeze(-1)
    return pooled * present.unsqueeze(-1), present


def boxes_from_rles(rles: Sequence[Sequence[bytes | None]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``rles[t][p]`` (None = no mask) -> boxes (T, P, 5) as x0, y0, x1, y1 in [0, 1] plus the
    fill (mask area / box area, which tells a circle from a cross), and present (T, P);
    computed on the run-length encoding, without decoding."""
    T = len(rles)
    P = len(rles[0]) if T else 0
    boxes = np.zeros((T, P, 5), dtype=np.float32)
    present = np.zeros((T, P), dtype=bool)
    flat = [(t, p, c) for t in range(T) for p, c in enumerate(rles[t]) if c is not None]
    if flat:
        counts = [c for _, _, c in flat]
        xywh = rle.boxes_xywh(counts, height, width)
        area = rle.areas(counts, height, width)
        for (t, p, _), b, a in zip(flat, xywh, area):
            if a > 0:
                present[t, p] = True
                boxes[t, p] = (b[0] / width, b[1] / height, (b[0] + b[2]) / width, (b[1] + b[3]) / height,
                               a / max(b[2] * b[3], 1.0))
    return boxes, present


def geometry_features(boxes: np.ndarray, present: np.ndarray, opts: TemporalOptions) -> np.ndarray:
    """(T, P, 5) boxes + (T, P) present -> (T, P, G) geometry/motion features (see module doc).

    Changes to frames outside the video, or where either mask is empty, are 0 with valid 0.
    """
    T, P = present.shape
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    g = np.stack([cx, cy, w, h], axis=-1) * present[..., None]  # (T, P, 4)
    parts = [g, (boxes[..., 4] * present)[..., None], present[..., None].astype(np.float32)]
    idx = np.arange(T)
    for k in opts.offsets:
        for d in (-k, k):
            j = idx + d
            inside = (j >= 0) & (j < T)
            jc = np.clip(j, 0, max(T - 1, 0))
            valid = present & present[jc] & inside[:, None]
            delta = (g[jc] - g) / abs(d) * opts.velocity_scale * valid[..., None]
            parts += [delta, valid[..., None].astype(np.float32)]
    return np.concatenate(parts, axis=-1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The head: modal embeddings, Transformer, scoring MLP
# --------------------------------------------------------------------------------------------


def masked_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``valid``; 0 at invalid slots, all-0 rows stay 0."""
    x = logits.masked_fill(~valid, float("-inf"))
    any_valid = valid.any(dim=-1, keepdim=True)
    x = torch.where(any_valid, x, torch.zeros_like(x))
    return torch.softmax(x, dim=-1) * valid


def grounding_loss(logits: torch.Tensor, valid: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy -log Σ_{p∈target} softmax(logits)_p (several targets: their union).

    ``valid``/``target`` are (B, P) bool; returns (B,) losses.
    """
    x = logits.masked_fill(~valid, float("-inf"))
    return torch.logsumexp(x, dim=-1) - torch.logsumexp(x.masked_fill(~target, float("-inf")), dim=-1)


class GroundingHead(nn.Module):
    """F^Gnd of Eq. 6 over already projected tracklet and word features."""

    def __init__(self, opts: HeadOptions) -> None:
        super().__init__()
        if opts.dim % opts.heads:
            raise ConfigError(f"grounder head: dim {opts.dim} is not divisible by heads {opts.heads}")
        self.opts = opts
        d = opts.dim
        self.e_v = nn.Parameter(torch.randn(d) * 0.02)
        self.e_l = nn.Parameter(torch.randn(d) * 0.02)
        self.absent = nn.Parameter(torch.randn(d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, opts.heads, opts.ffn_dim, opts.dropout,
                                           activation="gelu", batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, opts.layers, enable_nested_tensor=False)
        self.mlp = nn.Sequential(nn.Linear(d, opts.mlp_hidden), nn.GELU(), nn.Linear(opts.mlp_hidden, 1))
        self.geometry = None
        if opts.temporal.enabled:
            g = geometry_dim(opts.temporal)
            self.geometry = nn.Sequential(nn.Linear(g, d), nn.GELU(), nn.Linear(d, d))

    def forward(
        self,
        vis: torch.Tensor,
        present: torch.Tensor,
        valid: torch.Tensor,
        words: torch.Tensor,
        word_valid: torch.Tensor,
        geometry: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``vis`` (B, P, D) pooled+projected tracklet features, ``present`` (B, P) mask not
        empty, ``valid`` (B, P) real tracklet (not padding), ``words`` (B, L, D), ``word_valid``
        (B, L), ``geometry`` (B, P, G) when temporal. Returns logits (B, P), -inf at padding."""
        x_v = torch.where(present.unsqueeze(-1), vis, self.absent.to(vis.dtype)) + self.e_v
        if self.geometry is not None:
            if geometry is None:
                raise ValueError("this grounder uses temporal context: pass geometry features")
            x_v = x_v + self.geometry(geometry)
        x = torch.cat([x_v, words + self.e_l], dim=1)
        pad = torch.cat([~valid, ~word_valid], dim=1)
        h = self.transformer(x, src_key_padding_mask=pad)
        logits = self.mlp(h[:, : vis.shape[1]]).squeeze(-1)
        return logits.masked_fill(~valid, float("-inf"))


# --------------------------------------------------------------------------------------------
# A whole variant: encoders + head, built from one ``grounding.variants`` entry
# --------------------------------------------------------------------------------------------

_VARIANT_KEYS = ("name", "checkpoint", "visual", "text", "head")


class Grounder(nn.Module):
    """One ensemble variant: visual encoder, text encoder (each with its projection to D) and
    the grounding head. Built from a config entry::

        {name: r101-bert, checkpoint: path/grounder.pt,
         visual: {backend: timm, model: resnet101, ...},
         text: {backend: hf, model: bert-base-uncased, ...},
         head: {dim: 768, layers: 4, heads: 12, ...}}
    """

    def __init__(self, name: str, visual: nn.Module, text: nn.Module, head: GroundingHead) -> None:
        super().__init__()
        self.name = name
        self.visual = visual
        self.text = text
        self.head = head

    @property
    def temporal(self) -> TemporalOptions:
        return self.head.opts.temporal

    @classmethod
    def from_config(cls, section: Mapping[str, Any], where: str = "grounding.variants",
                    load_checkpoint: bool = True) -> Grounder:
        section = dict(section)
        for key in section:
            if key not in _VARIANT_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r}; expected one of {list(_VARIANT_KEYS)}")
        name = str(section.get("name") or "")
        if not name:
            raise ConfigError(f"{where}: a variant needs a name")
        where = f"{where}[{name}]"
        head_opts = parse_options(HeadOptions, section.get("head") or {}, f"{where}.head")
        vis_sec = dict(section.get("visual") or {})
        txt_sec = dict(section.get("text") or {})
        visual = VISUAL_ENCODERS.build(str(vis_sec.get("backend", "timm")), vis_sec, f"{where}.visual",
                                       dim=head_opts.dim)
        text = TEXT_ENCODERS.build(str(txt_sec.get("backend", "hf")), txt_sec, f"{where}.text",
                                   dim=head_opts.dim)
        model = cls(name, visual, text, GroundingHead(head_opts))
        ckpt = str(section.get("checkpoint") or "")
        if ckpt and load_checkpoint:
            model.load_checkpoint(ckpt)
        return model

    # -- weights ----------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights this project trains: head, projections, and any unfrozen encoder."""
        skip = []
        if getattr(self.visual, "frozen", False):
            skip.append("visual.backbone.")
        if getattr(self.text, "frozen", False):
            skip.append("text.model.")
        return {k: v.detach().cpu() for k, v in self.state_dict().items()
                if not any(k.startswith(s) for s in skip)}

    def load_checkpoint(self, path: str) -> None:
        """Load a :meth:`trainable_state_dict` file (``torch.load(weights_only=True)``)."""
        from rvos_ray.models.encoders import load_state_file

        state = load_state_file(path)
        own = self.state_dict()
        wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        unknown = [k for k in state if k not in own]
        needed = set(self.trainable_state_dict())
        missing = sorted(needed - set(state))
        if wrong or unknown or missing:
            raise ConfigError(
                f"grounder checkpoint {path!r} does not fit variant {self.name!r}: "
                f"missing {missing[:5]}, unexpected {unknown[:5]}, wrong shape {wrong[:5]}"
            )
        self.load_state_dict(state, strict=False)

    # -- scoring ----------------------------------------------------------------------------

    def forward(
        self,
        pooled: torch.Tensor,
        present: torch.Tensor,
        valid: torch.Tensor,
        words: torch.Tensor,
        word_valid: torch.Tensor,
        geometry: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, P) from backbone-width pooled features (B, P, Cv) and token features
        (B, L, Ct); the variant's projections map both to D first. (``forward``, so that a
        DistributedDataParallel wrapper sees the call and synchronises the gradients.)"""
        return self.head(self.visual.project(pooled), present, valid,
                         self.text.project(words), word_valid, geometry)
