"""Grounder head, mask pooling and geometry: shapes, masking, invariances, hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rvos_ray import masks as rle
from rvos_ray.models.grounder import (
    GroundingHead,
    HeadOptions,
    TemporalOptions,
    boxes_from_rles,
    geometry_features,
    geometry_dim,
    grounding_loss,
    mask_weights,
    masked_softmax,
    pool_with_weights,
)

torch.set_num_threads(1)


def _head(temporal: bool = False) -> GroundingHead:
    torch.manual_seed(0)
    opts = HeadOptions(dim=32, layers=2, heads=4, ffn_dim=64, dropout=0.0, mlp_hidden=32,
                       temporal=TemporalOptions(enabled=temporal, offsets=[1, 2]))
    return GroundingHead(opts).eval()


def _inputs(P=3, L=5, B=2, G=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    vis = torch.randn(B, P, 32, generator=g)
    words = torch.randn(B, L, 32, generator=g)
    word_valid = torch.ones(B, L, dtype=torch.bool)
    word_valid[1, 3:] = False  # the second expression is shorter: padded words
    present = torch.ones(B, P, dtype=torch.bool)
    geom = torch.randn(B, P, G, generator=g) if G else None
    return vis, present, words, word_valid, geom


@pytest.mark.parametrize("temporal", [False, True])
def test_padding_never_changes_real_tracklet_scores(temporal):
    head = _head(temporal)
    G = geometry_dim(head.opts.temporal) if temporal else None
    vis, present, words, wv, geom = _inputs(P=3, G=G)
    valid = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        base = masked_softmax(head(vis, present, valid, words, wv, geom), valid)
        # pad to 7 tracklet slots with garbage features (present or not) that must be ignored
        pad = 4
        vis_p = torch.cat([vis, 100 * torch.randn(2, pad, 32)], 1)
        pres_p = torch.cat([present, torch.tensor([[True, False, True, False]] * 2)], 1)
        valid_p = torch.cat([valid, torch.zeros(2, pad, dtype=torch.bool)], 1)
        geom_p = torch.cat([geom, torch.randn(2, pad, G)], 1) if G else None
        logits_p = head(vis_p, pres_p, valid_p, words, wv, geom_p)
        padded = masked_softmax(logits_p, valid_p)
    assert torch.isinf(logits_p[:, 3:]).all() and (logits_p[:, 3:] < 0).all()
    assert torch.equal(padded[:, 3:], torch.zeros(2, pad))
    torch.testing.assert_close(padded[:, :3], base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base.sum(-1), torch.ones(2))


def test_word_padding_does_not_change_scores():
    head = _head()
    vis, present, words, wv, _ = _inputs(P=3, L=5)
    valid = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        short = head(vis[1:], present[1:], valid[1:], words[1:, :3], wv[1:, :3])
        long = head(vis[1:], present[1:], valid[1:], words[1:], wv[1:])  # words 3.. are padding
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temporal", [False, True])
def test_permuting_tracklets_permutes_scores(temporal):
    head = _head(temporal)
    G = geometry_dim(head.opts.temporal) if temporal else None
    vis, present, words, wv, geom = _inputs(P=4, G=G)
    present[0, 2] = False
    valid = torch.ones(2, 4, dtype=torch.bool)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a = head(vis, present, valid, words, wv, geom)
        b = head(vis[:, perm], present[:, perm], valid[:, perm], words, wv,
                 geom[:, perm] if G else None)
    torch.testing.assert_close(b, a[:, perm], atol=1e-5, rtol=1e-5)


def test_absent_tracklets_and_zero_area_masks_give_finite_scores():
    head = _head()
    fmap = torch.randn(2, 32, 4, 6)
    m = np.zeros((2, 3, 32, 48), dtype=np.uint8)
    m[0, 0, 4:12, 4:12] = 1  # frame 0: tracklet 0 visible, 1 and 2 empty (zero area)
    # frame 1: every tracklet absent
    w = torch.stack([mask_weights(m[t], (4, 6)) for t in range(2)])
    pooled, present = pool_with_weights(fmap, w)
    assert present.tolist() == [[True, False, False], [False, False, False]]
    assert torch.isfinite(pooled).all()
    valid = torch.ones(2, 3, dtype=torch.bool)
    words = torch.randn(2, 4, 32)
    with torch.no_grad():
        probs = masked_softmax(head(pooled, present, valid, words, torch.ones(2, 4, dtype=torch.bool)), valid)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    # with no real tracklet at all a row is all zeros, not NaN
    none = torch.zeros(1, 3, dtype=torch.bool)
    assert torch.equal(masked_softmax(torch.full((1, 3), float("-inf")), none), torch.zeros(1, 3))


def test_mask_average_pooling_hand_computed():
    # 2 channels on a 2x2 grid; a 4x4 mask covering the top-left cell fully and half of the
    # top-right cell: weights 1 and 0.5 -> (1*f00 + 0.5*f01) / 1.5
    fmap = torch.tensor([[[[1.0, 4.0], [7.0, 9.0]], [[2.0, -2.0], [0.0, 0.0]]]])
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, 0:2, 0:3] = 1
    w = mask_weights(mask, (2, 2))
    torch.testing.assert_close(w, torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]))
    pooled, present = pool_with_weights(fmap, w[None])
    torch.testing.assert_close(pooled[0, 0], torch.tensor([(1 + 0.5 * 4) / 1.5, (2 - 0.5 * 2) / 1.5]))
    assert bool(present[0, 0])


def test_tiny_mask_smaller_than_a_cell_still_counts():
    mask = np.zeros((1, 64, 64), dtype=np.uint8)
    mask[0, 33, 40] = 1  # one pixel
    w = mask_weights(mask, (4, 4))
    assert float(w.sum()) > 0
    _, present = pool_with_weights(torch.randn(1, 8, 4, 4), w[None])
    assert bool(present[0, 0])


def test_geometry_features_hand_computed():
    # one tracklet moving right by 10 px per frame on a 100x100 frame, absent on frame 3
    H = W = 100
    rles = []
    for t in range(4):
        m = np.zeros((H, W), dtype=np.uint8)
        if t < 3:
            m[40:60, 10 * t : 10 * t + 20] = 1
        rles.append([rle.encode(m)])
    boxes, present = boxes_from_rles(rles, H, W)
    assert present[:, 0].tolist() == [True, True, True, False]
    np.testing.assert_allclose(boxes[1, 0], [0.1, 0.4, 0.3, 0.6, 1.0], atol=1e-6)
    opts = TemporalOptions(enabled=True, offsets=[1], velocity_scale=10.0)
    g = geometry_features(boxes, present, opts)
    assert g.shape == (4, 1, geometry_dim(opts)) == (4, 1, 16)
    # frame 1: static part cx, cy, w, h, fill (a full rectangle), present
    np.testing.assert_allclose(g[1, 0, :6], [0.2, 0.5, 0.2, 0.2, 1.0, 1.0], atol=1e-6)
    # to t-1: dcx = -0.1 * 10 = -1; to t+1: +1; both valid
    np.testing.assert_allclose(g[1, 0, 6:11], [-1.0, 0, 0, 0, 1.0], atol=1e-5)
    np.testing.assert_allclose(g[1, 0, 11:16], [1.0, 0, 0, 0, 1.0], atol=1e-5)
    # frame 2 -> frame 3 is absent: change 0, valid 0; frame 0 has no t-1
    np.testing.assert_allclose(g[2, 0, 11:16], 0.0)
    np.testing.assert_allclose(g[0, 0, 6:11], 0.0)
    # a triangle-ish mask fills about half its box
    tri = np.tril(np.ones((40, 40), np.uint8))
    b2, _ = boxes_from_rles([[rle.encode(np.pad(tri, ((0, 60), (0, 60))))]], H, W)
    assert b2[0, 0, 4] == pytest.approx(820 / 1600)
    assert np.isfinite(g).all() and np.all(g[3, 0] == 0)


def test_grounding_loss_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0), 5.0]])
    valid = torch.tensor([[True, True, False]])
    loss = grounding_loss(logits, valid, torch.tensor([[False, True, False]]))
    torch.testing.assert_close(loss, torch.tensor([-math.log(3 / 4)]))
    both = grounding_loss(logits, valid, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(both, torch.tensor([0.0]), atol=1e-6, rtol=0)
