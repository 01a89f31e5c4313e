"""CFBI+ matching: hand-checked distances, fg/bg minima, atrous sampling, local windows at borders."""

from __future__ import annotations

import itertools

import pytest
import torch

from rvos_ray.models.cfbi_matching import (
    PAD_DISTANCE,
    distance_to_map,
    downsample_masks,
    global_matching,
    local_offsets,
    masked_min_distances,
    multi_local_matching,
)

torch.set_num_threads(1)


def _t(values, shape):
    return torch.tensor(values, dtype=torch.float32).view(*shape)


def test_global_matching_hand_checked():
    # 1-channel embeddings: current pixels [0, 3]; reference pixels [1, 4, 10], candidate = {1}
    cur = _t([0.0, 3.0], (1, 1, 1, 2))
    ref = _t([1.0, 4.0, 10.0], (1, 1, 1, 3))
    mask = _t([1, 0, 0], (1, 1, 1, 3))
    d_fg, d_bg = global_matching(cur, ref, mask)
    assert d_fg.shape == (1, 1, 1, 2)
    # fg: (0-1)^2 = 1, (3-1)^2 = 4; bg: min((0-4)^2, (0-10)^2) = 16, min((3-4)^2, (3-10)^2) = 1
    assert d_fg.flatten().tolist() == [1.0, 4.0]
    assert d_bg.flatten().tolist() == [16.0, 1.0]


def test_global_matching_two_channels_and_empty_label():
    cur = _t([1.0, 2.0], (1, 2, 1, 1))  # one pixel e = (1, 2)
    ref = torch.tensor([[0.0, 3.0], [0.0, 2.0]]).view(1, 2, 1, 2)  # pixels (0, 0) and (3, 2)
    empty = torch.zeros(1, 1, 1, 2)
    full = torch.ones(1, 1, 1, 2)
    masks = torch.cat([empty, full], 1)  # K = 2 candidates
    d_fg, d_bg = global_matching(cur, ref, masks)
    # candidate 0 has no pixel -> PAD; its complement has both: min(1+4, 4+0) = 4
    assert d_fg[0, 0].item() == PAD_DISTANCE
    assert d_bg[0, 0].item() == 4.0
    assert d_fg[0, 1].item() == 4.0
    assert d_bg[0, 1].item() == PAD_DISTANCE


def test_global_matching_matches_brute_force_and_is_chunk_independent():
    g = torch.Generator().manual_seed(0)
    cur = torch.randn(2, 3, 4, 5, generator=g)
    ref = torch.randn(2, 3, 3, 4, generator=g)
    masks = (torch.rand(2, 4, 3, 4, generator=g) > 0.5).float()
    d_fg, d_bg = masked_min_distances(cur, ref, masks, chunk=7)
    for b, k, i, j in itertools.product(range(2), range(4), range(4), range(5)):
        e = cur[b, :, i, j]
        d = ((ref[b] - e[:, None, None]) ** 2).sum(0)
        fg = d[masks[b, k] > 0]
        bg = d[masks[b, k] == 0]
        want_fg = fg.min().item() if fg.numel() else PAD_DISTANCE
        want_bg = bg.min().item() if bg.numel() else PAD_DISTANCE
        assert d_fg[b, k, i, j].item() == pytest.approx(want_fg, abs=1e-4)
        assert d_bg[b, k, i, j].item() == pytest.approx(want_bg, abs=1e-4)


def test_atrous_global_matching_uses_even_pixels_only_unless_small():
    # reference 4x4, embedding = 10*i + j; current pixel embedding 11 = reference pixel (1, 1)
    ref = torch.tensor([[10.0 * i + j for j in range(4)] for i in range(4)]).view(1, 1, 4, 4)
    cur = _t([11.0], (1, 1, 1, 1))
    mask = torch.ones(1, 1, 4, 4)
    full_fg, _ = global_matching(cur, ref, mask, atrous_rate=1)
    assert full_fg.item() == 0.0
    atrous_fg, _ = global_matching(cur, ref, mask, atrous_rate=2)
    # even grid holds 0, 2, 20, 22: nearest to 11 is 2 (distance 81) or 20 (81)
    assert atrous_fg.item() == 81.0
    # a label with <= min_matching_pixels * r^2 pixels keeps all its pixels
    small = torch.zeros(1, 1, 4, 4)
    small[0, 0, 1, 1] = 1.0
    d_fg, _ = global_matching(cur, ref, small, atrous_rate=2, min_matching_pixels=1)
    assert d_fg.item() == 0.0
    d_fg, _ = global_matching(cur, ref, small, atrous_rate=2, min_matching_pixels=0)
    assert d_fg.item() == PAD_DISTANCE  # (1, 1) is not on the atrous grid


def test_local_offsets_grid():
    assert local_offsets(1, 1) == [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert len(local_offsets(24, 2)) == 25 * 25
    assert {o[0] for o in local_offsets(4, 2)} == {-4, -2, 0, 2, 4}


def test_local_matching_window_at_the_border():
    # 3x3 frame, 1 channel. previous embedding = pixel index; current = all zeros
    prev = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    cur = torch.zeros(1, 1, 3, 3)
    mask = torch.zeros(1, 1, 3, 3)
    mask[0, 0, 1, 1] = 1.0  # candidate pixel: (1, 1), value 4
    mask[0, 0, 2, 2] = 1.0  # and (2, 2), value 8
    d_fg, d_bg = multi_local_matching(cur, prev, mask, windows=[1, 2], rate=1)
    assert d_fg.shape == (1, 1, 2, 3, 3)
    # corner (0, 0), window 1: in-image neighbours (0,0),(0,1),(1,0),(1,1) = 0,1,3,4
    assert d_fg[0, 0, 0, 0, 0].item() == 16.0  # only fg neighbour is (1,1): 4^2
    assert d_bg[0, 0, 0, 0, 0].item() == 0.0  # (0,0) itself is background, value 0
    # corner (2, 0), window 1: neighbours (1,0),(1,1),(2,0),(2,1) = 3,4,6,7; fg only (1,1)
    assert d_fg[0, 0, 0, 2, 0].item() == 16.0
    assert d_bg[0, 0, 0, 2, 0].item() == 9.0
    # corner (0, 2), window 1: neighbours (0,1),(0,2),(1,1),(1,2) = 1,2,4,5 -> bg min 1
    assert d_bg[0, 0, 0, 0, 2].item() == 1.0
    # window 2 covers the whole 3x3 from every pixel: fg min over {4, 8} = 16
    assert d_fg[0, 0, 1].unique().tolist() == [16.0]


def test_local_matching_excludes_outside_pixels_and_far_labels():
    # out-of-image offsets must not count as a zero embedding: with current = 0 and every
    # in-window previous pixel foreground, the background distance is PAD, not 0
    prev = torch.full((1, 1, 2, 2), 5.0)
    cur = torch.zeros(1, 1, 2, 2)
    mask = torch.ones(1, 1, 2, 2)
    d_fg, d_bg = multi_local_matching(cur, prev, mask, windows=[1], rate=1)
    assert torch.all(d_fg == 25.0)
    assert torch.all(d_bg == PAD_DISTANCE)
    # the only fg pixel sits 3 away: outside window 2, inside window 3
    prev = torch.zeros(1, 1, 1, 4)
    mask = torch.zeros(1, 1, 1, 4)
    mask[0, 0, 0, 3] = 1.0
    d_fg, _ = multi_local_matching(torch.zeros(1, 1, 1, 4), prev, mask, windows=[3, 2], rate=1)
    assert d_fg[0, 0, 0, 0, 0].item() == 0.0  # windows keep the order given: 3 first
    assert d_fg[0, 0, 1, 0, 0].item() == PAD_DISTANCE


def test_local_matching_rate_skips_odd_offsets():
    prev = torch.arange(5, dtype=torch.float32).view(1, 1, 1, 5)
    cur = torch.zeros(1, 1, 1, 5)
    mask = torch.zeros(1, 1, 1, 5)
    mask[0, 0, 0, 1] = 1.0  # fg at column 1 (value 1)
    d1, _ = multi_local_matching(cur, prev, mask, windows=[2], rate=1)
    d2, _ = multi_local_matching(cur, prev, mask, windows=[2], rate=2)
    assert d1[0, 0, 0, 0, 0].item() == 1.0  # offset +1 reaches column 1
    assert d2[0, 0, 0, 0, 0].item() == PAD_DISTANCE  # only offsets 0, +-2 are sampled
    assert d2[0, 0, 0, 0, 3].item() == 1.0  # column 3 - 2 = column 1


def test_local_matching_candidates_batched_equal_single():
    g = torch.Generator().manual_seed(1)
    cur = torch.randn(1, 4, 6, 7, generator=g)
    prev = torch.randn(1, 4, 6, 7, generator=g)
    masks = (torch.rand(1, 3, 6, 7, generator=g) > 0.6).float()
    d_fg, d_bg = multi_local_matching(cur, prev, masks, windows=[3, 1, 2], rate=1)
    for k in range(3):
        f, b = multi_local_matching(cur, prev, masks[:, k : k + 1], windows=[3, 1, 2], rate=1)
        assert torch.allclose(d_fg[:, k : k + 1], f)
        assert torch.allclose(d_bg[:, k : k + 1], b)
    # brute force at one interior and one border pixel, window 2
    for i, j in [(3, 3), (0, 6)]:
        e = cur[0, :, i, j]
        best = PAD_DISTANCE
        for dy, dx in itertools.product(range(-2, 3), repeat=2):
            y, x = i + dy, j + dx
            if 0 <= y < 6 and 0 <= x < 7 and masks[0, 0, y, x] > 0:
                best = min(best, ((prev[0, :, y, x] - e) ** 2).sum().item())
        assert d_fg[0, 0, 2, i, j].item() == pytest.approx(best, abs=1e-4)


def test_distance_to_map_is_biased_sigmoid():
    d = torch.tensor([0.0, 0.5, 3.0, PAD_DISTANCE])
    b = torch.tensor(-0.7)
    want = 2 * torch.sigmoid(d + b) - 1
    assert torch.allclose(distance_to_map(d, b), want, atol=1e-6)
    assert distance_to_map(torch.tensor(PAD_DISTANCE), torch.tensor(0.0)).item() == 1.0


def test_downsample_masks_majority():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, :2, :2] = 1.0  # top-left cell full
    m[0, 0, 2, 2] = 1.0  # a quarter of the bottom-right cell
    out = downsample_masks(m, (2, 2))
    assert out[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
