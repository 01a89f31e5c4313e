"""Segmenter finetuning with mmdet's training loop on synthetic shapes (tiny CondInst, CPU)."""

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet")

from rvos_ray import cli  # noqa: E402
from rvos_ray.data.refytvos import RefYTVOS  # noqa: E402
from rvos_ray.data.synthetic import make_shapes  # noqa: E402
from rvos_ray.registry import SEGMENTERS  # noqa: E402
from rvos_ray.stages.segment import read_frames  # noqa: E402
from rvos_ray.training.finetune_segmenter import finetune  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), videos=2, seed=1, height=96, width=160, min_frames=6, max_frames=8)
    return str(root)


@pytest.mark.slow
def test_short_finetune_lowers_loss_and_checkpoint_loads_back(shapes, tmp_path):
    torch.manual_seed(0)
    result = finetune(
        "configs/segmenter/condinst_r18_shapes.py", shapes, str(tmp_path / "run"), max_iters=40,
        batch_size=2, num_workers=0, log_interval=10,
        # a quarter-width ResNet-18 and 32-channel heads: the recipe's model, small enough for CI
        cfg_options={"model.backbone.base_channels": 16, "model.neck.in_channels": [16, 32, 64, 128],
                     "model.neck.out_channels": 32, "model.bbox_head.in_channels": 32,
                     "model.bbox_head.feat_channels": 32, "model.mask_head.mask_feature_head.in_channels": 32,
                     "model.mask_head.mask_feature_head.feat_channels": 32,
                     # the shapes here are 96x160: train and test at that size
                     "train_dataloader.dataset.pipeline.2.scale": (160, 96),
                     "test_dataloader.dataset.pipeline.1.scale": (160, 96)},
    )
    assert result.iters == 40 and len(result.losses) == 40
    first, last = np.mean(result.losses[:8]), np.mean(result.losses[-8:])
    assert last < 0.8 * first, (first, last)
    assert result.classes == sorted(result.classes) and len(result.classes) >= 2

    # The backend loads the written config + weights-only checkpoint and gives exactly the
    # trained model's outputs.
    seg = SEGMENTERS.build(
        "mmdet", {"config": result.config, "checkpoint": result.checkpoint, "score_threshold": 0.0,
                  "max_per_frame": 5}, "test", source="condinst_ft",
    )
    loaded_state = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(loaded_state[k], v.cpu(), rtol=0, atol=0)
    valid = RefYTVOS(shapes, "valid")
    video = valid.video(valid.video_ids()[0])
    out = seg.segment(video, [0, 3])
    assert any(len(c) for c in out) and all(set(c.sources) <= {"condinst_ft"} for c in out)

    # The loaded network computes exactly what the trained one does: raw head outputs (before
    # test_cfg thresholds, which the backend sets from its own options) on the same batch.
    images = read_frames(video, [0, 3])
    data = [seg.pipeline(dict(img=np.ascontiguousarray(im[..., ::-1]), img_id=i)) for i, im in enumerate(images)]
    batch = seg.model.data_preprocessor(
        dict(inputs=[d["inputs"] for d in data], data_samples=[d["data_samples"] for d in data]), False
    )
    def raw(model):  # box-head maps (cls, box, centerness, dynamic-conv params) + mask features
        feats = model.extract_feat(batch["inputs"])
        return flatten(model.bbox_head(feats)) + flatten(model.mask_head.mask_feature_head(feats))

    with torch.no_grad():
        loaded, trained = raw(seg.model), raw(result.model.eval())
    assert len(loaded) == len(trained) > 0
    for a, b in zip(loaded, trained):
        assert torch.equal(a, b)


def flatten(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in flatten(item)]
    return []


def test_finetune_cli_rejects_bad_input(tmp_path, capsys):
    code = cli.main(["finetune-segmenter", "--config", "configs/segmenter/condinst_r18_shapes.py",
                     "--data-root", str(tmp_path / "missing"), "--work-dir", str(tmp_path / "w")])
    assert code == 2 and "missing" in capsys.readouterr().err
