"""Finetune an mmdet instance segmenter (CondInst in the paper) on a Ref-YouTube-VOS-layout split.

``rvos-ray finetune-segmenter --config configs/segmenter/condinst_r18_shapes.py --data-root
data/shapes --work-dir runs/segmenter/shapes``:

1. converts the split to COCO instances (:mod:`rvos_ray.data.coco_convert`), written to
   ``<work-dir>/coco/instances_<split>.json``;
2. points the config's training dataloader at it (classes from ``meta.json``, every
   ``num_classes`` of the model set to their count) and trains with mmdet's own loop
   (mmengine ``Runner``, ``IterBasedTrainLoop``), optionally from a COCO-pretrained
   checkpoint (``--load-from``, the paper's recipe);
3. writes ``<work-dir>/segmenter.pth`` (model weights + class names only, loadable with
   ``torch.load(weights_only=True)``) and ``<work-dir>/segmenter_config.py`` (the full config
   used): exactly the ``config``/``checkpoint`` pair the mmdet segmenter backend takes.

Only this module (with :mod:`rvos_ray.backends.segment_mmdet`) imports mmdet/mmengine.
"""

from __future__ import annotations

import argparse
import copy
import io as _io
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from rvos_ray.data import io as dio
from rvos_ray.data.coco_convert import image_dir, write_coco
from rvos_ray.data.errors import DataError
from rvos_ray.registry import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "segmenter.pth"
CONFIG_NAME = "segmenter_config.py"


@dataclass
class FinetuneResult:
    """What a finetuning run wrote and how its loss went."""

    checkpoint: str  # <work_dir>/segmenter.pth
    config: str  # <work_dir>/segmenter_config.py
    classes: list[str]
    iters: int
    losses: list[float] = field(default_factory=list)  # total training loss at every iteration
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)  # the trained nn.Module (in-process callers)


def _set_num_classes(node: Any, n: int, path: str = "model") -> None:
    """Set every ``num_classes`` of the model's heads to ``n``; HTC's semantic head counts
    COCO-stuff classes, not instance classes, so it is left alone."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_classes" and "semantic_head" not in path:
                node[key] = n
            else:
                _set_num_classes(value, n, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _set_num_classes(value, n, f"{path}[{i}]")


def _scaled_schedule(schedulers: list, base_iters: int, max_iters: int) -> list:
    """The config's LR schedule stretched from ``base_iters`` to ``max_iters`` (milestones and
    warmup end scale proportionally), so a short run keeps the recipe's shape."""
    out = []
    ratio = max_iters / max(base_iters, 1)
    for s in copy.deepcopy(schedulers):
        if "end" in s and s.get("end") is not None:
            # >= 2: mmengine never steps a scheduler whose window is one iteration long, so a
            # warmup shrunk to 1 would hold its start factor for the whole run.
            s["end"] = max(2, min(int(round(s["end"] * ratio)), max_iters))
        if "milestones" in s:
            s["milestones"] = [max(1, int(round(m * ratio))) for m in s["milestones"]]
        out.append(s)
    return out


def build_train_config(
    config: str,
    ann_file: str,
    img_dir: str,
    classes: list[str],
    work_dir: str,
    max_iters: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    load_from: str | None = None,
    num_workers: int = 2,
    seed: int = 0,
    amp: bool = False,
    log_interval: int = 50,
    cfg_options: dict[str, Any] | None = None,
):
    """The mmengine ``Config`` of a finetuning run (see the module docstring)."""
    from rvos_ray.backends.segment_mmdet import load_config

    cfg = load_config(config, cfg_options)
    base_iters = int(cfg.train_cfg.get("max_iters", 0) or 0)
    if cfg.train_cfg.get("type") != "IterBasedTrainLoop":
        raise ConfigError(f"{config}: finetuning needs an IterBasedTrainLoop train_cfg (iterations, not epochs)")
    if max_iters is not None:
        cfg.train_cfg.max_iters = int(max_iters)
        cfg.param_scheduler = _scaled_schedule(list(cfg.param_scheduler), base_iters, int(max_iters))
    iters = int(cfg.train_cfg.max_iters)
    cfg.train_cfg.val_interval = iters + 1  # no validation loop: we evaluate outside
    # The test pipeline is what the segmenter backend runs at inference: keep it under
    # test_dataloader (without a dataset to build) and drop the evaluation loops.
    test_pipeline = copy.deepcopy(list(cfg.test_dataloader.dataset.pipeline))
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.test_pipeline = test_pipeline

    _set_num_classes(cfg.model, len(classes))
    loader = cfg.train_dataloader
    pipeline = copy.deepcopy(list(loader.dataset.pipeline))
    for step in pipeline:
        # Our annotations are RLE; mmdet ignores RLE masks unless poly2mask decodes them.
        if step["type"].split(".")[-1] == "LoadAnnotations" and step.get("with_mask"):
            step["poly2mask"] = True
    loader.dataset = dict(
        type="CocoDataset",
        data_root="",
        ann_file=os.path.abspath(ann_file),
        data_prefix=dict(img=os.path.abspath(img_dir) + "/"),
        metainfo=dict(classes=tuple(classes)),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=pipeline,
        backend_args=None,
    )
    if batch_size is not None:
        loader.batch_size = int(batch_size)
    loader.num_workers = int(num_workers)
    loader.persistent_workers = num_workers > 0
    loader.pin_memory = False
    if lr is not None:
        cfg.optim_wrapper.optimizer.lr = float(lr)
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
    if load_from:  # else the config's own load_from (None: random init / backbone init_cfg)
        cfg.load_from = load_from
    cfg.resume = False
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    # We save a weights-only checkpoint ourselves; mmengine's full ones (optimizer, message
    # hub objects) would need unpickling of arbitrary objects to load.
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=int(log_interval))
    cfg.log_processor = dict(type="LogProcessor", window_size=int(log_interval), by_epoch=False)
    cfg.visualizer = dict(type="DetLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")], name="visualizer")
    cfg.launcher = "none"
    return cfg


def save_segmenter(model: Any, classes: list[str], path: str, iters: int) -> None:
    """A weights-only checkpoint (state dict + class names), written atomically."""
    import torch

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "meta": {"dataset_meta": {"classes": list(classes)}, "iter": int(iters)}}
    buf = _io.BytesIO()
    torch.save(payload, buf)
    dio.write_bytes(path, buf.getvalue())


def finetune(
    config: str,
    data_root: str,
    work_dir: str,
    split: str = "train",
    max_iters: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    load_from: str | None = None,
    num_workers: int = 2,
    seed: int = 0,
    amp: bool = False,
    log_interval: int = 50,
    cfg_options: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Convert ``split`` of ``data_root`` to COCO, train ``config`` on it, write the
    checkpoint and config the mmdet segmenter backend loads (see the module docstring)."""
    import time

    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    os.makedirs(work_dir, exist_ok=True)
    ann_file = os.path.join(work_dir, "coco", f"instances_{split}.json")
    coco = write_coco(data_root, split, ann_file)
    if not coco["annotations"]:
        raise DataError(f"{data_root} split {split!r}: no annotated objects to train on")
    classes = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    cfg = build_train_config(
        config, ann_file, image_dir(data_root, split), classes, work_dir, max_iters, batch_size, lr,
        load_from, num_workers, seed, amp, log_interval, cfg_options,
    )
    init_default_scope(cfg.get("default_scope", "mmdet"))
    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    runner.train()
    seconds = time.perf_counter() - start
    iters = int(cfg.train_cfg.max_iters)
    history = runner.message_hub.get_scalar("train/loss")
    losses = [float(v) for v in history.data[0]] if history is not None else []

    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    ckpt_path = os.path.join(work_dir, CHECKPOINT_NAME)
    save_segmenter(model, classes, ckpt_path, iters)
    # The inference config: the model and test pipeline the run trained and would test with.
    infer = copy.deepcopy(cfg)
    infer.load_from = None
    infer.test_dataloader = dict(dataset=dict(pipeline=cfg.test_pipeline))
    cfg_path = os.path.join(work_dir, CONFIG_NAME)
    dio.write_bytes(cfg_path, infer.pretty_text.encode("utf-8"))
    return FinetuneResult(ckpt_path, cfg_path, classes, iters, losses, seconds, model.eval())


def _parse_cfg_options(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--cfg-options: expected key=value, got {item!r}")
        out[key] = yaml.safe_load(value)  # numbers, bools, lists as YAML literals
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rvos-ray finetune-segmenter",
        description="Finetune an mmdet instance segmenter (CondInst) on a Ref-YouTube-VOS-layout "
        "split with mmdet's training loop; writes segmenter.pth + segmenter_config.py for the "
        "mmdet segmenter backend.",
    )
    p.add_argument("--config", required=True, help="mmdet training config (e.g. configs/segmenter/condinst_r18_shapes.py)")
    p.add_argument("--data-root", required=True, help="dataset root in the Ref-YouTube-VOS layout")
    p.add_argument("--split", default="train")
    p.add_argument("--work-dir", required=True, help="output folder (checkpoint, config, logs)")
    p.add_argument("--max-iters", type=int, default=None, help="training iterations (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--load-from", default=None, help="initial weights, e.g. the COCO-pretrained checkpoint")
    p.add_argument("--num-workers", type=int, default=2, help="dataloader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE", help="mmengine config overrides")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = finetune(
        args.config, args.data_root, args.work_dir, args.split, args.max_iters, args.batch_size, args.lr,
        args.load_from, args.num_workers, args.seed, args.amp, args.log_interval,
        _parse_cfg_options(args.cfg_options),
    )
    first = sum(result.losses[:20]) / max(len(result.losses[:20]), 1)
    last = sum(result.losses[-20:]) / max(len(result.losses[-20:]), 1)
    print(
        f"trained {result.iters} iters in {result.seconds:.0f} s on {len(result.classes)} classes; "
        f"loss {first:.3f} -> {last:.3f} (mean of first/last 20 iters)\n"
        f"checkpoint: {result.checkpoint}\nconfig:     {result.config}"
    )
    return 0
