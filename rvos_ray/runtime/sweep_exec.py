"""Ray Tune over a run's cache: the sweep's only Ray code (see :mod:`rvos_ray.sweep`).

* The search space of :class:`rvos_ray.sweep.space.SweepSpace` becomes a Tune ``param_space``
  (``grid`` -> ``tune.grid_search``, ``choice`` / ``uniform`` / ... -> Tune's domains).
* ``search.algorithm`` ``grid`` / ``random`` use Tune's variant generator; any other name is a
  Tune searcher (``optuna``, ``hyperopt``, ...) created by ``ray.tune.search.create_searcher``
  and limited to ``max_concurrent_trials``.
* Cache trials are a **function trainable** wrapped with ``tune.with_parameters`` (the cache is
  put in the object store once, not pickled into every trial) and ``tune.with_resources``
  (``trial_resources``, CPU by default): each trial is a small CPU task that runs
  :func:`rvos_ray.sweep.trial.cache_trial` with models forbidden.
* Full pipeline trials (``allow_full_pipeline: true`` and a model axis) run the whole pipeline
  in-process in the trial (:func:`rvos_ray.runtime.local_exec.run_local`) into
  ``<sweep>/trials/<trial id>`` with ``full_pipeline_resources``.
* Pair metrics missing from the cache are computed as one Ray task per video.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

#: set before Ray is imported (Ray reads it at import): Tune's plain reporter (quiet at
#: verbose=0) instead of its console tables, as the sweep prints its own leaderboard. Loopback
#: and authentication are chosen by the CLI before this import (ray_session.prepare).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from ray import tune  # noqa: E402

from rvos_ray.registry import ConfigError  # noqa: E402
from rvos_ray.runtime import ray_session  # noqa: E402
from rvos_ray.sweep.cache import RunCache  # noqa: E402
from rvos_ray.sweep.space import SweepSpace  # noqa: E402

__all__ = ["init_sweep_ray", "ray_map", "param_space", "search_alg", "run_tune"]


def init_sweep_ray(sweep: DictConfig, address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join ``address`` / ``ray.address`` / ``RAY_ADDRESS``, or start a new local Ray on
    127.0.0.1 without a dashboard. Returns True when this call connected (caller disconnects)."""
    n = num_cpus if num_cpus is not None else sweep.ray.num_cpus
    return ray_session.connect(ray_session.target_address(address, sweep.ray.address),
                               num_cpus=None if n is None else int(n), log_to_driver=False)


def ray_map(fn: Callable, items: list) -> list:
    """``[fn(x) for x in items]`` as one Ray task per item (results in order)."""
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(x) for x in items])


def _domain(a) -> Any:
    if a.kind == "fixed":
        return a.args[0]
    if a.kind == "grid":
        return tune.grid_search(list(a.args))
    if a.kind == "choice":
        return tune.choice(list(a.args))
    if a.kind == "uniform":
        return tune.uniform(*a.args)
    if a.kind == "loguniform":
        return tune.loguniform(*a.args)
    if a.kind == "quniform":
        return tune.quniform(*a.args)
    if a.kind == "randint":
        return tune.randint(int(a.args[0]), int(a.args[1]))
    raise ConfigError(f"space.{a.key}: unknown domain {a.kind!r}")


def param_space(space: SweepSpace) -> dict[str, Any]:
    """Flat ``{axis: Tune domain}`` (axis names keep their dots)."""
    return {a.key: _domain(a) for a in space.axes}


def search_alg(sweep: DictConfig) -> Any:
    """None for grid / random (Tune's variant generator), else the named Tune searcher."""
    algo = str(sweep.search.algorithm)
    if algo in ("grid", "random"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=int(sweep.search.seed),
                                     max_concurrent=int(sweep.search.max_concurrent_trials))
    from ray.tune.search import ConcurrencyLimiter, create_searcher

    opts = dict(OmegaConf.to_container(sweep.search.options, resolve=True) or {})
    if algo in ("optuna", "hyperopt"):
        opts.setdefault("seed", int(sweep.search.seed))
    try:
        searcher = create_searcher(algo, **opts)
    except (ImportError, AssertionError) as e:
        raise ConfigError(f"search.algorithm {algo!r}: its package is not installed ({e}); "
                          f"pip install it, or use grid / random") from e
    except ValueError as e:
        raise ConfigError(f"search.algorithm {algo!r}: {e}") from e
    return ConcurrencyLimiter(searcher, max_concurrent=int(sweep.search.max_concurrent_trials))


# --------------------------------------------------------------------------------------------
# Trainables (run inside Tune's trial actors)
# --------------------------------------------------------------------------------------------


def _cache_trainable(config: dict, cache: RunCache, missing_grounding: str) -> None:
    import sys

    from rvos_ray.sweep.trial import cache_trial

    result = cache_trial(cache, config, missing_grounding)
    # model modules present in the trial's worker process (a cache trial imports none)
    result["torch_loaded"] = "torch" in sys.modules
    tune.report(result)


def _full_trainable(config: dict, run_cfg_yaml: str, trials_dir: str) -> None:
    import time

    from rvos_ray.config import RunConfig
    from rvos_ray.runtime.local_exec import run_local

    t0 = time.perf_counter()
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(run_cfg_yaml))
    for key, value in config.items():
        OmegaConf.update(cfg, key, value, merge=False)
    trial_id = tune.get_context().get_trial_id()
    OmegaConf.update(cfg, "run.dir", f"{trials_dir.rstrip('/')}/{trial_id}")
    OmegaConf.update(cfg, "run.submission_zip", False)
    OmegaConf.set_readonly(cfg, True)
    summary = run_local(cfg, progress=False)
    nan = float("nan")
    tune.report({"J": float(summary.get("J", nan)), "F": float(summary.get("F", nan)),
                 "J&F": float(summary.get("J&F", nan)), "status": "ok" if "J&F" in summary else "unscored",
                 "time_s": time.perf_counter() - t0, "failed_videos": int(summary["failed"]),
                 "model_calls": -1, "run_dir": str(summary["run_dir"])})


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def run_tune(
    cache: RunCache,
    space: SweepSpace,
    sweep: DictConfig,
    storage: str,
    name: str,
    num_samples: int,
) -> list[dict[str, Any]]:
    """Run every trial with Ray Tune; one row per trial: its axes (flat keys), scores, status."""
    # concurrency is set on the search algorithm (Tune ignores max_concurrent_trials when it is
    # given a search algorithm instance); trial actors are reused between trials
    tc = tune.TuneConfig(metric="J&F", mode="max", num_samples=int(num_samples),
                         search_alg=search_alg(sweep), reuse_actors=True)
    if space.full_pipeline:
        res = sweep.full_pipeline_resources
        trainable = tune.with_parameters(_full_trainable, run_cfg_yaml=OmegaConf.to_yaml(cache.config),
                                         trials_dir=f"{storage.rstrip('/')}/{name}/trials")
    else:
        res = sweep.trial_resources
        trainable = tune.with_parameters(_cache_trainable, cache=cache,
                                         missing_grounding=str(sweep.missing_grounding))
    trainable = tune.with_resources(trainable, {"cpu": float(res.cpu), "gpu": float(res.gpu)})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tc,
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    grid = tuner.fit()
    rows = []
    for i, r in enumerate(grid):
        row: dict[str, Any] = {"trial_id": r.metrics.get("trial_id", f"trial_{i}") if r.metrics else f"trial_{i}"}
        row.update({k: r.config.get(k) for k in space.keys})
        if r.error is not None:
            row.update({"J": float("nan"), "F": float("nan"), "J&F": float("nan"), "status": "error",
                        "error": f"{type(r.error).__name__}: {str(r.error).splitlines()[-1][:300]}"})
        else:
            m = r.metrics
            for k in ("J", "F", "J&F", "status", "time_s", "kept_tracklets", "missing_tracklets",
                      "grounding_exact", "model_calls", "torch_loaded", "failed_videos", "run_dir"):
                if k in m:
                    row[k] = m[k]
        rows.append(row)
    return rows
