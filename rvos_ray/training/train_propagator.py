"""`rvos-ray train-propagator --config configs/propagator/tiny.yaml [key=value ...]`.

Trains a CFBI+ propagator with the CFBI recipe: clips of (reference, previous, current) frames
(:mod:`rvos_ray.training.propagator_clips`), one encoder pass over all frames of a batch, and
the hard-pixel bootstrapped cross-entropy: per clip, the mean of the top-k pixel losses, k
annealed linearly from 100% to ``topk_final`` (15%) of the pixels over ``topk_anneal_steps``
(default: the first half of training); sequential training from ``sequential_from`` (the
previous mask is the network's own prediction of the previous frame, made from the reference
in the same step, instead of the ground truth). Optimiser Adam or SGD (momentum, weight decay), linear
warm-up then poly decay, gradient clipping.

Outputs in ``work_dir`` (local path or URI), written atomically:

* ``last.pt`` every ``checkpoint_every`` steps: model, optimiser, step (resume point);
* ``model.pt`` at the end: ``{"config": <CFBIConfig as dict>, "model": state_dict, "step",
  "seconds"}`` (training wall time), what ``propagation.options.checkpoint`` loads.

Re-running the same command resumes from ``last.pt`` (``resume: true``); clips are drawn from a
generator seeded by (seed, step), so a resumed run sees the same clips as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rvos_ray.config import apply_overrides
from rvos_ray.data import io as dio
from rvos_ray.models.cfbi import CFBIConfig
from rvos_ray.registry import ConfigError
from rvos_ray.training.propagator_clips import ClipDataConfig


@dataclass
class TrainPropagatorConfig:
    model: CFBIConfig = field(default_factory=CFBIConfig)  # architecture (propagation.options.model)
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    work_dir: str = "runs/propagator/default"  # checkpoints: last.pt (resume), model.pt (final)
    steps: int = 100000  # optimiser steps (CFBI+: 100k)
    batch_size: int = 8  # clips per step
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.01  # peak learning rate (CFBI+: SGD 0.01)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1.5e-4
    warmup_steps: int = 1000  # linear warm-up from 0
    poly_power: float = 0.9  # lr = peak * (1 - step / steps) ** power after warm-up
    grad_clip: float = 5.0  # max L2 norm of all gradients; 0 = off
    topk_final: float = 0.15  # hard-pixel fraction at the end of the annealing
    topk_anneal_steps: int = 0  # steps to anneal 100% -> topk_final; 0 = steps // 2
    # CFBI's sequential training: from this step on (-1 = never), with probability
    # ``sequential_prob`` per clip, the previous mask is the network's own prediction
    sequential_from: int = -1
    sequential_prob: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50
    resume: bool = True  # continue from work_dir/last.pt when it exists
    seed: int = 0
    device: str = "auto"  # cpu | cuda | auto
    num_threads: int = 0  # torch CPU threads; 0 = torch's default


def load_train_config(path: str | None, overrides: list[str] | None = None) -> TrainPropagatorConfig:
    """Defaults <- YAML <- ``key=value`` overrides; unknown keys are a ConfigError naming them."""
    where = path or "<defaults>"
    cfg = OmegaConf.structured(TrainPropagatorConfig)
    try:
        if path:
            if not dio.exists(path):
                raise ConfigError(f"config file {path} does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.create(dio.read_bytes(path).decode()))
        apply_overrides(cfg, overrides)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = getattr(e, "msg", str(e))
        raise ConfigError(f"{where}: key {key!r}: {msg}" if key else f"{where}: {msg}") from e
    out = OmegaConf.to_object(cfg)
    if out.optimizer not in ("sgd", "adam"):
        raise ConfigError(f"{where}: optimizer must be sgd or adam, got {out.optimizer!r}")
    try:
        out.model.validate()
    except ValueError as e:
        raise ConfigError(f"{where}: model: {e}") from e
    return out


def hard_pixel_loss(logits, target, fraction: float):
    """Bootstrapped binary cross-entropy: per sample, the mean of the ``fraction`` hardest
    pixels' losses (at least one pixel), then the mean over samples. ``logits``/``target``
    (B, H, W); the binary CE equals CFBI's two-way softmax CE on [background, object]."""
    import torch
    import torch.nn.functional as F

    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
    k = max(1, int(math.floor(fraction * losses.shape[1])))
    if k >= losses.shape[1]:
        return losses.mean()
    return torch.topk(losses, k, dim=1, sorted=False).values.mean()


def topk_fraction(step: int, cfg: TrainPropagatorConfig) -> float:
    """1.0 at step 0, annealed linearly to ``topk_final`` at ``topk_anneal_steps``."""
    anneal = cfg.topk_anneal_steps or max(1, cfg.steps // 2)
    rho = min(1.0, step / anneal)
    return cfg.topk_final * rho + (1.0 - rho)


def learning_rate(step: int, cfg: TrainPropagatorConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * max(0.0, 1.0 - step / max(1, cfg.steps)) ** cfg.poly_power


def _save(uri: str, obj: dict) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    dio.write_bytes(uri, buf.getvalue())  # atomic: temp file + rename


def train(cfg: TrainPropagatorConfig, log=print, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) and return a summary: steps, seconds, last loss, checkpoint path.

    ``stop_after``: leave after this many steps of this invocation, with ``last.pt`` written
    (a time-boxed slice of a longer run; the next call resumes). ``model.pt`` is written only
    when all ``cfg.steps`` are done."""
    import torch

    from rvos_ray.models.cfbi import CFBIPlus, load_state
    from rvos_ray.training.propagator_clips import ClipSampler

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)  # initial weights
    model = CFBIPlus(cfg.model).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sampler = ClipSampler(cfg.data)
    last_uri, final_uri = dio.join(cfg.work_dir, "last.pt"), dio.join(cfg.work_dir, "model.pt")
    config_dict = dataclasses.asdict(cfg.model)
    start, seconds = 0, 0.0
    if cfg.resume and dio.exists(last_uri):
        state = load_state(last_uri)
        if state.get("config") != config_dict:
            raise ConfigError(f"{last_uri}: checkpoint of another model config; use a new work_dir or resume=false")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, seconds = int(state["step"]), float(state.get("seconds", 0.0))
        log(f"resumed from {last_uri} at step {start}")
    loss_value = float("nan")
    t0 = time.perf_counter()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    for step in range(start, end):
        # data and dropout drawn from (seed, step) alone: a resumed run repeats an uninterrupted one
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        batch = sampler.sample(np.random.default_rng([cfg.seed, step]), cfg.batch_size)
        batch = {k: v.to(device) for k, v in batch.items()}
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg)
        own_prev = None
        if 0 <= cfg.sequential_from <= step:
            draw = np.random.default_rng([cfg.seed, step, 1]).random(cfg.batch_size) < cfg.sequential_prob
            own_prev = torch.from_numpy(draw).to(device)
        logits = model(batch["ref"], batch["prev"], batch["cur"],
                       batch["ref_mask"][:, None], batch["prev_mask"][:, None], own_prev)[:, 0]
        frac = topk_fraction(step, cfg)
        loss = hard_pixel_loss(logits, batch["cur_mask"], frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower lr")
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            with torch.no_grad():
                pred, gt = logits > 0, batch["cur_mask"] > 0.5
                inter = (pred & gt).flatten(1).sum(1).float()
                union = (pred | gt).flatten(1).sum(1).float()
                iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean()
            elapsed = seconds + time.perf_counter() - t0
            log(f"step {done}/{cfg.steps} loss {loss_value:.4f} batch-IoU {float(iou):.3f} "
                f"lr {learning_rate(step, cfg):.2e} top-k {frac:.2f} ({elapsed:.0f}s)")
        if done % cfg.checkpoint_every == 0 or done == end:
            _save(last_uri, {"config": config_dict, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "step": done, "seconds": seconds + time.perf_counter() - t0})
    seconds += time.perf_counter() - t0
    if end < cfg.steps:
        return {"steps": end, "resumed_from": start, "seconds": round(seconds, 1), "last_loss": loss_value,
                "checkpoint": last_uri}
    _save(final_uri, {"config": config_dict, "model": model.state_dict(), "step": cfg.steps, "seconds": seconds})
    return {"steps": cfg.steps, "resumed_from": start, "seconds": round(seconds, 1),
            "last_loss": loss_value, "checkpoint": final_uri}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rvos-ray train-propagator", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="training YAML (e.g. configs/propagator/tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 work_dir=runs/x")
    args = p.parse_intermixed_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    summary = train(cfg, log=lambda m: print(m, flush=True))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
