"""CFBI+ training: hard-pixel bootstrapped CE, schedules, clip sampling, checkpoints and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rvos_ray.cli import main as cli_main
from rvos_ray.data.synthetic import make_shapes
from rvos_ray.registry import ConfigError
from rvos_ray.training.propagator_clips import ClipSampler
from rvos_ray.training.train_propagator import (
    hard_pixel_loss,
    learning_rate,
    load_train_config,
    topk_fraction,
    train,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "propagator" / "tiny.yaml")


def test_hard_pixel_loss_keeps_the_hardest_fraction():
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[10.0, -10.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
    assert hard_pixel_loss(logits, target, 1.0).item() == pytest.approx(bce.mean().item())
    # half of 4 pixels: sample 0 all ln 2; sample 1 the two ~10.00005 losses
    want = (bce[0].sort(descending=True).values[:2].mean() + bce[1].sort(descending=True).values[:2].mean()) / 2
    assert hard_pixel_loss(logits, target, 0.5).item() == pytest.approx(want.item())
    assert hard_pixel_loss(logits, target, 0.01).item() == pytest.approx((bce[0].max() + bce[1].max()).item() / 2)


def test_schedules():
    cfg = load_train_config(TINY, ["steps=100", "warmup_steps=10", "lr=0.1", "topk_final=0.15"])
    assert topk_fraction(0, cfg) == 1.0
    assert topk_fraction(25, cfg) == pytest.approx(1 - 0.85 * 0.5)
    assert topk_fraction(50, cfg) == pytest.approx(0.15) and topk_fraction(90, cfg) == pytest.approx(0.15)
    assert learning_rate(0, cfg) == pytest.approx(0.01) and learning_rate(9, cfg) == pytest.approx(0.1)
    assert learning_rate(50, cfg) == pytest.approx(0.1 * 0.5**0.9)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="bogus"):
        load_train_config(TINY, ["bogus=1"])
    with pytest.raises(ConfigError, match="optimizer"):
        load_train_config(TINY, ["optimizer=rmsprop"])
    assert cli_main(["train-propagator", "--config", TINY, "model.nope=3"]) == 2


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), videos=2, seed=3, height=64, width=96, min_frames=5, max_frames=6)
    return str(root)


def _cfg(shapes: str, work: Path, steps: int):
    return load_train_config(
        TINY,
        [f"data.root={shapes}", "data.input_size=[32,48]", f"work_dir={work}", f"steps={steps}",
         "batch_size=2", "checkpoint_every=2", "log_every=1", "warmup_steps=1"],
    )


def test_clips_pair_an_object_with_its_masks(shapes):
    cfg = _cfg(shapes, Path("unused"), 1)
    sampler = ClipSampler(cfg.data)
    batch = sampler.sample(np.random.default_rng(0), 3)
    assert batch["ref"].shape == (3, 3, 32, 48) and batch["cur_mask"].shape == (3, 32, 48)
    assert batch["ref_mask"].flatten(1).sum(1).min() >= 1  # the object is visible on the reference
    again = sampler.sample(np.random.default_rng(0), 3)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # a pure function of the generator


def test_train_checkpoints_resume_and_load_into_the_propagator(shapes, tmp_path):
    straight = train(_cfg(shapes, tmp_path / "a", 3), log=lambda m: None)
    assert straight["resumed_from"] == 0 and np.isfinite(straight["last_loss"])
    part = train(_cfg(shapes, tmp_path / "b", 3), log=lambda m: None, stop_after=2)  # "interrupted"
    assert part["steps"] == 2 and not (tmp_path / "b" / "model.pt").exists()
    resumed = train(_cfg(shapes, tmp_path / "b", 3), log=lambda m: None)
    assert resumed["resumed_from"] == 2
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key in a["model"]:  # 2 steps + resume + 1 step == 3 steps straight
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    with pytest.raises(ConfigError, match="another model config"):
        train(load_train_config(TINY, [f"data.root={shapes}", f"work_dir={tmp_path / 'b'}", "steps=4",
                                       "model.decoder_channels=16"]), log=lambda m: None)

    from rvos_ray.stages.propagate import PropagateStage

    prop = PropagateStage({"backend": "cfbi", "options": {"checkpoint": str(tmp_path / "a" / "model.pt"),
                                                          "long_edge": 48, "device": "cpu"}})
    prop.setup()
    assert prop.model.model.cfg.embed_dim == 32


def test_sequential_training_swaps_in_the_own_prediction_per_clip():
    from rvos_ray.models.cfbi import CFBIPlus

    cfg = load_train_config(TINY, [])
    torch.manual_seed(0)
    model = CFBIPlus(cfg.model).eval()  # eval: no dropout, so two calls are comparable
    g = torch.Generator().manual_seed(1)
    imgs = [torch.rand(2, 3, 32, 48, generator=g) for _ in range(3)]
    ref_m = torch.zeros(2, 1, 32, 48)
    ref_m[:, :, 8:20, 10:30] = 1.0
    prev_m = torch.zeros(2, 1, 32, 48)  # a wrong previous mask: empty
    with torch.no_grad():
        plain = model(*imgs, ref_m, prev_m)
        mixed = model(*imgs, ref_m, prev_m, torch.tensor([False, True]))
        feats = model.encode(torch.cat(imgs, 0))
        ref, prev, cur = (feats.select(slice(2 * i, 2 * i + 2)) for i in range(3))
        own = (torch.nn.functional.interpolate(model.decode(prev, ref, ref_m, ref, ref_m), size=(32, 48),
                                               mode="bilinear") > 0).float()
        want = model.decode(cur, ref, ref_m, prev, own)
        want = torch.nn.functional.interpolate(want, size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(mixed[0], plain[0])  # clip 0 keeps the given previous mask
    assert torch.allclose(mixed[1], want[1], atol=1e-5)  # clip 1 uses the network's own prediction
