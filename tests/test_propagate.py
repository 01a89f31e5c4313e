"""Propagation stage helpers and the CFBI+ backend (tiny, random init, from configs/tiny.yaml):
forward/backward coverage, one backbone pass per frame whatever the number of candidates,
candidates independent of each other, checkpoints."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from rvos_ray import masks
from rvos_ray.config import load_config
from rvos_ray.data.errors import DataError
from rvos_ray.registry import ConfigError
from rvos_ray.stages.propagate import (
    PropagateStage,
    PropagationCall,
    TrackletBuilder,
    frame_order,
    masks_and_probabilities,
    propagation_plan,
)
from rvos_ray.stages.prune import subset
from rvos_ray.stages.tracklet_nms import concat_tracklets
from rvos_ray.types import TRACKLET_SCHEMA, Candidates, SchemaError, Video, validate

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 80


def _video(tmp_path: Path, t_count: int, size=(H, W)) -> Video:
    """A red square moving right over a grey gradient, and a static blue bar."""
    h, w = size
    names, paths = [], []
    for t in range(t_count):
        img = np.zeros((h, w, 3), np.uint8)
        img[...] = np.linspace(60, 160, w, dtype=np.uint8)[None, :, None]
        x = 4 + 3 * t
        img[10:24, x : x + 14] = (220, 30, 30)
        img[32:40, 50:74] = (30, 40, 220)
        p = tmp_path / f"{t:05d}.jpg"
        Image.fromarray(img).save(p, quality=95)
        names.append(f"{t:05d}")
        paths.append(str(p))
    return Video("vid", tuple(names), tuple(paths))


def _candidates(frame: int, t_count: int) -> Candidates:
    sq = np.zeros((H, W), np.uint8)
    x = 4 + 3 * frame
    sq[10:24, x : x + 14] = 1
    bar = np.zeros((H, W), np.uint8)
    bar[32:40, 50:74] = 1
    empty = np.zeros((H, W), np.uint8)
    rles = tuple(masks.encode(m) for m in (sq, bar, empty))
    return Candidates("vid", frame, H, W, rles, (0.9, 0.6, 0.3), (1, 2, 3), ("htc", "condinst", "htc"))


def _setup(section) -> PropagateStage:
    """The propagation stage of ``section``, set up as an executor does."""
    stage = PropagateStage(section)
    stage.setup()
    return stage


def build_propagator(section):
    return _setup(section).model


def _stage(**options) -> PropagateStage:
    section = OmegaConf.to_container(load_config(ROOT / "configs" / "tiny.yaml").propagation)
    section["options"]["long_edge"] = 80  # 48x80 frames at full size: a cheap test
    section["options"].update(options)
    torch.manual_seed(0)
    return _setup(section)


def _propagator(**options):
    return _stage(**options).model


# ---------------------------------------------------------------------------------------------
# stage helpers
# ---------------------------------------------------------------------------------------------


def test_frame_order_forward_then_backward():
    assert frame_order(5, 2) == ([3, 4], [1, 0])
    assert frame_order(5, 0) == ([1, 2, 3, 4], [])
    assert frame_order(5, 4) == ([], [3, 2, 1, 0])
    assert frame_order(1, 0) == ([], [])
    with pytest.raises(ValueError, match="keyframe 5 outside"):
        frame_order(5, 5)


def test_tracklet_ids_and_chunks():
    """The runtime's plan: calls per keyframe and chunk; ids keyframe by keyframe."""
    c = _candidates(0, 4)
    calls = propagation_plan([3, 0, 3], 2)
    assert [(x.keyframe_index, x.start, x.stop) for x in calls] == [(0, 0, 2), (0, 2, 3), (2, 0, 2), (2, 2, 3)]
    assert [x.tracklet_ids for x in calls] == [[0, 1], [2], [3, 4], [5]]
    part = subset(c, range(calls[-1].start, calls[-1].stop))
    assert part.sources == ("htc",) and part.scores == (0.3,)
    with pytest.raises(ConfigError, match="candidates_per_call"):
        propagation_plan([3], 0)


def test_masks_and_probabilities_hand_checked():
    prob = np.array([[[0.9, 0.2], [0.7, 0.5]], [[0.1, 0.2], [0.3, 0.5]]], np.float32)
    m, p = masks_and_probabilities(prob, 0.5)
    assert m[0].tolist() == [[1, 0], [1, 0]]  # 0.5 is not above the threshold
    assert p[0] == pytest.approx(0.8)  # mean of 0.9 and 0.7 inside the mask
    assert m[1].sum() == 0 and p[1] == 0.0  # empty mask: probability 0


def test_builder_requires_every_frame_once(tmp_path):
    video = _video(tmp_path, 3)
    c = _candidates(1, 3)
    b = TrackletBuilder(video, c, [0, 1, 2])
    b.record(1, list(c.rles), [1.0] * 3)
    b.record(0, list(c.rles), [0.5] * 3)
    with pytest.raises(ValueError, match="frame 0 recorded twice"):
        b.record(0, list(c.rles), [0.5] * 3)
    with pytest.raises(SchemaError, match=r"no masks for frames \[2\]"):
        b.table()
    b.record(2, list(c.rles), [0.25] * 3)
    t = validate(b.table(), TRACKLET_SCHEMA)
    assert t["tracklet_id"].to_pylist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert t["frame"].to_pylist() == [0, 1, 2] * 3
    assert t["prob"].to_pylist()[:3] == [0.5, 1.0, 0.25]
    assert t["source"].to_pylist()[3] == "condinst" and t["keyframe"].to_pylist() == [1] * 9
    with pytest.raises(ValueError, match="not unique"):
        TrackletBuilder(video, c, [0, 0, 1])


# ---------------------------------------------------------------------------------------------
# CFBI+ backend
# ---------------------------------------------------------------------------------------------


def _by_tracklet(table: pa.Table) -> dict[int, dict[int, tuple[bytes, float]]]:
    out: dict[int, dict[int, tuple[bytes, float]]] = {}
    for tid, f, r, p in zip(*(table[c].to_pylist() for c in ("tracklet_id", "frame", "rle", "prob"))):
        assert f not in out.setdefault(tid, {}), f"tracklet {tid} has frame {f} twice"
        out[tid][f] = (r, p)
    return out


def test_cfbi_covers_every_frame_once_forward_and_backward(tmp_path):
    t_count, kf = 6, 2
    video = _video(tmp_path, t_count)
    prop = _propagator()
    cands = _candidates(kf, t_count)
    table = validate(prop.propagate(video, cands, [7, 8, 9]), TRACKLET_SCHEMA)
    assert table.num_rows == 3 * t_count
    rows = _by_tracklet(table)
    assert sorted(rows) == [7, 8, 9]
    for i, tid in enumerate([7, 8, 9]):
        assert sorted(rows[tid]) == list(range(t_count))  # exactly one mask per frame
        # the keyframe keeps the candidate mask; probability 1 (0 for the empty candidate)
        assert rows[tid][kf] == (cands.rles[i], 0.0 if i == 2 else 1.0)
        for f in range(t_count):
            r, p = rows[tid][f]
            assert masks.decode(r, H, W).shape == (H, W)
            assert 0.0 <= p <= 1.0
            if masks.areas([r], H, W)[0] == 0:
                assert p == 0.0
    assert sorted(set(np.float32(table["det_score"].to_numpy()).tolist())) == np.float32([0.3, 0.6, 0.9]).tolist()
    assert table["keyframe"].to_pylist() == [kf] * table.num_rows


def test_cfbi_backbone_runs_once_per_frame_whatever_the_candidate_count(tmp_path):
    t_count = 5
    video = _video(tmp_path, t_count)
    prop = _propagator(candidate_batch=2)  # 3 candidates -> 2 matching/decoder batches per frame
    c = _candidates(0, t_count)
    before = prop.backbone_forward_passes
    prop.propagate(video, c, [0, 1, 2])
    assert prop.backbone_forward_passes - before == t_count
    one = Candidates("vid", 4, H, W, c.rles[:1], c.scores[:1], c.labels[:1], c.sources[:1])
    before = prop.backbone_forward_passes
    prop.propagate(video, one, [3])
    assert prop.backbone_forward_passes - before == t_count


def test_cfbi_candidates_are_independent(tmp_path):
    """Each candidate is its own problem: propagating it with others equals propagating it alone."""
    t_count = 4
    video = _video(tmp_path, t_count)
    c = _candidates(1, t_count)
    together = _by_tracklet(_propagator(candidate_batch=3).propagate(video, c, [0, 1, 2]))
    prop = _propagator(candidate_batch=1)
    for i in range(3):
        alone = Candidates("vid", 1, H, W, c.rles[i : i + 1], c.scores[i : i + 1], c.labels[i : i + 1],
                           c.sources[i : i + 1])
        rows = _by_tracklet(prop.propagate(video, alone, [i]))
        for f in range(t_count):
            a = masks.decode(together[i][f][0], H, W)
            b = masks.decode(rows[i][f][0], H, W)
            assert (a != b).mean() <= 0.002  # a pixel at logit ~0 may flip with float order
            assert together[i][f][1] == pytest.approx(rows[i][f][1], abs=1e-3)


def test_cfbi_propagation_calls_chunks_and_ids(tmp_path):
    """A video's propagation as the executors run it: the plan's calls, then one table."""
    video = _video(tmp_path, 3)
    prop = _stage()
    pooled = [_candidates(0, 3), _candidates(2, 3)]
    calls = propagation_plan([len(c) for c in pooled], 2)
    table = concat_tracklets([prop.process(video, pooled[x.keyframe_index], x)[0] for x in calls])
    assert sorted(set(table["tracklet_id"].to_pylist())) == list(range(6))
    assert table.num_rows == 6 * 3
    assert prop.model.backbone_forward_passes == 4 * 3  # 2 keyframes x 2 calls, T frames each


def test_cfbi_rejects_frames_of_another_size(tmp_path):
    video = _video(tmp_path, 2, size=(H, W + 16))
    with pytest.raises(DataError, match="the keyframe candidates are 48x80"):
        _propagator().propagate(video, _candidates(0, 2), [0, 1, 2])


def test_cfbi_checkpoint_round_trip(tmp_path):
    video = _video(tmp_path, 3)
    prop = _propagator()
    cfg = dataclasses.asdict(prop.model.cfg)
    path = tmp_path / "model.pt"
    buf = io.BytesIO()
    torch.save({"config": cfg, "model": prop.model.state_dict()}, buf)
    path.write_bytes(buf.getvalue())
    # model omitted: the architecture comes from the checkpoint
    loaded = build_propagator({"backend": "cfbi", "options": {"checkpoint": str(path), "long_edge": 80, "device": "cpu"}})
    c = _candidates(0, 3)
    a = prop.propagate(video, c, [0, 1, 2])
    b = loaded.propagate(video, c, [0, 1, 2])
    assert a["prob"].to_pylist() == pytest.approx(b["prob"].to_pylist(), abs=1e-5)
    other = dict(OmegaConf.to_container(load_config(ROOT / "configs" / "tiny.yaml").propagation))
    other["options"].update(checkpoint=str(path))
    other["options"]["model"]["decoder_channels"] = 16
    with pytest.raises(ConfigError, match="decoder_channels"):
        build_propagator(other)
    with pytest.raises(ConfigError, match="does not exist"):
        build_propagator({"backend": "cfbi", "options": {"checkpoint": str(tmp_path / "nope.pt")}})
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        build_propagator({"backend": "cfbi", "options": {"bogus": 1}})


# ---------------------------------------------------------------------------------------------
# propagation work avoided (propagation.avoid; rvos_ray/stages/prune.py)
# ---------------------------------------------------------------------------------------------


def test_same_keyframe_duplicates_merge_into_the_higher_score():
    from rvos_ray.stages.prune import merge_duplicates

    c = _candidates(0, 3)
    sq = masks.decode(c.rles[0], H, W).copy()
    sq[10:24, 17] = 0  # the same square (columns 4-17), one column short: IoU 13/14
    dup = Candidates("vid", 0, H, W, (c.rles[0], masks.encode(sq), c.rles[1]), (0.4, 0.8, 0.6), (1, 1, 2),
                     ("htc", "condinst", "htc"))
    out = merge_duplicates(dup, 0.7)
    assert out.rles == (dup.rles[1], dup.rles[2]) and out.scores == (0.8, 0.6)  # order kept
    assert out.sources == ("condinst", "htc") and out.labels == (1, 2)
    assert merge_duplicates(dup, 0.95) == dup  # IoU 0.93 is not above 0.95
    assert merge_duplicates(c, 0.5) == c  # an empty mask overlaps nothing


def test_covered_candidates_are_not_propagated_and_keep_their_ids(tmp_path):
    """Keyframe 2's square and bar are what keyframe 0's tracklets already hold at frame 2: only
    its third (empty) candidate is propagated, under the id the plan gave it."""
    video = _video(tmp_path, 5)
    early = TrackletBuilder(video, _candidates(0, 5), [0, 1, 2])
    for t in range(5):
        early.record(t, list(_candidates(t, 5).rles), [1.0, 1.0, 0.0])
    earlier = early.table()
    prop = _stage()
    call = PropagationCall(1, 0, 3, 3)
    every, _ = prop.process(video, _candidates(2, 5), call, earlier)  # off: all three
    assert sorted(set(every["tracklet_id"].to_pylist())) == [3, 4, 5]
    prop.covered_iou = 0.5
    table, passes = prop.process(video, _candidates(2, 5), call, earlier)
    assert sorted(set(table["tracklet_id"].to_pylist())) == [5]
    assert passes == {"propagation": {"backbone": 5}}
    assert prop.process(video, _candidates(2, 5), call)[0].num_rows == 15  # no earlier: all


def test_feature_cache_reuses_frames_across_calls_with_identical_tables(tmp_path):
    video = _video(tmp_path, 4)
    plain = _stage()
    tiny = OmegaConf.to_container(load_config(ROOT / "configs" / "tiny.yaml").propagation)
    cached = _setup({**tiny, "avoid": {"feature_cache_frames": 8}, "options": {**tiny["options"], "long_edge": 80}})
    cached.model.model.load_state_dict(plain.model.model.state_dict())
    calls = propagation_plan([3, 3], 2)
    pooled = [_candidates(0, 4), _candidates(2, 4)]
    a = [plain.process(video, pooled[x.keyframe_index], x) for x in calls]
    b = [cached.process(video, pooled[x.keyframe_index], x) for x in calls]
    assert all(x[0].equals(y[0]) for x, y in zip(a, b))
    assert [p["propagation"]["backbone"] for _, p in a] == [4, 4, 4, 4]
    assert [p["propagation"].get("backbone", 0) for _, p in b] == [4, 0, 0, 0]  # every frame once


def test_feature_cache_on_a_backend_without_one_is_a_config_error():
    with pytest.raises(ConfigError, match="propagation.avoid.feature_cache_frames"):
        build_propagator({"backend": "none", "options": {}, "avoid": {"feature_cache_frames": 4}})
