"""Pooling several segmenters per keyframe (paper: HTC + CondInst) and score calibration, as
the executors run them: one calibrated segmenter per model, then the pooling step."""

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from rvos_ray.registry import ConfigError
from rvos_ray.runtime import pipeline as pl
from rvos_ray.seeding import seeded
from rvos_ray.stages.segment import PoolStage, ScoreCalibration, SegmentStage, make_candidates
from rvos_ray.types import Video

from test_segment_mmdet import write_video  # noqa: E402  (same test folder)


def test_calibration_hand_computed():
    cal = ScoreCalibration(slope=2.0, bias=-1.0)
    # s = 0.5: logit 0 -> 2*0 - 1 = -1 -> sigmoid(-1) = 0.268941...
    # s = 0.8: logit ln 4 = 1.386294 -> 2.772589 - 1 = 1.772589 -> 0.854749...
    out = cal([0.5, 0.8])
    assert out[0] == pytest.approx(1 / (1 + math.e), abs=1e-9)
    assert out[1] == pytest.approx(1 / (1 + math.exp(-(2 * math.log(4) - 1))), abs=1e-9)
    assert ScoreCalibration()([0.25, 1.0, 0.0]) == (0.25, 1.0, 0.0)  # identity leaves scores as they are
    assert all(0.0 < v < 1.0 for v in cal([0.0, 1.0]))
    with pytest.raises(ConfigError, match="slope"):
        ScoreCalibration(slope=0.0)


def test_make_candidates_threshold_order_topk_and_empty_masks():
    m = np.zeros((4, 6, 8), bool)
    m[0, :2], m[1, 2:4], m[3, 4:] = True, True, True  # mask 2 is empty
    c = make_candidates("v", 3, 6, 8, m, np.array([0.2, 0.9, 0.95, 0.5]), np.array([1, 2, 3, 4]), "x", 0.3, 10)
    assert c.scores == (0.9, 0.5) and c.labels == (2, 4) and c.sources == ("x", "x")
    c = make_candidates("v", 3, 6, 8, m, np.array([0.2, 0.9, 0.95, 0.5]), np.array([1, 2, 3, 4]), "x", 0.0, 1)
    assert c.scores == (0.9,)
    none = make_candidates("v", 3, 6, 8, np.zeros((0, 6, 8), bool), np.zeros(0), np.zeros(0), "x", 0.0, 10)
    assert len(none) == 0 and (none.height, none.width, none.frame) == (6, 8, 3)
    with pytest.raises(ValueError, match="frame size"):
        make_candidates("v", 3, 5, 8, m, np.zeros(4), np.zeros(4), "x", 0.0, 10)


def tiny_section(**htc_extra):
    return OmegaConf.create(
        {
            "models": [
                {"name": "htc", "backend": "mmdet", "config": "configs/segmenter/htc_tiny.py",
                 "score_threshold": 0.0, "max_per_frame": 4, **htc_extra},
                {"name": "condinst", "backend": "mmdet", "config": "configs/segmenter/condinst_tiny.py",
                 "score_threshold": 0.0, "max_per_frame": 3},
            ]
        }
    )


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("frames") / "vid0", [(96, 128)] * 3)


def _build(section, seed=0):
    """Each model's stage set up as the executors do it: seeded with the run's seed (random init)."""
    stages = [SegmentStage(m, f"segmentation.models[{i}]") for i, m in enumerate(section.models)]
    for s in stages:
        seeded(seed, s.setup)
    return stages


def test_two_model_pooling_keeps_both_sets(video):
    pytest.importorskip("mmdet")
    segs = _build(tiny_section(calibration={"slope": 1.0, "bias": 2.0}))
    assert [s.name for s in segs] == ["htc", "condinst"]
    frames = [2, 0]
    *pooled_out, counts = PoolStage(len(segs)).process(frames, *(s.process(video, frames) for s in segs))
    htc, condinst = (s.model for s in segs)
    for c, h, k in zip(pooled_out, htc.segment(video, frames), condinst.segment(video, frames)):
        assert c.frame == h.frame == k.frame
        assert c.sources == ("htc",) * len(h) + ("condinst",) * len(k)
        assert c.rles == h.rles + k.rles and c.labels == h.labels + k.labels
        # HTC's scores went through the calibration, CondInst's did not.
        assert c.scores[: len(h)] == pytest.approx(ScoreCalibration(1.0, 2.0)(h.scores))
        assert c.scores[len(h):] == k.scores
        assert len(h) > 0 and len(k) > 0
    assert counts == [len(c) for c in pooled_out]


def test_segmentation_config_errors(tmp_path):
    from rvos_ray.config import load_config

    with pytest.raises(ConfigError, match=r"models\[0\].*backend"):
        _build(OmegaConf.create({"models": [{"name": "a"}]}))
    with pytest.raises(ConfigError, match="calibration.*slpoe"):
        _build(tiny_section(calibration={"slpoe": 1.0}))
    cfg = load_config("configs/tiny.yaml", [f"data.root={tmp_path}", "segmentation.models=[]"])
    with pytest.raises(ConfigError, match="segmentation.models: empty"):
        pl.load_split(cfg)


def test_a_model_returning_other_frames_is_an_error(video):
    class Wrong:
        name = "wrong"

        def segment(self, v: Video, frames):
            return [make_candidates(v.video_id, f + 1, 96, 128, np.zeros((0, 96, 128), bool), np.zeros(0),
                                    np.zeros(0), "wrong", 0.0, 1) for f in frames]

    stage = SegmentStage({"name": "wrong", "backend": "mmdet"}, "segmentation.models[0]")
    stage.model = Wrong()
    with pytest.raises(RuntimeError, match=r"'wrong' returned frames \[1\] for requested \[0\]"):
        stage.process(video, [0])
