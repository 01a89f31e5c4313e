"""Mask2Former backend (transformers): a tiny random-init model saved locally, run on CPU."""

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from rvos_ray import masks
from rvos_ray.registry import SEGMENTERS, ConfigError

from test_segment_mmdet import write_video  # noqa: E402

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Mask2Former (Swin backbone, 32-d) written with save_pretrained: no download."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=3, num_attention_heads=2,
        dim_feedforward=64, num_queries=8, id2label={0: "circle", 1: "square", 2: "star"},
        label2id={"circle": 0, "square": 1, "star": 2},
    )
    out = tmp_path_factory.mktemp("m2f")
    Mask2FormerForUniversalSegmentation(config).save_pretrained(out)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("frames") / "vid0", [(96, 128), (96, 128), (80, 120), (64, 160)])


def build(model_dir, **options):
    section = {"model": model_dir, "score_threshold": 0.0, "max_per_frame": 6, "batch_size": 3, **options}
    return SEGMENTERS.build("mask2former", section, "test.mask2former", source="m2f")


def test_tiny_mask2former_candidates(model_dir, video):
    seg = build(model_dir)
    frames = [2, 0, 1]  # frames of two sizes in one batch
    cands = seg.segment(video, frames)
    assert [c.frame for c in cands] == frames
    for c in cands:
        h, w = (80, 120) if c.frame == 2 else (96, 128)
        assert (c.height, c.width) == (h, w)
        assert 1 <= len(c) <= 6
        assert all(0.0 <= s <= 1.0 for s in c.scores)
        assert set(c.sources) == {"m2f"} and all(0 <= lab < 3 for lab in c.labels)
        for r in c.rles:
            m = masks.decode(r, h, w)
            assert m.any() and coco_mask.area({"size": [h, w], "counts": r}) == m.sum()
    # Batched and one-at-a-time runs agree (80x120 and 96x128 both resize to 64x96 here, so the
    # batch has no padding that the backbone would see).
    alone = build(model_dir, batch_size=1).segment(video, [2, 0])
    for a, b in zip(alone, [cands[0], cands[1]]):
        assert a.rles == b.rles and a.labels == b.labels
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_padded_batch_gives_masks_at_each_frame_size(model_dir, video):
    # 64x160 resizes to 51x128 -> 64x128 with the size divisor; 96x128 to 64x96: the second is
    # padded to 64x128 in the batch and its masks must come back cropped to 96x128.
    cands = build(model_dir).segment(video, [3, 0])
    assert [(c.height, c.width) for c in cands] == [(64, 160), (96, 128)]
    for c in cands:
        assert len(c) > 0
        for r in c.rles:
            assert masks.decode(r, c.height, c.width).shape == (c.height, c.width)


def test_resize_options_change_the_model_input(model_dir, video):
    seg = build(model_dir, shortest_edge=32, longest_edge=64)
    assert seg.size["shortest_edge"] == 32 and seg.size["longest_edge"] == 64
    inputs = seg.processor(images=[np.zeros((96, 128, 3), np.uint8)], size=seg.size, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (32, 64)  # 32x43 -> /32 divisor -> 32x64
    (c,) = seg.segment(video, [0])
    assert (c.height, c.width) == (96, 128)


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load Mask2Former"):
        build(str(tmp_path / "nothing-here"))
