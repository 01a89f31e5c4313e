"""Ensemble: hand-computed averages, weights, log-space mean, temperature, stride, ties."""

from __future__ import annotations

import math

import pytest

from rvos_ray.registry import ConfigError
from rvos_ray.stages.ensemble import EnsembleStage, ensemble
from rvos_ray.types import GROUNDING_SCHEMA, PREDICTION_SCHEMA, table_from_columns


def _table(rows):
    """rows: (variant, exp, frame, tracklet, prob) in video v0."""
    return table_from_columns(
        {
            "video_id": ["v0"] * len(rows),
            "exp_id": [r[1] for r in rows],
            "variant": [r[0] for r in rows],
            "tracklet_id": [r[3] for r in rows],
            "frame": [r[2] for r in rows],
            "prob": [r[4] for r in rows],
        },
        GROUNDING_SCHEMA,
    )


# Two variants, tracklets 3 and 7, frames 0 and 1, one expression "0".
#   A: f0 (0.9, 0.1)  f1 (0.6, 0.4)   -> s = (0.75, 0.25)
#   B: f0 (0.2, 0.8)  f1 (0.1, 0.9)   -> s = (0.15, 0.85)
ROWS = [
    ("A", "0", 0, 3, 0.9), ("A", "0", 0, 7, 0.1), ("A", "0", 1, 3, 0.6), ("A", "0", 1, 7, 0.4),
    ("B", "0", 0, 3, 0.2), ("B", "0", 0, 7, 0.8), ("B", "0", 1, 3, 0.1), ("B", "0", 1, 7, 0.9),
]


def _pred(t):
    assert t.schema == PREDICTION_SCHEMA
    return [(r["exp_id"], r["tracklet_id"], r["score"]) for r in t.to_pylist()]


def test_equal_mean_hand_computed():
    # mean over variants then frames: tracklet 3: (0.55 + 0.35)/2 = 0.45; tracklet 7: 0.55
    (exp, tid, score), = _pred(ensemble(_table(ROWS)))
    assert (exp, tid) == ("0", 7)
    assert score == pytest.approx(0.55, abs=1e-6)


def test_single_variant_and_weights():
    (_, tid, score), = _pred(ensemble(_table(ROWS), variants=["A"]))
    assert (tid, score) == (3, pytest.approx(0.75, abs=1e-6))
    # weights 3:1 for A: tracklet 3 = 0.75*0.75 + 0.25*0.15 = 0.6
    (_, tid, score), = _pred(ensemble(_table(ROWS), weights={"A": 3, "B": 1}))
    assert (tid, score) == (3, pytest.approx(0.6, abs=1e-6))


def test_logmean_hand_computed():
    # frame 0: sqrt(.9*.2)=.42426, sqrt(.1*.8)=.28284 -> .6 / .4 ; frame 1: sqrt(.06)=.24495,
    # sqrt(.36)=.6 -> .28990 / .71010 ; s3 = .44495, s7 = .55505
    (_, tid, score), = _pred(ensemble(_table(ROWS), mode="logmean"))
    f1 = math.sqrt(0.36) / (math.sqrt(0.06) + math.sqrt(0.36))
    assert tid == 7
    assert score == pytest.approx((0.4 + f1) / 2, abs=1e-6)


def test_temperature_sharpens_each_variant_before_averaging():
    # T = 0.5 squares and renormalises: A f0 (.81,.01)/.82, f1 (.36,.16)/.52; B f0 (.04,.64)/.68,
    # f1 (.01,.81)/.82
    a = [0.81 / 0.82, 0.36 / 0.52]
    b = [0.04 / 0.68, 0.01 / 0.82]
    s3 = ((a[0] + b[0]) / 2 + (a[1] + b[1]) / 2) / 2
    (_, tid, score), = _pred(ensemble(_table(ROWS), temperature=0.5))
    assert s3 == pytest.approx(0.437783, abs=1e-6)  # 0.4378 < 0.45 of the untempered mean
    assert tid == 7
    assert score == pytest.approx(1 - s3, abs=1e-6)


def test_frame_stride_and_ties_and_several_expressions():
    rows = ROWS + [("A", "1", 0, 3, 0.5), ("A", "1", 0, 7, 0.5), ("B", "1", 0, 3, 0.5), ("B", "1", 0, 7, 0.5)]
    preds = _pred(ensemble(_table(rows), frame_stride=2))
    # stride 2 keeps frame 0 only: tracklet 3 (0.9 + 0.2)/2 = 0.55 beats 7 (0.45); with every
    # frame 7 wins (test_equal_mean_hand_computed)
    assert preds[0] == ("0", 3, pytest.approx(0.55, abs=1e-6))
    # exact tie: the lower tracklet id wins
    assert preds[1] == ("1", 3, pytest.approx(0.5, abs=1e-6))


def test_bad_settings_are_errors_naming_the_key():
    with pytest.raises(ConfigError, match="ensemble.mode"):
        ensemble(_table(ROWS), mode="max")
    with pytest.raises(ConfigError, match="no weight for variant 'B'"):
        ensemble(_table(ROWS), weights={"A": 1})
    with pytest.raises(ConfigError, match="variants"):
        ensemble(_table(ROWS), variants=["C"])
    assert ensemble(GROUNDING_SCHEMA.empty_table()).num_rows == 0


def test_ensemble_stage_from_config_section():
    e = EnsembleStage({"weights": {"A": 1.0, "B": 0.0}, "mode": "mean", "temperature": 1.0, "frame_stride": 1})
    (_, tid, score), = _pred(e.combine(_table(ROWS)))
    assert (tid, score) == (3, pytest.approx(0.75, abs=1e-6))
