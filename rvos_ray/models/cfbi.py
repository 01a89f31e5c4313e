"""CFBI+ (Yang, Wei, Yang; ECCV 2020 / TPAMI 2021), written for this project from the papers'
design; see ``/work/shared/reference/cfbi-plus-notes.md`` for the facts it follows.

Pipeline for one current frame, given a reference frame with each candidate's mask and the
previous frame with each candidate's last prediction:

1. :class:`CFBIEncoder`: timm ResNet (output stride 16) + DeepLab ASPP and decoder + FPN ->
   pixel embeddings at strides 4, 8, 16 (``embed_dim`` channels each) and the stride-4
   low-level feature. The encoder runs ONCE per frame, whatever the number of candidates.
2. Collaborative fg/bg matching at every scale (:mod:`rvos_ray.models.cfbi_matching`): global
   matching vs the reference (atrous at stride 4), multi-local matching vs the previous frame,
   with learnable fg/bg biases per scale. Distances are shared by all candidates.
3. Instance-level attention: masked means of the stride-4 reference / previous embeddings inside
   and outside each candidate (4 x ``embed_dim``).
4. :class:`~rvos_ray.models.cfbi_ensembler.CollaborativeEnsembler` on 2K entries (each
   candidate and its complement: the official N = 1 path; no competition between candidates).

Output: per candidate the foreground logit at stride 4, ``fg_cand - (fg_comp + bg_cand)``: the
log-odds of the two-way softmax (candidate vs. background with CFBI's background augmentation).

Differences from the release, on purpose: frames are RGB with ImageNet mean/std (timm's
convention; the release feeds OpenCV BGR to its DeepLab weights); masks are downsampled to each
scale by area majority rather than nearest sampling; layer4 is dilated by timm's output-stride
16 without DeepLab's multi-grid rates.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_ray.models.cfbi_ensembler import CollaborativeEnsembler, group_norm
from rvos_ray.models.cfbi_matching import (
    distance_to_map,
    downsample_masks,
    global_matching,
    multi_local_matching,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CFBIConfig:
    """Architecture of a CFBI+ network. Defaults are the paper's R101-CFBI+ settings."""

    backbone: str = "resnet101"  # timm ResNet (any depth); run at output stride 16
    backbone_weights: str = ""  # optional timm state dict for the backbone (weights_only load)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # timm ResNet args (channels, stem_width)
    freeze_bn: bool = True  # frozen BatchNorm in backbone/ASPP/decoder (needs pretrained stats)
    aspp_channels: int = 256  # DeepLab ASPP width at stride 16
    low_level_channels: int = 48  # DeepLab decoder: 1x1 projection of ResNet layer1
    deeplab_decoder_channels: int = 256  # DeepLab decoder width at stride 4
    embed_dim: int = 256  # FPN pixel-embedding channels at strides 4, 8, 16
    matching_dims: list[int] = field(default_factory=lambda: [32, 64, 128])  # channels matched
    local_windows: list[list[int]] = field(
        default_factory=lambda: [[4, 8, 12, 16, 20, 24], [2, 4, 6, 8, 10, 12], [2, 4, 6, 8, 10]]
    )  # multi-local window radii per scale, in pixels of that scale
    local_rates: list[int] = field(default_factory=lambda: [2, 1, 1])  # offset sampling step
    global_atrous_rate: int = 2  # stride-4 global matching on every r-th reference pixel
    min_matching_pixels: int = 100  # labels with <= this * r^2 pixels keep all pixels
    ensembler_widths: list[int] = field(default_factory=lambda: [256, 512, 512])
    ensembler_aspp_width: int = 128
    ensembler_aspp_out: int = 256
    decoder_skip_channels: int = 64
    decoder_channels: int = 128
    gn_groups: int = 32
    matching_chunk: int = 4096  # query pixels per global-matching chunk (memory only)
    stride: int = 16  # input sizes must be multiples of this

    def validate(self) -> None:
        if len(self.matching_dims) != 3 or len(self.local_windows) != 3 or len(self.local_rates) != 3:
            raise ValueError("matching_dims, local_windows and local_rates need one entry per scale (3)")
        if max(self.matching_dims) > self.embed_dim:
            raise ValueError(f"matching_dims {self.matching_dims} exceed embed_dim {self.embed_dim}")
        if any(not w for w in self.local_windows):
            raise ValueError("every scale needs at least one local window")


class Features(NamedTuple):
    """Encoder output for B frames: embeddings at strides 4/8/16 and the stride-4 ResNet
    layer1 feature used by the ensembler's skip connection."""

    embeddings: tuple[Tensor, Tensor, Tensor]
    low_level: Tensor

    def select(self, index: slice | Tensor) -> Features:
        return Features(tuple(e[index] for e in self.embeddings), self.low_level[index])


def _bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    pad = 0 if k == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CFBIEncoder(nn.Module):
    """timm ResNet (output stride 16) + DeepLabV3+ ASPP/decoder + FPN embeddings."""

    def __init__(self, cfg: CFBIConfig) -> None:
        super().__init__()
        import timm  # heavy import kept local

        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.backbone_kwargs.items()}
        self.backbone = timm.create_model(
            cfg.backbone, pretrained=False, features_only=True, out_indices=(1, 2, 4), output_stride=16, **kwargs
        )
        if cfg.backbone_weights:
            self._load_backbone(cfg.backbone_weights)
        c1, c2, c4 = self.backbone.feature_info.channels()
        a = cfg.aspp_channels
        self.aspp = nn.ModuleList(
            [_bn_relu(c4, a, 1), _bn_relu(c4, a, 3, 6), _bn_relu(c4, a, 3, 12), _bn_relu(c4, a, 3, 18)]
        )
        # image-pooling branch without BatchNorm: a 1x1 map of one frame has no batch statistics
        self.aspp_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c4, a, 1), nn.ReLU(inplace=True))
        self.aspp_project = nn.Sequential(_bn_relu(5 * a, a, 1), nn.Dropout(0.1))
        self.low_proj = _bn_relu(c1, cfg.low_level_channels, 1)
        d = cfg.deeplab_decoder_channels
        self.decoder = nn.Sequential(
            _bn_relu(cfg.low_level_channels + a, d, 3), _bn_relu(d, d, 3)
        )
        e, g = cfg.embed_dim, cfg.gn_groups
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, e, 1, bias=False), group_norm(e, g)) for cin in (d, c2, a)
        )
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(e, e, 3, padding=1, bias=False), group_norm(e, g)) for _ in range(2)
        )
        self.low_level_channels = c1
        if cfg.freeze_bn:
            from timm.layers import freeze_batch_norm_2d

            freeze_batch_norm_2d(self)

    def _load_backbone(self, path: str) -> None:
        state = load_state(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, _ = self.backbone.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"backbone weights {path}: missing keys {missing[:5]} (+{len(missing) - 5 if len(missing) > 5 else 0})")

    def forward(self, images: Tensor) -> Features:
        l1, l2, l4 = self.backbone(images)
        x = torch.cat([b(l4) for b in self.aspp] + [self.aspp_pool(l4).expand(-1, -1, *l4.shape[-2:])], 1)
        aspp = self.aspp_project(x)
        up = F.interpolate(aspp, size=l1.shape[-2:], mode="bilinear", align_corners=True)
        dec = self.decoder(torch.cat([self.low_proj(l1), up], 1))
        p16 = self.lateral[2](aspp)
        p8 = self.lateral[1](l2) + F.interpolate(p16, size=l2.shape[-2:], mode="bilinear", align_corners=True)
        p4 = self.lateral[0](dec) + F.interpolate(p8, size=dec.shape[-2:], mode="bilinear", align_corners=True)
        embeddings = (F.relu(self.smooth[1](p4)), F.relu(self.smooth[0](p8)), F.relu(p16))
        return Features(embeddings, l1)


class CFBIPlus(nn.Module):
    """The CFBI+ network for K independent candidates per frame (see the module docstring).

    ``encoder_calls`` / ``encoder_frames`` count backbone forward passes and the frames they
    covered, so callers can check the backbone runs once per frame whatever K is.
    """

    def __init__(self, cfg: CFBIConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = CFBIEncoder(cfg)
        e = cfg.embed_dim
        ins = tuple(3 * e + 3 + 2 * len(w) for w in cfg.local_windows)
        self.ensembler = CollaborativeEnsembler(
            ins,
            self.encoder.low_level_channels,
            4 * e,
            tuple(cfg.ensembler_widths),
            cfg.ensembler_aspp_width,
            cfg.ensembler_aspp_out,
            cfg.decoder_skip_channels,
            cfg.decoder_channels,
            cfg.gn_groups,
        )
        # learnable distance biases, one scalar per scale, initialised to 0 (CFBI)
        self.fg_bias = nn.Parameter(torch.zeros(3))
        self.bg_bias = nn.Parameter(torch.zeros(3))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder_calls = 0
        self.encoder_frames = 0

    # -- encoder -------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Features:
        """``images`` (B, 3, H, W) float RGB in [0, 1], H and W multiples of ``cfg.stride``."""
        h, w = images.shape[-2:]
        if h % self.cfg.stride or w % self.cfg.stride:
            raise ValueError(f"CFBI+ input {h}x{w} is not a multiple of {self.cfg.stride}")
        self.encoder_calls += 1
        self.encoder_frames += images.shape[0]
        return self.encoder((images - self.mean) / self.std)

    # -- matching + decoder -------------------------------------------------------------------
    def decode(
        self,
        current: Features,
        reference: Features,
        ref_masks: Tensor,
        previous: Features,
        prev_masks: Tensor,
    ) -> Tensor:
        """Foreground logits (B, K, H/4, W/4) of K candidates on B current frames.

        ``reference``/``previous`` hold one frame per current frame; ``ref_masks`` and
        ``prev_masks`` are (B, K, H, W) 0/1 at input resolution (or any size: they are
        area-downsampled to each scale).
        """
        cfg = self.cfg
        b, k = ref_masks.shape[:2]
        inputs = []
        for s in range(3):
            cur = current.embeddings[s]
            size = tuple(cur.shape[-2:])
            ref_m = downsample_masks(ref_masks, size)
            prev_m = downsample_masks(prev_masks, size)
            c = cfg.matching_dims[s]
            g1, g0 = global_matching(
                cur[:, :c], reference.embeddings[s][:, :c], ref_m,
                atrous_rate=cfg.global_atrous_rate if s == 0 else 1,
                min_matching_pixels=cfg.min_matching_pixels,
                chunk=cfg.matching_chunk,
            )
            l1, l0 = multi_local_matching(
                cur[:, :c], previous.embeddings[s][:, :c], prev_m,
                _window_order(cfg.local_windows[s]), cfg.local_rates[s],
            )
            fb, bb = self.fg_bias[s], self.bg_bias[s]
            g1, l1 = distance_to_map(g1, fb).unsqueeze(2), distance_to_map(l1, fb)
            g0, l0 = distance_to_map(g0, bb).unsqueeze(2), distance_to_map(l0, bb)
            pm = prev_m.unsqueeze(2)
            cand = torch.cat([g1, l1, pm, l0, g0], 2)  # B, K, 3 + 2L, h, w
            comp = torch.cat([g0, l0, 1.0 - pm, l1, g1], 2)
            match = torch.stack([cand, comp], 2).flatten(0, 2)  # (B*K*2), 3 + 2L, h, w
            prev_emb = previous.embeddings[s].unsqueeze(1)  # B, 1, E, h, w
            emb_in = prev_emb * pm  # B, K, E, h, w
            emb_out = prev_emb * (1.0 - pm)
            pair_in = torch.stack([emb_in, emb_out], 2).flatten(0, 2)
            pair_out = torch.stack([emb_out, emb_in], 2).flatten(0, 2)
            cur_e = cur.unsqueeze(1).expand(b, 2 * k, *cur.shape[1:]).flatten(0, 1)
            inputs.append(torch.cat([match, cur_e, pair_in, pair_out], 1))
            if s == 0:
                attention = self._attention(reference.embeddings[0], ref_m, previous.embeddings[0], prev_m)
        frame_index = torch.arange(b, device=ref_masks.device).repeat_interleave(2 * k)
        fg, bg = self.ensembler(tuple(inputs), current.low_level, frame_index, attention)
        fg = fg.view(b, k, 2, *fg.shape[-2:])
        bg = bg.view(b, k, 2, *bg.shape[-2:])
        # two-way softmax of [candidate fg, background fg + candidate bg] as one log-odds map
        return fg[:, :, 0] - (fg[:, :, 1] + bg[:, :, 0])

    @staticmethod
    def _attention(ref: Tensor, ref_m: Tensor, prev: Tensor, prev_m: Tensor) -> Tensor:
        """(B*K*2, 4E) instance-level attention vectors: masked means inside/outside each
        candidate on the reference and previous frame (swapped for the complement entry)."""

        def pooled(emb: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
            inside = torch.einsum("behw,bkhw->bke", emb, m) / (m.sum((2, 3))[..., None] + 1e-5)
            out_m = 1.0 - m
            outside = torch.einsum("behw,bkhw->bke", emb, out_m) / (out_m.sum((2, 3))[..., None] + 1e-5)
            return inside, outside

        r_in, r_out = pooled(ref, ref_m)
        p_in, p_out = pooled(prev, prev_m)
        cand = torch.cat([r_in, r_out, p_in, p_out], -1)
        comp = torch.cat([r_out, r_in, p_out, p_in], -1)
        return torch.stack([cand, comp], 2).flatten(0, 2)

    def forward(
        self,
        ref_images: Tensor,
        prev_images: Tensor,
        cur_images: Tensor,
        ref_masks: Tensor,
        prev_masks: Tensor,
        predict_prev: Tensor | None = None,
    ) -> Tensor:
        """Training path: B clips of (reference, previous, current), one encoder pass over all
        3B frames. Masks (B, K, H, W). Returns current-frame logits (B, K, H, W).

        ``predict_prev`` (B,) bool: for those clips the previous mask is replaced by the
        network's own thresholded prediction of the previous frame (from the reference, without
        gradient), as in CFBI's sequential training, so it learns to recover from its errors."""
        b = ref_images.shape[0]
        feats = self.encode(torch.cat([ref_images, prev_images, cur_images], 0))
        ref, prev, cur = (feats.select(slice(i * b, (i + 1) * b)) for i in range(3))
        if predict_prev is not None and bool(predict_prev.any()):
            with torch.no_grad():
                r, p = _detached(ref), _detached(prev)
                own = self.decode(p, r, ref_masks, r, ref_masks)
                own = (F.interpolate(own, size=prev_masks.shape[-2:], mode="bilinear") > 0).to(prev_masks.dtype)
            prev_masks = torch.where(predict_prev[:, None, None, None], own, prev_masks)
        logits = self.decode(cur, ref, ref_masks, prev, prev_masks)
        return F.interpolate(logits, size=cur_images.shape[-2:], mode="bilinear", align_corners=False)


def _detached(f: Features) -> Features:
    return Features(tuple(e.detach() for e in f.embeddings), f.low_level.detach())


def _window_order(windows: list[int]) -> list[int]:
    """CFBI's channel order: the largest window first, then the rest ascending."""
    w = sorted(windows)
    return [w[-1], *w[:-1]]


def config_from_dict(data: dict) -> CFBIConfig:
    known = {f.name for f in dataclasses.fields(CFBIConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown CFBI config key(s) {sorted(unknown)}")
    return CFBIConfig(**data)


def load_state(path: str) -> dict:
    """A torch checkpoint from a local path or URI, loaded with ``weights_only=True``."""
    from rvos_ray.data.io import read_bytes

    return torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)


def preprocess(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """RGB uint8 HxWx3 -> float (1, 3, h, w) in [0, 1] at the model's input ``size`` (h, w),
    antialiased bilinear resize (the same function serves training and propagation)."""
    x = torch.tensor(image).permute(2, 0, 1).unsqueeze(0).float() / 255.0  # copies: frames are read-only
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def input_size(height: int, width: int, long_edge: int, stride: int = 16) -> tuple[int, int]:
    """Model input size for a frame: long edge scaled to ``long_edge``, each side rounded to a
    multiple of ``stride`` (at least one stride)."""
    scale = long_edge / max(height, width)
    return (
        max(stride, int(round(height * scale / stride)) * stride),
        max(stride, int(round(width * scale / stride)) * stride),
    )
