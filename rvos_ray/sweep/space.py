"""The sweep config (``configs/sweeps/*.yaml``) and its search space.

A sweep config names the settings to try as *axes*: a dotted key of the run config and a
domain. Axes are of two kinds:

* **cache axes** are recomputed from the run directory's cached tables without any model:
  ``ensemble.variants`` (a subset of the grounded variants), ``ensemble.weights.<variant>``,
  ``ensemble.mode`` (mean | logmean), ``ensemble.temperature``, ``ensemble.frame_stride`` (s_p
  over every n-th grounded frame), and ``nms.iou_threshold`` / ``nms.max_tracklets`` (P) /
  ``nms.min_score`` (tracklet-NMS re-run on the cached ``tracklets_all`` tables);
* **model axes** are any key of ``keyframes``, ``segmentation``, ``propagation`` or
  ``grounding`` (K keyframes, checkpoints, grounding frame stride, ...): they change what a
  model computes, so each trial would be a full pipeline run. They are refused with an error
  saying so, unless the sweep config sets ``allow_full_pipeline: true``.

Domains (each axis maps to one)::

    0.5                          a fixed value
    {grid: [a, b, c]}            every value (grid search)
    {choice: [a, b, c]}          one at random per trial
    {uniform: [lo, hi]}  {loguniform: [lo, hi]}  {quniform: [lo, hi, q]}  {randint: [lo, hi]}

and two shorthands: ``ensemble.variants: {subsets: all}`` (grid over every non-empty subset of
the run's variants; ``{subsets: [2, 3]}`` only those sizes) and ``ensemble.weights:
{per_variant: <domain>}`` (one weight axis per variant of the run). ``null`` in a variants
list means "every variant". The space is turned into a Ray Tune ``param_space`` by
:mod:`rvos_ray.runtime.sweep_exec`; this module only parses and checks (no Ray).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rvos_ray.config import apply_overrides
from rvos_ray.registry import ConfigError

__all__ = [
    "CACHE_AXES",
    "MODEL_SECTIONS",
    "Axis",
    "SweepConfig",
    "SweepSpace",
    "load_sweep_config",
    "build_space",
]

#: axes computed from the cache (see the module docstring); weights are ``ensemble.weights.<v>``
CACHE_AXES = (
    "ensemble.variants",
    "ensemble.mode",
    "ensemble.temperature",
    "ensemble.frame_stride",
    "nms.iou_threshold",
    "nms.max_tracklets",
    "nms.min_score",
)
NMS_AXES = ("nms.iou_threshold", "nms.max_tracklets", "nms.min_score")
WEIGHT_PREFIX = "ensemble.weights."
#: config sections whose keys change a model's output: sweeping them re-runs the pipeline
MODEL_SECTIONS = ("keyframes", "segmentation", "propagation", "grounding")
DOMAINS = ("grid", "choice", "uniform", "loguniform", "quniform", "randint")
SEARCHERS_WITHOUT_GRID = "a search algorithm other than grid/random"


@dataclass
class SearchSection:
    algorithm: str = "grid"  # grid | random | a Ray Tune searcher (optuna, hyperopt, ...)
    num_samples: int = 1  # grid: repeats of the whole grid; random / searcher: trials
    max_concurrent_trials: int = 2  # trials running at once
    seed: int = 0  # random sampling and searcher seed
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the searcher


@dataclass
class TrialResources:
    cpu: float = 1.0  # CPUs reserved by each trial (a Ray task's worth of work)
    gpu: float = 0.0


@dataclass
class SweepRay:
    address: str = ""  # empty: a local Ray on 127.0.0.1; else an existing cluster
    num_cpus: Any = None  # local Ray only


@dataclass
class SweepConfig:
    name: str = "ensemble"  # outputs go to <run>/sweeps/<name>/
    search: SearchSection = field(default_factory=SearchSection)
    space: dict[str, Any] = field(default_factory=dict)  # axis -> domain (module docstring)
    trial_resources: TrialResources = field(default_factory=TrialResources)
    # Cache trials that change tracklet-NMS may keep a tracklet the run never grounded (its
    # grounding rows exist only for the tracklets the run's own NMS kept). "drop": such a
    # tracklet is left out of the trial and counted in the leaderboard's missing_tracklets;
    # "refuse": the trial reports no score (status "refused").
    missing_grounding: str = "drop"
    allow_full_pipeline: bool = False  # model axes run as full pipeline trials (in-process models)
    full_pipeline_resources: TrialResources = field(default_factory=lambda: TrialResources(cpu=2.0))
    top: int = 10  # leaderboard rows printed
    ray: SweepRay = field(default_factory=SweepRay)


def load_sweep_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The sweep YAML over :class:`SweepConfig` defaults; unknown keys name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep config {p} does not exist")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(p))
        apply_overrides(cfg, overrides)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{p}: key {key!r}: {getattr(e, 'msg', e)}" if key else f"{p}: {e}") from e
    if cfg.missing_grounding not in ("drop", "refuse"):
        raise ConfigError(f"{p}: missing_grounding must be drop or refuse, got {cfg.missing_grounding!r}")
    if cfg.search.num_samples < 1 or cfg.search.max_concurrent_trials < 1:
        raise ConfigError(f"{p}: search.num_samples and search.max_concurrent_trials must be >= 1")
    return cfg


@dataclass(frozen=True)
class Axis:
    """One swept key: ``kind`` is ``fixed`` or one of :data:`DOMAINS`; ``args`` its values or
    bounds."""

    key: str
    kind: str
    args: tuple

    @property
    def model(self) -> bool:
        return self.key.split(".", 1)[0] in MODEL_SECTIONS

    def values(self) -> list:
        """The values a grid / choice / fixed axis takes (bounds for the others)."""
        return [self.args[0]] if self.kind == "fixed" else list(self.args)


@dataclass
class SweepSpace:
    """The parsed axes; ``full_pipeline`` when any is a model axis (allowed by the config)."""

    axes: list[Axis]
    variants: list[str]
    full_pipeline: bool = False

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.axes]

    @property
    def sweeps_nms(self) -> bool:
        return any(a.key in NMS_AXES for a in self.axes)

    def grid_size(self) -> int:
        """Trials of one pass over the grid axes (1 when there is none)."""
        return math.prod(len(a.args) for a in self.axes if a.kind == "grid")

    def smoke(self) -> SweepSpace:
        """A cut-down space for ``--smoke-test``: the first two grid / choice axes keep their
        first two values, the others their first value (at most 4 grid points)."""
        axes, wide = [], 0
        for a in self.axes:
            if a.kind in ("grid", "choice"):
                keep = 2 if wide < 2 and len(a.args) > 1 else 1
                wide += keep == 2
                a = Axis(a.key, a.kind, a.args[:keep])
            axes.append(a)
        return SweepSpace(axes, self.variants, self.full_pipeline)


def _domain(key: str, spec: Any, where: str) -> Axis:
    if isinstance(spec, Mapping):
        if len(spec) != 1 or next(iter(spec)) not in DOMAINS:
            raise ConfigError(f"{where}: space.{key}: a domain is one of {{{', '.join(DOMAINS)}: ...}} "
                              f"or a plain value, got {dict(spec)}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, Sequence) or isinstance(args, str) or not args:
            raise ConfigError(f"{where}: space.{key}.{kind}: expected a non-empty list, got {args!r}")
        args = tuple(args)
        need = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2}.get(kind)
        if need is not None:
            if len(args) != need or not all(isinstance(x, (int, float)) for x in args):
                raise ConfigError(f"{where}: space.{key}.{kind}: expected {need} numbers, got {list(args)}")
            if args[0] >= args[1]:
                raise ConfigError(f"{where}: space.{key}.{kind}: lower bound {args[0]} >= upper {args[1]}")
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(f"{where}: space.{key}.loguniform: bounds must be > 0")
        return Axis(key, kind, args)
    return Axis(key, "fixed", (spec,))


def _subsets(spec: Any, variants: list[str], where: str) -> Axis:
    sizes = range(1, len(variants) + 1) if spec == "all" else spec
    if not isinstance(sizes, (range, Sequence)) or isinstance(sizes, str) or \
            not all(isinstance(s, int) and 1 <= s <= len(variants) for s in sizes):
        raise ConfigError(f"{where}: space.ensemble.variants.subsets: 'all' or sizes in 1..{len(variants)} "
                          f"(the run has variants {variants}), got {spec!r}")
    # largest first: the full ensemble (the paper's setting) leads the grid
    subsets = [list(c) for s in sorted(sizes, reverse=True) for c in itertools.combinations(variants, s)]
    return Axis("ensemble.variants", "grid", tuple(subsets))


def _check_cache_axis(axis: Axis, variants: list[str], where: str) -> None:
    key = axis.key
    if key.startswith(WEIGHT_PREFIX):
        v = key[len(WEIGHT_PREFIX):]
        if v not in variants:
            raise ConfigError(f"{where}: space.{key}: the run has no variant {v!r} (variants: {variants})")
        return
    if key not in CACHE_AXES:
        section = key.split(".", 1)[0]
        if section in ("ensemble", "nms"):
            raise ConfigError(f"{where}: space.{key} is not a sweep axis; {section} axes are "
                              f"{[a for a in CACHE_AXES if a.startswith(section)]}"
                              + (f" and {WEIGHT_PREFIX}<variant>" if section == "ensemble" else ""))
        raise ConfigError(f"{where}: space.{key} is not a sweep axis (sweepable: {list(CACHE_AXES)}, "
                          f"{WEIGHT_PREFIX}<variant>, or keys of {list(MODEL_SECTIONS)} as full pipeline trials)")
    if key == "ensemble.variants" and axis.kind in ("grid", "choice", "fixed"):
        for subset in axis.values():
            if subset is None:
                continue
            names = [subset] if isinstance(subset, str) else list(subset)
            unknown = [n for n in names if n not in variants]
            if unknown or not names:
                raise ConfigError(f"{where}: space.ensemble.variants: {subset!r} is not a non-empty subset "
                                  f"of the run's variants {variants}")
    if key == "ensemble.mode" and axis.kind in ("grid", "choice", "fixed"):
        from rvos_ray.stages.ensemble import MODES

        bad = [m for m in axis.values() if m not in MODES]
        if bad:
            raise ConfigError(f"{where}: space.ensemble.mode: {bad} not in {list(MODES)}")


def build_space(sweep: DictConfig, run_cfg: DictConfig, variants: Sequence[str], where: str = "sweep config") -> SweepSpace:
    """Parse and check ``sweep.space`` against the run (its config and grounded variants).

    Raises :class:`ConfigError` for an unknown axis, a variant the run does not have, or a
    model axis when ``allow_full_pipeline`` is off (the message says that each trial would
    re-run the models and how to allow it).
    """
    variants = sorted(variants)
    space = OmegaConf.to_container(sweep.space, resolve=True) or {}
    if not space:
        raise ConfigError(f"{where}: space is empty; name at least one axis (e.g. ensemble.temperature)")
    axes: list[Axis] = []
    for key, spec in space.items():
        key = str(key)
        if key == "ensemble.variants" and isinstance(spec, Mapping) and "subsets" in spec:
            axes.append(_subsets(spec["subsets"], variants, where))
            continue
        if key == "ensemble.weights":
            if not (isinstance(spec, Mapping) and set(spec) == {"per_variant"}):
                raise ConfigError(f"{where}: space.ensemble.weights: use {{per_variant: <domain>}} or one "
                                  f"axis per variant, {WEIGHT_PREFIX}<variant>")
            axes += [_domain(f"{WEIGHT_PREFIX}{v}", spec["per_variant"], where) for v in variants]
            continue
        axes.append(_domain(key, spec, where))
    model = [a for a in axes if a.model]
    if model and not sweep.allow_full_pipeline:
        keys = ", ".join(a.key for a in model)
        raise ConfigError(
            f"{where}: axis {keys} changes a model stage ({', '.join(sorted({a.key.split('.')[0] for a in model}))}): "
            f"the cached tracklets and grounding probabilities cannot answer it, each trial would re-run the "
            f"models. Set allow_full_pipeline: true in the sweep config to run such trials as full pipeline "
            f"runs, or sweep cache axes only ({', '.join(CACHE_AXES)}, {WEIGHT_PREFIX}<variant>)"
        )
    for a in axes:
        if a.model:
            if OmegaConf.select(run_cfg, a.key, default="__missing__") == "__missing__":
                raise ConfigError(f"{where}: space.{a.key}: the run config has no such key")
        else:
            _check_cache_axis(a, variants, where)
    algo = str(sweep.search.algorithm)
    if algo not in ("grid", "random") and any(a.kind == "grid" for a in axes):
        raise ConfigError(f"{where}: search.algorithm {algo!r} samples its own points; use choice / uniform "
                          f"domains instead of grid (axes {[a.key for a in axes if a.kind == 'grid']})")
    return SweepSpace(axes, variants, full_pipeline=bool(model))
