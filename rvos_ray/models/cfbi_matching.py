"""Collaborative foreground-background pixel matching of CFBI / CFBI+ (our implementation).

Every candidate is its own two-label problem: label 1 is the candidate, label 0 its complement
(the official N = 1 path). For a current-frame pixel p and the allowed pixels R_o of label o in
a matched frame, the matching map is

    M_o(p) = 2 * sigmoid(min_{q in R_o} ||e_p - e_q||^2 + b_o) - 1  =  tanh((d_min + b_o) / 2)

with one learnable bias per scale for the foreground (b_1) and one for the background (b_0). A
label with no allowed pixel gets d_min = ``PAD_DISTANCE``, so its map is ~1 ("far from
everything"). No top-k: a plain nearest-neighbour minimum.

Shapes: ``B`` frames (propagation: 1; training: clips), ``K`` candidates per frame, ``C``
matching channels. Distances between pixels do not depend on labels, so they are computed once
per frame and shared by all K candidates; labels enter only through masking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PAD_DISTANCE = 5.0e4
"""Distance given to excluded pixels (wrong label, outside the image): the map saturates at 1."""


def pairwise_sq_distances(query: Tensor, keys: Tensor) -> Tensor:
    """Squared L2 distances. ``query`` (B, Q, C), ``keys`` (B, M, C) -> (B, Q, M), clamped >= 0
    (the expansion ||a||^2 + ||b||^2 - 2ab can go slightly negative in floating point)."""
    qq = (query * query).sum(-1, keepdim=True)
    kk = (keys * keys).sum(-1).unsqueeze(1)
    d = qq + kk - 2.0 * torch.bmm(query, keys.transpose(1, 2))
    return d.clamp_min_(0.0)


def masked_min_distances(
    current: Tensor, reference: Tensor, ref_masks: Tensor, chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """Nearest-neighbour distance of every current pixel to each candidate's fg and bg pixels.

    ``current`` (B, C, H, W); ``reference`` (B, C, Hr, Wr); ``ref_masks`` (B, K, Hr, Wr) of 0/1
    (1 = candidate). Returns ``(d_fg, d_bg)``, each (B, K, H, W): the minimum squared distance
    to a reference pixel inside / outside the candidate (``PAD_DISTANCE`` when there is none).
    The distance matrix is computed once per query chunk and shared by all K candidates.
    """
    b, c, h, w = current.shape
    k = ref_masks.shape[1]
    q = current.flatten(2).transpose(1, 2)  # B, HW, C
    r = reference.flatten(2).transpose(1, 2)  # B, M, C
    fg = ref_masks.flatten(2).to(current.dtype)  # B, K, M
    pad_fg = ((1.0 - fg) * PAD_DISTANCE).unsqueeze(2)  # B, K, 1, M: excludes non-candidate pixels
    pad_bg = (fg * PAD_DISTANCE).unsqueeze(2)
    outs_fg, outs_bg = [], []
    for start in range(0, h * w, max(1, chunk)):
        d = pairwise_sq_distances(q[:, start : start + chunk], r).unsqueeze(1)  # B, 1, q, M
        # min(dim) keeps only argmin indices for backward (amin would keep the whole matrix)
        outs_fg.append((d + pad_fg).min(-1).values)
        outs_bg.append((d + pad_bg).min(-1).values)
    d_fg = torch.cat(outs_fg, -1).clamp_max(PAD_DISTANCE).view(b, k, h, w)
    d_bg = torch.cat(outs_bg, -1).clamp_max(PAD_DISTANCE).view(b, k, h, w)
    return d_fg, d_bg


def global_matching(
    current: Tensor,
    reference: Tensor,
    ref_masks: Tensor,
    atrous_rate: int = 1,
    min_matching_pixels: int = 0,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Global matching distances (before bias and sigmoid), optionally atrous.

    With ``atrous_rate`` r > 1 only reference pixels (i, j) with i % r == 0 and j % r == 0 are
    matched (the CFBI+ saving: r^2 fewer distances). A label (candidate or complement) with at
    most ``min_matching_pixels * r^2`` pixels keeps all its pixels, so small objects are not
    lost; the full distance matrix is computed only when some label needs it.
    Returns ``(d_fg, d_bg)`` (B, K, H, W).
    """
    if atrous_rate <= 1:
        return masked_min_distances(current, reference, ref_masks, chunk)
    r = atrous_rate
    d_fg, d_bg = masked_min_distances(
        current, reference[:, :, ::r, ::r], ref_masks[:, :, ::r, ::r], chunk
    )
    if min_matching_pixels > 0:
        fg_count = ref_masks.flatten(2).sum(-1)  # B, K
        bg_count = ref_masks[0, 0].numel() - fg_count
        limit = min_matching_pixels * r * r
        small_fg, small_bg = fg_count <= limit, bg_count <= limit
        if bool(small_fg.any() or small_bg.any()):
            full_fg, full_bg = masked_min_distances(current, reference, ref_masks, chunk)
            d_fg = torch.where(small_fg[..., None, None], full_fg, d_fg)
            d_bg = torch.where(small_bg[..., None, None], full_bg, d_bg)
    return d_fg, d_bg


def local_offsets(max_window: int, rate: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) in [-K, K]^2 sampled every ``rate`` pixels, K = ``max_window``."""
    steps = range(-(max_window // rate) * rate, max_window + 1, rate)
    return [(dy, dx) for dy in steps for dx in steps]


def _shift(x: Tensor, dy: int, dx: int, fill: float) -> Tensor:
    """y[..., i, j] = x[..., i + dy, j + dx], ``fill`` where i + dy or j + dx is outside."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    if ys < ye and xs < xe:
        out[..., ys:ye, xs:xe] = x[..., ys + dy : ye + dy, xs + dx : xe + dx]
    return out


def multi_local_matching(
    current: Tensor, previous: Tensor, prev_masks: Tensor, windows: list[int], rate: int = 1
) -> tuple[Tensor, Tensor]:
    """Multi-local matching distances against the previous frame, one map per window size.

    For each window k (in pixels of this scale), pixel p is compared with previous-frame pixels
    p + delta, |delta|_inf <= k, delta a multiple of ``rate``; offsets that leave the image are
    excluded (``PAD_DISTANCE``), as are previous pixels of the other label.
    ``current``/``previous`` (B, C, H, W), ``prev_masks`` (B, K, H, W) of 0/1.
    Returns ``(d_fg, d_bg)``, each (B, K, L, H, W) with L = len(windows), windows in the order
    given. The per-offset distance does not depend on labels and is computed once.
    """
    if not windows:
        raise ValueError("multi_local_matching needs at least one window")
    b, _, h, w = current.shape
    k = prev_masks.shape[1]
    order = sorted(set(windows))
    big = order[-1]
    cur_sq = (current * current).sum(1)  # B, H, W
    prev_sq = (previous * previous).sum(1)
    fgm = prev_masks.to(current.dtype)
    ones = torch.ones_like(prev_sq)
    # running minimum per "ring" (offsets whose |delta|_inf falls in (k_{i-1}, k_i])
    ring_fg = [None] * len(order)
    ring_bg = [None] * len(order)
    for dy, dx in local_offsets(big, rate):
        radius = max(abs(dy), abs(dx))
        g = next(i for i, kk in enumerate(order) if radius <= kk)
        p_shift = _shift(previous, dy, dx, 0.0)
        inside = _shift(ones, dy, dx, 0.0)  # 1 where p + delta is in the image
        d = cur_sq + _shift(prev_sq, dy, dx, 0.0) - 2.0 * (current * p_shift).sum(1)
        d = d.clamp_min(0.0).unsqueeze(1)  # B, 1, H, W
        m = _shift(fgm, dy, dx, 0.0)  # B, K, H, W
        bg_allowed = inside.unsqueeze(1) * (1.0 - m)
        v_fg = d + (1.0 - m) * PAD_DISTANCE
        v_bg = d + (1.0 - bg_allowed) * PAD_DISTANCE
        ring_fg[g] = v_fg if ring_fg[g] is None else torch.minimum(ring_fg[g], v_fg)
        ring_bg[g] = v_bg if ring_bg[g] is None else torch.minimum(ring_bg[g], v_bg)
    full = torch.full((b, k, h, w), PAD_DISTANCE, dtype=current.dtype, device=current.device)
    cum_fg, cum_bg, by_window = full, full, {}
    for i, kk in enumerate(order):
        if ring_fg[i] is not None:  # a ring can be empty when rate > the window gap
            cum_fg = torch.minimum(cum_fg, ring_fg[i])
            cum_bg = torch.minimum(cum_bg, ring_bg[i])
        by_window[kk] = (cum_fg.clamp_max(PAD_DISTANCE), cum_bg.clamp_max(PAD_DISTANCE))
    d_fg = torch.stack([by_window[kk][0] for kk in windows], 2)
    d_bg = torch.stack([by_window[kk][1] for kk in windows], 2)
    return d_fg, d_bg


def distance_to_map(distance: Tensor, bias: Tensor) -> Tensor:
    """M = 2 * sigmoid(d + b) - 1, written as tanh((d + b) / 2) (same function, stabler)."""
    return torch.tanh((distance + bias) * 0.5)


def downsample_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(..., H, W) 0/1 masks -> float (..., h, w) 0/1 by majority of the covered area (centred, unlike
    nearest sampling, which reads the top-left pixel of each cell)."""
    lead = masks.shape[:-2]
    x = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="area")
    return (x >= 0.5).float().reshape(*lead, *size)
