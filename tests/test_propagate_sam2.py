"""SAM 2 backend (transformers Sam2VideoModel, tiny random-init config) behind the propagator
protocol: a mask prompt on the keyframe propagated forward and backward through a short video."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rvos_ray import masks
from rvos_ray.registry import ConfigError
from rvos_ray.stages.propagate import PropagateStage
from rvos_ray.types import TRACKLET_SCHEMA, Candidates, Video, validate

torch.set_num_threads(1)
H, W = 40, 64

# A tiny SAM 2: 128-px input, 5-block Hiera, 128-d prompt/mask decoder and memory attention
# (the memory encoder's 64 output channels are fixed by the architecture).
TINY_SAM2 = {
    "image_size": 128,
    "vision_config": {
        "model_type": "sam2_vision_model",
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": 12,
            "image_size": [128, 128],
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [12, 24, 48, 96],
            "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [8, 4, 4, 2],
            "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [4, 4],
        },
        "backbone_channel_list": [96, 48, 24, 12],
        "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        "fpn_hidden_size": 128,
    },
    "prompt_encoder_config": {"hidden_size": 128, "image_size": 128, "patch_size": 16, "mask_input_channels": 8},
    "mask_decoder_config": {"hidden_size": 128, "mlp_dim": 64, "num_attention_heads": 4, "iou_head_hidden_dim": 32},
    "memory_attention_hidden_size": 128,
    "memory_attention_num_layers": 1,
    "memory_attention_feed_forward_hidden_size": 64,
    "memory_attention_rope_feat_sizes": [8, 8],
    "memory_encoder_hidden_size": 128,
    "memory_encoder_output_channels": 64,
    "mask_downsampler_embed_dim": 128,
    "memory_fuser_embed_dim": 128,
    "memory_fuser_intermediate_dim": 64,
    "num_maskmem": 3,
    "max_object_pointers_in_encoder": 2,
}


def _video(tmp_path, t_count: int) -> Video:
    paths = []
    for t in range(t_count):
        img = np.full((H, W, 3), 120, np.uint8)
        img[8:20, 4 + 3 * t : 16 + 3 * t] = (220, 30, 30)
        p = tmp_path / f"{t:05d}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return Video("v", tuple(f"{t:05d}" for t in range(t_count)), tuple(paths))


def build_propagator(section):
    stage = PropagateStage(section)
    stage.setup()
    return stage.model


def test_sam2_propagates_both_ways_one_encoder_pass_per_frame(tmp_path):
    t_count, kf = 7, 3
    video = _video(tmp_path, t_count)
    torch.manual_seed(0)
    prop = build_propagator({"backend": "sam2", "options": {"random_init": TINY_SAM2, "device": "cpu"}})
    sq = np.zeros((H, W), np.uint8)
    sq[8:20, 4 + 3 * kf : 16 + 3 * kf] = 1
    cands = Candidates("v", kf, H, W, (masks.encode(sq), masks.encode(1 - sq)), (0.8, 0.4), (1, 0), ("htc", "htc"))
    table = validate(prop.propagate(video, cands, [4, 9]), TRACKLET_SCHEMA)
    assert table.num_rows == 2 * t_count
    seen = list(zip(table["tracklet_id"].to_pylist(), table["frame"].to_pylist()))
    assert sorted(seen) == sorted((tid, f) for tid in (4, 9) for f in range(t_count))  # each once
    rows = {(tid, f): (r, p) for tid, f, r, p in zip(*(table[c].to_pylist() for c in ("tracklet_id", "frame", "rle", "prob")))}
    assert rows[(4, kf)] == (cands.rles[0], 1.0)
    for (tid, f), (r, p) in rows.items():
        assert masks.decode(r, H, W).shape == (H, W)
        assert 0.0 <= p <= 1.0
        if masks.areas([r], H, W)[0] == 0:
            assert p == 0.0
    assert prop.backbone_forward_passes == t_count  # the keyframe is encoded once for both directions


def test_sam2_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="random_init"):
        build_propagator({"backend": "sam2", "options": {"random_init": {"num_maskmem": "x"}, "device": "cpu"}})
