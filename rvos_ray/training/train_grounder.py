"""``rvos-ray train-grounder --config CFG [--variant NAME] [key=value ...]``: grounder training on
Ray Train.

Two phases, each one Ray Train ``TorchTrainer`` run (DDP over ``num_workers`` workers, CPU or
GPU), as in the paper: *pretrain* on RefCOCO/+/g (REFER layout, Adam lr 4e-5, batch 48, weight
decay 1e-4, ~20 epochs) and *finetune* on a Ref-YouTube-VOS-layout train split (lr 1e-5, 5
epochs). All of it is ``train_grounder`` config (``configs/paper.yaml``).

Encoders are frozen (the variant's ``visual.freeze`` / ``text.freeze``), so the driver first
builds a feature cache (:func:`~rvos_ray.training.grounder_data.build_feature_cache`: each
backbone once per frame, each text encoder once per expression), and the workers train the
projections and the head on it; that is what makes CPU training take minutes.

Outputs under ``<out_dir>/<variant>/``: ``<phase>.pt`` (the phase's final weights, a
``Grounder.trainable_state_dict``), ``<phase>-metrics.json`` (one record per epoch),
``grounder.pt`` (the last phase's weights: point the variant's ``checkpoint`` at it),
``ray/<phase>/`` (Ray Train checkpoints); ``<out_dir>/cache/`` holds the feature caches,
named by encoder weights + data, so variants with the same encoders share them. A re-run skips finished
phases and resumes an unfinished one from its latest Ray Train checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rvos_ray.config import load_config
from rvos_ray.data.errors import DataError
from rvos_ray.models.grounder import Grounder, grounding_loss, masked_softmax
from rvos_ray.registry import ConfigError
from rvos_ray.runtime import ray_session
from rvos_ray.training.grounder_data import (
    FeatureCache,
    build_feature_cache,
    cache_key,
    make_batch,
    refcoco_clips,
    refytvos_clips,
)

__all__ = ["main", "train", "evaluate", "variant_entry"]

PHASES = ("pretrain", "finetune")


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------


def variant_entry(cfg, name: str = "") -> dict:
    entries = [OmegaConf.to_container(e, resolve=True) for e in cfg.grounding.variants]
    if not entries:
        raise ConfigError("train-grounder: the config has no grounding.variants")
    if not name:
        return entries[0]
    for e in entries:
        if e.get("name") == name:
            return e
    raise ConfigError(f"train-grounder: no grounding variant {name!r}; known: {[e.get('name') for e in entries]}")


def _clips(sets, max_candidates: int):
    from rvos_ray.data.refcoco import RefCOCO
    from rvos_ray.data.refytvos import RefYTVOS

    groups, clips = [], []
    for i, d in enumerate(sets):
        if not d.root:
            raise ConfigError(f"train_grounder data[{i}]: root is empty")
        if d.kind == "refytvos":
            reader = RefYTVOS(d.root, d.split)
            vids = reader.video_ids()
            if isinstance(d.videos, int):
                vids = vids[: d.videos]
            elif d.videos is not None:
                vids = [str(v) for v in d.videos]
            g, c = refytvos_clips(reader, d.tracklets, d.match_iou, vids)
        elif d.kind == "refcoco":
            ds = RefCOCO(d.root, d.dataset, d.split_by, d.image_dir or None)
            g, c = refcoco_clips(ds, d.split, max_candidates)
        else:
            raise ConfigError(f"train_grounder data[{i}].kind: {d.kind!r} is not refytvos or refcoco")
        offset = len(groups)
        groups += g
        clips += [type(x)(x.group + offset, x.text, x.targets, x.kind, x.exp_id) for x in c]
    if sets and not clips:
        raise DataError(f"train-grounder: no usable expressions in {[d.root for d in sets]}")
    return groups, clips


def _cache(model: Grounder, sets, max_candidates: int, cache_dir: Path) -> str | None:
    """Path of the feature cache of ``sets`` (built when absent)."""
    if not sets:
        return None
    groups, clips = _clips(sets, max_candidates)
    path = cache_dir / f"{cache_key(model, groups, clips)}.pt"
    if not path.exists():
        t0 = time.time()
        cache = build_feature_cache(model, groups, clips)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(cache.state(), tmp)
        os.replace(tmp, path)
        print(f"[train-grounder] cached features of {len(clips)} expressions / {len(groups)} clips "
              f"in {time.time() - t0:.1f}s -> {path}", flush=True)
    return str(path)


def _ray_init(cfg) -> bool:
    """Join ``ray.address`` (or ``RAY_ADDRESS`` under ``ray job submit``), or start a new local
    Ray on 127.0.0.1, as the pipeline's runtime does. Returns True when this call connected
    (the caller then disconnects), False when the process already was."""
    return ray_session.connect(ray_session.target_address(None, cfg.ray.address), num_cpus=cfg.ray.num_cpus,
                               log_to_driver=False)


def train(cfg, variant: str = "") -> dict[str, Any]:
    """Runs the enabled phases of ``cfg.train_grounder`` for one variant; returns a summary."""
    tc = cfg.train_grounder
    entry = variant_entry(cfg, variant or tc.variant)
    name = entry["name"]
    out = Path(tc.out_dir).absolute() / name
    out.mkdir(parents=True, exist_ok=True)
    model = Grounder.from_config(entry, load_checkpoint=False)
    if not (model.visual.frozen and model.text.frozen):
        raise ConfigError(f"train-grounder: variant {name!r} must freeze its encoders (visual.freeze, "
                          f"text.freeze): training runs on cached encoder features")
    init = str(entry.get("checkpoint") or "")
    summary: dict[str, Any] = {"variant": name, "phases": {}}
    started = False  # whether this call connected to Ray (then it also disconnects)
    try:
        for phase in PHASES:
            pc = getattr(tc, phase)
            if not pc.enabled:
                continue
            final = out / f"{phase}.pt"
            if final.exists():
                print(f"[train-grounder] {name}/{phase}: done before ({final}), skipped", flush=True)
                init = str(final)
                summary["phases"][phase] = json.loads((out / f"{phase}-metrics.json").read_text())
                continue
            if not pc.data:
                raise ConfigError(f"train_grounder.{phase}: enabled but has no data")
            t0 = time.time()
            shared = Path(tc.out_dir).absolute() / "cache"  # keyed by encoders + data: shared by variants
            train_cache = _cache(model, pc.data, tc.max_candidates, shared)
            val_cache = _cache(model, pc.val, tc.max_candidates, shared)
            loop_cfg = {
                "entry": entry, "init": init, "train_cache": train_cache, "val_cache": val_cache,
                "lr": float(pc.lr), "epochs": int(pc.epochs), "batch_size": int(tc.batch_size),
                "frames_per_clip": int(tc.frames_per_clip), "weight_decay": float(tc.weight_decay),
                "max_steps": int(tc.max_steps_per_epoch), "seed": int(tc.seed), "val_every": int(tc.val_every),
            }
            started = _ray_init(cfg) or started
            checkpoint = _fit(loop_cfg, tc, out / "ray", phase)
            with checkpoint.as_directory() as d:
                state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
            tmp = final.with_suffix(".tmp")
            torch.save(state["model"], tmp)
            os.replace(tmp, final)
            history = state["history"]
            (out / f"{phase}-metrics.json").write_text(json.dumps(history, indent=1))
            summary["phases"][phase] = history
            summary[f"{phase}_seconds"] = round(time.time() - t0, 1)
            init = str(final)
    finally:
        ray_session.disconnect(started)
    if init:
        shutil.copyfile(init, out / "grounder.pt")
        summary["checkpoint"] = str(out / "grounder.pt")
        summary["checkpoint_bytes"] = (out / "grounder.pt").stat().st_size
    return summary


def _fit(loop_cfg: dict, tc, storage: Path, phase: str):
    """One TorchTrainer run; resumes from the phase's latest checkpoint when one exists."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from rvos_ray.training.loopback_ddp import LoopbackTorchConfig

    run_config = ray.train.RunConfig(
        name=phase,
        storage_path=str(storage),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=int(tc.checkpoints_to_keep)),
    )
    scaling = ray.train.ScalingConfig(num_workers=int(tc.num_workers), use_gpu=bool(tc.use_gpu),
                                      resources_per_worker={"CPU": float(tc.cpus_per_worker)})
    kwargs = {}
    if not _train_v2():
        # Ray Train v1 starts a run afresh; hand it the phase's latest checkpoint. (v2 resumes a
        # run of the same name and storage path by itself.)
        kwargs["resume_from_checkpoint"] = latest_checkpoint(storage / phase)
    # on one node the DDP rendezvous and gloo stay on loopback (Ray Train's own opens a
    # TCPStore on every interface)
    trainer = TorchTrainer(_train_loop, train_loop_config=loop_cfg, scaling_config=scaling,
                           run_config=run_config, torch_config=LoopbackTorchConfig(), **kwargs)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"train-grounder {phase}: Ray Train reported no checkpoint")
    return result.checkpoint


def _train_v2() -> bool:
    try:
        from ray.train.v2._internal.constants import is_v2_enabled
    except ImportError:
        return False
    return bool(is_v2_enabled())


def latest_checkpoint(run_dir: Path):
    """The newest complete checkpoint (``state.pt`` present) under a phase's Ray Train folder."""
    import ray.train

    found = []
    for p in run_dir.rglob("state.pt") if run_dir.exists() else []:
        try:
            epoch = int(torch.load(p, map_location="cpu", weights_only=True)["epoch"])
        except (RuntimeError, KeyError, OSError, EOFError):
            continue  # a half-written checkpoint from a killed run
        found.append((epoch, p.stat().st_mtime, p.parent))
    if not found:
        return None
    return ray.train.Checkpoint.from_directory(str(max(found)[2]))


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


def evaluate(model: Grounder, cache: FeatureCache, clip_ids=None, chunk: int = 64) -> dict[str, float]:
    """Accuracy (argmax of the frame-mean probability is a target), overall and per kind."""
    model.eval()
    ids = list(range(len(cache.words))) if clip_ids is None else list(clip_ids)
    hits: dict[str, list[int]] = {}
    with torch.no_grad():
        for s in range(0, len(ids), chunk):
            b = make_batch(cache, ids[s : s + chunk], None)
            b = {k: v.to(next(model.parameters()).device) for k, v in b.items()}
            probs = masked_softmax(model(b["pooled"], b["present"], b["valid"], b["words"],
                                         b["word_valid"], b.get("geometry")), b["valid"])
            for c in ids[s : s + chunk]:
                rows = b["clip"] == c
                pick = int(probs[rows].mean(0).argmax())
                ok = int(pick in cache.clip_targets[c])
                hits.setdefault("all", []).append(ok)
                if cache.clip_kind[c]:
                    hits.setdefault(cache.clip_kind[c], []).append(ok)
    return {f"acc_{k}": sum(v) / len(v) for k, v in sorted(hits.items())}


def _train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    model = Grounder.from_config(config["entry"], load_checkpoint=False)
    if config["init"]:
        model.load_checkpoint(config["init"])
    train = FeatureCache.load(config["train_cache"]).with_geometry(model.temporal)
    val = FeatureCache.load(config["val_cache"]).with_geometry(model.temporal) if config["val_cache"] else None
    ddp = ray.train.torch.prepare_model(model)
    params = [p for p in ddp.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])
    start, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]) + 1, list(state["history"])
    n = len(train.words)
    per_worker = max(1, config["batch_size"] // world)
    steps = math.ceil(n / (per_worker * world))
    if config["max_steps"]:
        steps = min(steps, config["max_steps"])
    device = next(model.parameters()).device
    for epoch in range(start, config["epochs"]):
        t0 = time.time()
        ddp.train()
        order = list(range(n))
        random.Random(config["seed"] * 1000 + epoch).shuffle(order)
        rng = random.Random((config["seed"] * 1000 + epoch) * 64 + rank)
        losses, hits, rows = [], 0, 0
        for step in range(steps):
            # every worker takes the same number of steps (DDP); the shard wraps around
            ids = [order[(step * per_worker * world + rank + k * world) % n] for k in range(per_worker)]
            b = make_batch(train, ids, config["frames_per_clip"], rng)
            b = {k: v.to(device) for k, v in b.items()}
            logits = ddp(b["pooled"], b["present"], b["valid"], b["words"], b["word_valid"], b.get("geometry"))
            loss = grounding_loss(logits, b["valid"], b["target"]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
            # running accuracy on the sampled training frames (argmax is a target): free
            pick = logits.detach().argmax(-1, keepdim=True)
            hits += int(b["target"].gather(1, pick).sum())
            rows += len(pick)
        metrics = {"epoch": epoch, "loss": sum(losses) / len(losses), "steps": steps,
                   "train_frame_acc": hits / max(rows, 1),
                   "seconds": round(time.time() - t0, 2), "run_start_epoch": start}
        if rank == 0:
            last = epoch == config["epochs"] - 1
            if val is not None and (last or (epoch + 1) % max(1, config["val_every"]) == 0):
                metrics.update({f"val_{k}": v for k, v in evaluate(model, val).items()})
        history.append(metrics)
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save({"model": model.trainable_state_dict(), "optimizer": opt.state_dict(),
                            "epoch": epoch, "history": history}, Path(d) / "state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rvos-ray train-grounder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="YAML config (grounding.variants + train_grounder)")
    ap.add_argument("--variant", default="", help="grounding variant to train (default: train_grounder.variant)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, args.variant)
    for phase, hist in summary["phases"].items():
        for m in hist:
            print(f"[train-grounder] {summary['variant']}/{phase} " + " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    print(json.dumps({k: v for k, v in summary.items() if k != "phases"}))
    return 0
