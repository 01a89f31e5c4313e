"""Tracklet scoring and tracklet-NMS against a brute-force dense computation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rvos_ray import masks
from rvos_ray.stages.tracklet_nms import NMSStage, nms_tracklets, tracklet_nms, tracklet_scores
from rvos_ray.types import TRACKLET_SCHEMA, SchemaError, table_from_columns, validate

H, W = 20, 24


def _table(video_id: str, dense: np.ndarray, det: list[float], probs: np.ndarray, ids=None) -> pa.Table:
    """dense (N, T, H, W) uint8; probs (N, T)."""
    n, t = dense.shape[:2]
    ids = list(range(n)) if ids is None else ids
    cols = {k: [] for k in TRACKLET_SCHEMA.names}
    for i in range(n):
        for f in range(t):
            cols["video_id"].append(video_id)
            cols["tracklet_id"].append(ids[i])
            cols["keyframe"].append(0)
            cols["source"].append("htc" if i % 2 else "condinst")
            cols["det_score"].append(det[i])
            cols["frame"].append(f)
            cols["height"].append(H)
            cols["width"].append(W)
            cols["rle"].append(masks.encode(dense[i, f]))
            cols["prob"].append(float(probs[i, f]))
    return table_from_columns(cols, TRACKLET_SCHEMA)


def _random_tracklets(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    dense = np.zeros((n, t, H, W), np.uint8)
    for i in range(n):
        src = rng.integers(0, i) if i > 2 and rng.random() < 0.5 else None  # near-duplicates
        for f in range(t):
            if src is not None:
                dense[i, f] = dense[src, f]
                y, x = rng.integers(0, H), rng.integers(0, W)
                dense[i, f, y : y + 4, x : x + 4] ^= 1  # perturb
            elif rng.random() > 0.15:  # some empty frames
                y0, x0 = rng.integers(0, H - 3), rng.integers(0, W - 3)
                dense[i, f, y0 : y0 + rng.integers(2, 10), x0 : x0 + rng.integers(2, 12)] = 1
    return dense


def _brute_force(dense, det, probs, ids, thr, p, min_score=0.0) -> list[int]:
    n = len(dense)
    scores = np.asarray(det, np.float64) * probs.astype(np.float32).astype(np.float64).mean(1)
    a = dense.reshape(n, -1).astype(np.int64)
    inter = a @ a.T
    area = a.sum(1)
    union = area[:, None] + area[None, :] - inter
    tiou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    order = sorted(range(n), key=lambda i: (-scores[i], ids[i]))
    kept = []
    for i in order:
        if scores[i] < min_score or len(kept) == p:
            continue
        if all(tiou[i, j] <= thr for j in kept):
            kept.append(i)
    return [ids[i] for i in kept]


def _kept_ids(table: pa.Table) -> list[int]:
    return list(dict.fromkeys(table.column("tracklet_id").to_pylist()))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr,p", [(0.5, 10), (0.3, 4), (0.8, 3), (0.0, 10), (1.0, 10)])
def test_nms_matches_dense_brute_force(seed, thr, p):
    rng = np.random.default_rng(seed)
    n, t = 14, 5
    dense = _random_tracklets(rng, n, t)
    det = rng.uniform(0.1, 1.0, n).astype(np.float32).tolist()
    probs = rng.uniform(0, 1, (n, t)).astype(np.float32)
    ids = rng.permutation(100)[:n].tolist()
    out = nms_tracklets(_table("v", dense, det, probs, ids), thr, p)
    validate(out, TRACKLET_SCHEMA)
    assert _kept_ids(out) == _brute_force(dense, np.float32(det), probs, ids, thr, p)
    # every kept tracklet keeps all its frames, in order, with its own masks
    for tid in _kept_ids(out):
        rows = out.filter(pa.compute.equal(out["tracklet_id"], tid))
        assert rows["frame"].to_pylist() == list(range(t))
        i = ids.index(tid)
        for f, r in enumerate(rows["rle"].to_pylist()):
            assert np.array_equal(masks.decode(r, H, W), dense[i, f])


def test_score_is_det_times_mean_prob_over_all_frames():
    dense = np.zeros((2, 4, H, W), np.uint8)
    dense[0, :, :5, :5] = 1
    dense[1, 1:, 10:, 10:] = 1  # empty on frame 0: prob 0 still counts in the mean
    probs = np.array([[1.0, 0.5, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0]], np.float32)
    s = tracklet_scores(_table("v", dense, [0.8, 0.5], probs))
    assert s[("v", 0)] == pytest.approx(0.8 * 0.75)
    assert s[("v", 1)] == pytest.approx(0.5 * 0.75)


def test_max_tracklets_keeps_top_p_of_disjoint():
    n, t = 6, 2
    dense = np.zeros((n, t, H, W), np.uint8)
    for i in range(n):
        dense[i, :, i * 3 : i * 3 + 2, :] = 1  # disjoint rows
    det = [0.1, 0.9, 0.5, 0.7, 0.3, 0.8]
    probs = np.ones((n, t), np.float32)
    table = _table("v", dense, det, probs)
    assert _kept_ids(nms_tracklets(table, 0.5, 3)) == [1, 5, 3]
    assert _kept_ids(nms_tracklets(table, 0.5, 10)) == [1, 5, 3, 2, 4, 0]
    assert _kept_ids(nms_tracklets(table, 0.5, 10, min_score=0.4)) == [1, 5, 3, 2]


def test_threshold_is_strict():
    # tracklet-IoU exactly 0.5: A = 8 px on 2 frames, B = half of A -> 8 / 16 = 0.5
    dense = np.zeros((2, 2, H, W), np.uint8)
    dense[0, :, 0, :8] = 1
    dense[1, :, 0, :4] = 1
    probs = np.ones((2, 2), np.float32)
    table = _table("v", dense, [0.9, 0.8], probs)
    assert _kept_ids(nms_tracklets(table, 0.5, 10)) == [0, 1]  # not above the threshold
    assert _kept_ids(nms_tracklets(table, 0.49, 10)) == [0]
    # the IoU is summed over frames, not averaged: frame 0 equal, frame 1 disjoint
    dense[1, 0] = dense[0, 0]
    dense[1, 1] = 0
    dense[1, 1, 5, :8] = 1
    table = _table("v", dense, [0.9, 0.8], probs)  # I = 8, U = 8 + 16 = 24 -> 1/3
    assert _kept_ids(nms_tracklets(table, 0.34, 10)) == [0, 1]
    assert _kept_ids(nms_tracklets(table, 0.33, 10)) == [0]


def test_ties_lower_tracklet_id_wins():
    dense = np.zeros((3, 2, H, W), np.uint8)
    dense[:, :, :6, :6] = 1  # identical tracklets
    probs = np.full((3, 2), 0.5, np.float32)
    table = _table("v", dense, [0.6, 0.6, 0.6], probs, ids=[7, 3, 5])
    assert _kept_ids(nms_tracklets(table, 0.5, 10)) == [3]
    dense[:] = 0
    for i in range(3):
        dense[i, :, i * 6 : i * 6 + 3, :] = 1  # disjoint, equal scores: order by id
    table = _table("v", dense, [0.6, 0.6, 0.6], probs, ids=[7, 3, 5])
    assert _kept_ids(nms_tracklets(table, 0.5, 10)) == [3, 5, 7]
    assert _kept_ids(nms_tracklets(table, 0.5, 2)) == [3, 5]


def test_videos_are_independent_and_keep_input_order():
    rng = np.random.default_rng(3)
    d1, d2 = _random_tracklets(rng, 5, 3), _random_tracklets(rng, 4, 3)
    p1, p2 = rng.uniform(0, 1, (5, 3)).astype(np.float32), rng.uniform(0, 1, (4, 3)).astype(np.float32)
    t1 = _table("b", d1, [0.5] * 5, p1)
    t2 = _table("a", d2, [0.9] * 4, p2)
    both = pa.concat_tables([t1, t2])
    out = NMSStage({"iou_threshold": 0.5, "max_tracklets": 2}).select(both)
    from omegaconf import OmegaConf

    from rvos_ray.config import NMSConfig

    cfg = OmegaConf.structured(NMSConfig(iou_threshold=0.5, max_tracklets=2))
    assert tracklet_nms(both, cfg).equals(out)  # the config-section entry point
    vids = out["video_id"].to_pylist()
    assert list(dict.fromkeys(vids)) == ["b", "a"]
    sep = [nms_tracklets(t1, 0.5, 2), nms_tracklets(t2, 0.5, 2)]
    assert out["tracklet_id"].to_pylist() == sep[0]["tracklet_id"].to_pylist() + sep[1]["tracklet_id"].to_pylist()


def test_bad_tables_are_rejected():
    dense = np.zeros((2, 3, H, W), np.uint8)
    table = _table("v", dense, [0.5, 0.5], np.ones((2, 3), np.float32))
    with pytest.raises(SchemaError, match="no row for frame 2"):
        nms_tracklets(table.slice(0, 5), 0.5, 10)
    with pytest.raises(SchemaError, match="two rows for one frame"):
        nms_tracklets(pa.concat_tables([table, table.slice(0, 1)]), 0.5, 10)
    with pytest.raises(SchemaError, match="missing column 'prob'"):
        nms_tracklets(table.drop(["prob"]), 0.5, 10)
    with pytest.raises(ValueError, match="max_tracklets"):
        nms_tracklets(table, 0.5, 0)
    assert nms_tracklets(TRACKLET_SCHEMA.empty_table()).num_rows == 0
