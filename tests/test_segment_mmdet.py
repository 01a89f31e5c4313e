"""mmdet segmenter backend: tiny HTC and CondInst (ResNet-18, random init, 128-px input) on CPU."""

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from rvos_ray import masks
from rvos_ray.registry import SEGMENTERS, ConfigError
from rvos_ray.types import Candidates, Video

pytest.importorskip("mmdet")

from rvos_ray.backends.segment_mmdet import MMDetSegmenter, resolve_config  # noqa: E402

TINY = {"htc": "configs/segmenter/htc_tiny.py", "condinst": "configs/segmenter/condinst_tiny.py"}


def write_video(folder, sizes, seed=0):
    """A video of JPEG frames with a bright rectangle on noise (sizes: [(h, w), ...])."""
    rng = np.random.default_rng(seed)
    names, paths = [], []
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        img[h // 4 : h // 2, w // 3 : 2 * w // 3] = (230, 40, 40)
        name = f"{5 * i:05d}"
        Image.fromarray(img).save(folder / f"{name}.jpg", quality=95)
        names.append(name)
        paths.append(str(folder / f"{name}.jpg"))
    return Video("vid0", tuple(names), tuple(paths))


def build(model, seed=0, **options):
    """The tiny model with a seeded random init (CondInst's random masks are sometimes empty and
    dropped; a fixed seed keeps the candidate counts stable)."""
    torch.manual_seed(seed)
    section = {"config": TINY[model], "score_threshold": 0.0, "max_per_frame": 5, "batch_size": 2, **options}
    return SEGMENTERS.build("mmdet", section, f"test.{model}", source=model)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    # Three frames of one size and one of another: a batch of 2 and a batch of 2.
    return write_video(tmp_path_factory.mktemp("frames") / "vid0", [(120, 160)] * 3 + [(96, 128)])


def check_candidates(cands, video, frames, source):
    assert [c.frame for c in cands] == frames
    for c in cands:
        assert isinstance(c, Candidates) and c.video_id == video.video_id
        h, w = Image.open(video.frame_paths[c.frame]).size[::-1]
        assert (c.height, c.width) == (h, w)
        assert 1 <= len(c) <= 5
        assert all(0.0 <= s <= 1.0 for s in c.scores)
        assert list(c.scores) == sorted(c.scores, reverse=True)
        assert set(c.sources) == {source}
        assert all(0 <= lab < 80 for lab in c.labels)
        for r in c.rles:  # a valid RLE of the frame's size, decodable by pycocotools
            m = masks.decode(r, h, w)
            assert m.shape == (h, w) and m.any()
            assert coco_mask.area({"size": [h, w], "counts": r}) == m.sum()


@pytest.mark.parametrize("model", ["htc", "condinst"])
def test_tiny_model_candidates(model, video):
    seg = build(model)
    assert seg.name == model
    frames = [0, 2, 3, 1]
    cands = seg.segment(video, frames)
    check_candidates(cands, video, frames, model)
    # Batching does not change results: one frame at a time gives the same candidates.
    single = build(model, batch_size=1)
    single.model.load_state_dict(seg.model.state_dict())
    again = single.segment(video, frames)
    for a, b in zip(cands, again):
        assert a.rles == b.rles and a.labels == b.labels
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_checkpoint_loads_back_with_identical_outputs(video, tmp_path):
    seg = build("condinst")
    path = tmp_path / "condinst.pth"
    torch.save({"state_dict": seg.model.state_dict(), "meta": {"dataset_meta": {"classes": ["a"]}}}, path)
    loaded = build("condinst", checkpoint=str(path))
    a, b = seg.segment(video, [0, 3]), loaded.segment(video, [0, 3])
    assert a == b
    fresh = build("condinst", seed=1)  # a different random init really differs: the load did something
    assert fresh.segment(video, [0, 3]) != a


def test_score_threshold_and_max_per_frame(video):
    seg = build("condinst", max_per_frame=3)
    cands = seg.segment(video, [0])[0]
    assert len(cands) == 3
    top = cands.scores[0]
    strict = build("condinst", score_threshold=float(top) + 1e-6, max_per_frame=3)
    strict.model.load_state_dict(seg.model.state_dict())
    assert len(strict.segment(video, [0])[0]) == 0


def test_packaged_config_paths_resolve():
    assert resolve_config("htc/htc_x101-64x4d-dconv-c3-c5_fpn_ms-400-1400-16xb1-20e_coco.py").endswith(
        "htc_x101-64x4d-dconv-c3-c5_fpn_ms-400-1400-16xb1-20e_coco.py"
    )
    assert resolve_config("mmdet::condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py")
    with pytest.raises(ConfigError, match="nope.py"):
        resolve_config("nope.py")


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="scoer_threshold"):
        SEGMENTERS.build("mmdet", {"config": TINY["htc"], "scoer_threshold": 0.5}, "segmentation.models[0]")
    with pytest.raises(ConfigError, match="fp16"):
        build("condinst", fp16=True)


def test_missing_checkpoint_is_a_data_error(tmp_path):
    from rvos_ray.data.errors import DataError

    with pytest.raises(DataError, match="missing.pth"):
        build("condinst", checkpoint=str(tmp_path / "missing.pth"))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from rvos_ray.data.errors import DataError

    path = tmp_path / "htc.pth"
    torch.save({"state_dict": build("htc").model.state_dict()}, path)  # HTC weights, CondInst config
    with pytest.raises(DataError, match="does not fit config"):
        build("condinst", checkpoint=str(path))
