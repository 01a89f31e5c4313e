"""The demo: its committed models (manifest, loading), a reduced demo end to end on local Ray, and a
short `make demo-models`-style training run that reproduces checkpoints of the committed kind."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from rvos_ray import demo, demo_models
from rvos_ray.demo_models import ASSETS

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
GROUNDERS_YAML = REPO / "configs" / "demo_models" / "grounders.yaml"
CFBI_YAML = REPO / "configs" / "demo_models" / "cfbi_demo.yaml"
SEG_CONFIG = REPO / "configs" / "demo_models" / "condinst_demo.py"


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    """Two short synthetic videos per split (training data and the reduced demo's split)."""
    from rvos_ray.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("demo-shapes") / "shapes"
    make_shapes(str(root), videos=2, seed=demo.DATA_SEED, min_frames=8, max_frames=10)
    return str(root)


def _variants(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["grounding"]["variants"]


# --------------------------------------------------------------------------------------------
# Committed models
# --------------------------------------------------------------------------------------------


def test_manifest_names_every_asset_with_its_command_and_checksum():
    manifest = demo_models.verify(ASSETS)  # raises on any sha256 mismatch
    files = manifest["files"]
    on_disk = {p.name for p in ASSETS.iterdir() if p.name != "MANIFEST.json"}
    assert set(files) == on_disk
    for name, info in files.items():
        seed = re.search(r"train_grounder\.seed=(\d+)", info["command"])
        assert info["seed"] == (int(seed.group(1)) if seed else 0), name
        assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"]), name
        assert info["bytes"] == (ASSETS / name).stat().st_size
    assert "finetune-segmenter" in files["segmenter.pth"]["command"]
    assert "train-propagator" in files["propagator.pt"]["command"]
    grounders = [n for n in files if n.startswith("grounder_")]
    assert len(grounders) == 5 and all("train-grounder" in files[n]["command"] for n in grounders)
    # "small: a few MB in all"
    assert sum(info["bytes"] for info in files.values()) < 20e6


def test_demo_config_repeats_the_trained_grounder_variants():
    """configs/demo.yaml's variants are the training config's, plus their checkpoints."""
    trained, shipped = _variants(GROUNDERS_YAML), _variants(Path(demo.DEMO_CONFIG))
    assert [v["name"] for v in trained] == [v["name"] for v in shipped]
    for t, s in zip(trained, shipped):
        s = copy.deepcopy(s)
        assert s.pop("checkpoint") == f"{demo.ASSET_PREFIX}grounder_{t['name']}.pt"
        assert Path(s["visual"].pop("checkpoint")).name == Path(t["visual"].pop("checkpoint")).name
        assert s == t


def _build_demo_models(cfg) -> dict:
    """The demo's stages with models, set up as the executors do (each grounder on its own)."""
    from omegaconf import OmegaConf

    from rvos_ray.stages.ground import GroundStage
    from rvos_ray.stages.propagate import PropagateStage
    from rvos_ray.stages.segment import SegmentStage

    c = OmegaConf.to_container(cfg, resolve=True)
    built = {"segmenter": SegmentStage(c["segmentation"]["models"][0], "segmentation.models[0]"),
             "propagator": PropagateStage(c["propagation"])}
    for v in c["grounding"]["variants"]:
        built[v["name"]] = GroundStage(c["grounding"], [v["name"]], int(c["run"]["seed"]))
    for stage in built.values():
        stage.setup()
    return built


@pytest.mark.slow
def test_committed_models_run_in_the_demo_backends(small_shapes, tmp_path):
    """The shipped checkpoints load into the demo's backends and do their job on one video:
    the segmenter finds objects, the propagator follows them, the grounders score them."""
    from rvos_ray.data.refytvos import RefYTVOS
    from rvos_ray.stages.propagate import PropagationCall
    from rvos_ray.types import VideoWork

    cfg = demo.resolved_config(str(demo.DEMO_CONFIG), [], small_shapes, str(tmp_path / "run"))
    models = _build_demo_models(cfg)
    reader = RefYTVOS(small_shapes, "valid")
    vid = reader.video_ids()[0]
    video, exps = reader.video(vid), reader.expressions(vid)
    cands = models["segmenter"].process(video, [0])
    assert len(cands[0]) >= 1 and max(cands[0].scores) >= 0.3
    table, _ = models["propagator"].process(video, cands[0], PropagationCall(0, 0, 1, 0))
    assert table.num_rows == video.num_frames
    for name in (v["name"] for v in _variants(Path(demo.DEMO_CONFIG))):
        g, _ = models[name].process(VideoWork(video, tuple(exps)), table)
        assert g.num_rows > 0 and set(g.column("variant").to_pylist()) == {name}


# --------------------------------------------------------------------------------------------
# The reduced demo, end to end through local Ray
# --------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_reduced_demo_beats_the_image_level_baseline(small_shapes, tmp_path, capsys):
    args = demo.build_parser().parse_args(
        ["--data", small_shapes, "--videos", "2", "--frames", "8", "10", "--out", str(tmp_path / "demo"),
         "--no-progress", "ray.num_cpus=6"])
    figures = demo.run_demo(args)
    out = capsys.readouterr().out
    assert figures["failed"] == 0 and figures["videos"] == 2 and figures["expressions"] > 0
    assert figures["J&F"] > figures["baseline_J&F"], figures
    for stage in ("segmentation", "propagation", "nms", "grounding", "ensemble", "writer"):
        assert figures["stage_frames_per_s"][stage] > 0, stage
        assert re.search(rf"^\s+{stage}\s+[0-9.]+ f/s", out, re.M), stage
    run = tmp_path / "demo" / "pipeline"
    for path in ("submission.zip", "metrics.parquet", "summary.json", "report.html"):
        assert (run / path).is_file(), path
        assert str(run / path) in out
    assert "Image-level Baseline" in out
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["figures"]["J&F"] == figures["J&F"]


# --------------------------------------------------------------------------------------------
# `make demo-models`, short: training reproduces checkpoints of the committed kind
# --------------------------------------------------------------------------------------------


def _shapes_of(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _falls(losses: list[float], n: int) -> bool:
    return sum(losses[-n:]) / n < sum(losses[:n]) / n


@pytest.mark.ray
@pytest.mark.slow
def test_short_demo_models_run_trains_loadable_checkpoints_of_the_committed_kind(small_shapes, tmp_path):
    from rvos_ray.config import load_config
    from rvos_ray.runtime import ray_session
    from rvos_ray.training.finetune_segmenter import finetune
    from rvos_ray.training.train_grounder import train as train_grounder
    from rvos_ray.training.train_propagator import load_train_config
    from rvos_ray.training.train_propagator import train as train_propagator

    runs = tmp_path / "runs"
    committed = demo_models.verify(ASSETS)["files"]

    # segmenter: the demo config, a few iterations (no LR warm-up stretch: schedule scaled)
    seg = finetune(str(SEG_CONFIG), small_shapes, str(runs / "segmenter"), max_iters=16, batch_size=2,
                   num_workers=0, seed=0, log_interval=4)
    assert len(seg.losses) == 16 and _falls(seg.losses, 4), seg.losses
    mine = _shapes_of(torch.load(seg.checkpoint, weights_only=True)["state_dict"])
    shipped = _shapes_of(torch.load(ASSETS / "segmenter.pth", weights_only=True)["state_dict"])
    # the same network; only the classifier's width follows the split's categories
    assert mine.keys() == shipped.keys()
    assert {k for k in mine if mine[k] != shipped[k]} <= {"bbox_head.conv_cls.weight", "bbox_head.conv_cls.bias"}
    assert mine["bbox_head.conv_cls.bias"] == (len(seg.classes),)

    # propagator: the demo config, a few steps at a smaller input
    losses: list[float] = []

    def log(msg: str) -> None:
        m = re.search(r"loss ([0-9.]+)", msg)
        if m:
            losses.append(float(m.group(1)))

    pcfg = load_train_config(str(CFBI_YAML), [f"data.root={small_shapes}", f"work_dir={runs / 'propagator'}",
                                              "steps=16", "batch_size=2", "log_every=1", "warmup_steps=2",
                                              "checkpoint_every=8", "data.input_size=[48,80]"])
    train_propagator(pcfg, log=log)
    assert len(losses) == 16 and _falls(losses, 4), losses
    mine = torch.load(runs / "propagator" / "model.pt", weights_only=True)
    shipped = torch.load(ASSETS / "propagator.pt", weights_only=True)
    assert mine["config"] == shipped["config"] and _shapes_of(mine["model"]) == _shapes_of(shipped["model"])

    # the grounders' frozen visual stem: byte-identical to the file the shipped one was made from
    demo_models.visual_init(str(runs / "visual_resnet18.pt"), "resnet18", 2, 0)
    assert demo_models.sha256(runs / "visual_resnet18.pt") == committed["visual_resnet18.pt"]["trained_sha256"]

    # grounders: the demo config's variants on the small split, a few epochs on Ray Train
    g = yaml.safe_load(GROUNDERS_YAML.read_text())
    for v in g["grounding"]["variants"]:
        v["visual"]["checkpoint"] = str(runs / "visual_resnet18.pt")
    g["train_grounder"].update(out_dir=str(runs / "grounders"), batch_size=8)
    g["train_grounder"]["finetune"].update(epochs=4, data=[{"kind": "refytvos", "root": small_shapes, "split": "train"}],
                                           val=[])
    gcfg_path = tmp_path / "grounders.yaml"
    gcfg_path.write_text(yaml.safe_dump(g))
    gcfg = load_config(str(gcfg_path))
    names = [v["name"] for v in g["grounding"]["variants"]]
    # one local Ray for the five runs (each `make demo-models` command starts its own; train()
    # uses a Ray this process is connected to, and leaves it connected)
    with ray_session.session("", num_cpus=int(gcfg.ray.num_cpus), log_to_driver=False):
        for name in names:
            summary = train_grounder(gcfg, name)
            hist = [h["loss"] for h in summary["phases"]["finetune"]]
            assert len(hist) == 4 and hist[-1] < hist[0], hist
            mine = torch.load(summary["checkpoint"], weights_only=True)
            shipped = torch.load(ASSETS / f"grounder_{name}.pt", weights_only=True)
            assert _shapes_of(mine) == _shapes_of(shipped)

    # package them as `make demo-models` does; the demo config loads the result
    assets = tmp_path / "assets"
    manifest = demo_models.package(str(runs), str(assets), names)
    assert set(manifest["files"]) == set(committed)
    cfg = demo.resolved_config(str(demo.DEMO_CONFIG), [], small_shapes, str(tmp_path / "run"), assets=assets)
    built = _build_demo_models(cfg)
    assert set(built) == {"segmenter", "propagator", *names}


def test_missing_models_are_a_clear_error(tmp_path, small_shapes):
    from rvos_ray.cli import UserError

    with pytest.raises(UserError, match="make demo-models"):
        demo.resolved_config(str(demo.DEMO_CONFIG), [], small_shapes, str(tmp_path / "run"), assets=tmp_path)


def test_parser_defaults():
    a = demo.build_parser().parse_args([])
    assert isinstance(a, argparse.Namespace) and a.videos == 8 and a.out == "runs/demo"
