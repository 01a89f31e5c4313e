"""One sweep trial over a run's cache: NMS (when swept) -> ensemble -> predictions -> J, F, J&F.

No model runs here (the trial is wrapped in :func:`rvos_ray.sweep.guard.forbid_models`), and
nothing is re-implemented: tracklet-NMS is :func:`rvos_ray.stages.tracklet_nms.nms_tracklets`
with the options the run's NMS stage parses, the ensemble is the run's
:class:`~rvos_ray.stages.ensemble.EnsembleStage` built from the trial's section, and the split's J, F, J&F are
aggregated by :func:`rvos_ray.runtime.run_lifecycle.split_scores` from per-expression metrics looked
up in the cache's pair metrics (computed by the runtime's scorer path). With the run's own
settings a trial therefore reproduces the run's J&F exactly.

**NMS trials and the grounding cache.** The run grounded only the tracklets its NMS kept, and
the grounder scored them jointly (a softmax over that set, after attention among them). A trial
with other NMS settings keeps a set S per video:

* S equal to the run's set: everything is exact;
* S a subset of it (smaller P, a stricter IoU threshold, a higher ``min_score``): the cached
  per-frame probabilities are restricted to S and renormalised over S per (expression, variant,
  frame). This is the softmax of the same logits over S, an approximation of grounding S anew
  (attention among the tracklets changes with the set); the leaderboard marks such trials
  ``grounding_exact = False``;
* S holding tracklets the run never grounded (larger P or IoU threshold): those have no
  probabilities. With ``missing_grounding: drop`` (default) they are left out (counted in
  ``missing_tracklets``); with ``refuse`` the trial reports no score (status ``refused``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rvos_ray.registry import ConfigError
from rvos_ray.stages.ensemble import EnsembleStage
from rvos_ray.stages.tracklet_nms import NMSStage, nms_tracklets
from rvos_ray.sweep.cache import NO_PREDICTION, RunCache
from rvos_ray.sweep.guard import forbid_models
from rvos_ray.sweep.space import CACHE_AXES, WEIGHT_PREFIX
from rvos_ray.types import GROUNDING_SCHEMA, METRICS_SCHEMA, table_from_columns

__all__ = ["TrialSettings", "run_trial", "cache_trial", "kept_by_nms"]


@dataclass(frozen=True)
class TrialSettings:
    """A trial's ``nms`` and ``ensemble`` config sections: the run's, overlaid by the trial's
    axes. The trial's NMS and ensemble are the run's own stages built from them
    (:class:`~rvos_ray.stages.tracklet_nms.NMSStage`, :class:`~rvos_ray.stages.ensemble.EnsembleStage`)."""

    sections: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of_run(cls, cfg: Mapping[str, Any]) -> TrialSettings:
        return cls({s: {k: v for k, v in dict(cfg[s]).items() if k != "resources"} for s in ("nms", "ensemble")})

    def with_axes(self, config: Mapping[str, Any], variants: list[str]) -> TrialSettings:
        """These settings with a trial's flat ``{axis: value}`` config applied."""
        c = {s: dict(v) for s, v in self.sections.items()}
        weights = dict(c["ensemble"].get("weights") or {})
        for key, value in config.items():
            if key.startswith(WEIGHT_PREFIX):
                if not weights:  # the run used equal weights: the other variants keep 1.0
                    weights = {v: 1.0 for v in variants}
                weights[key[len(WEIGHT_PREFIX):]] = float(value)
            elif key in CACHE_AXES:
                section, _, name = key.partition(".")
                c[section][name] = [value] if name == "variants" and isinstance(value, str) else value
            else:
                raise ConfigError(f"trial config: {key!r} is not a cache axis")
        c["ensemble"]["weights"] = weights
        return TrialSettings(c)

    def value(self, key: str) -> Any:
        """The settings' value of a cache axis (an absent weight: 1.0, equal weights)."""
        if key.startswith(WEIGHT_PREFIX):
            return dict(self.sections["ensemble"].get("weights") or {}).get(key[len(WEIGHT_PREFIX):], 1.0)
        section, _, name = key.partition(".")
        return self.sections[section].get(name)

    @property
    def nms(self) -> tuple[float, int, float]:
        o = NMSStage(self.sections["nms"]).options
        return (o.iou_threshold, o.max_tracklets, o.min_score)

    def overrides(self) -> dict[str, Any]:
        """The settings as run-config keys (for the best-settings YAML)."""
        return {f"{s}.{k}": v for s, section in self.sections.items() for k, v in section.items()}


# One NMS result per (run, settings) and process: trials of a grid share NMS settings often.
_NMS_MEMO: dict[tuple, dict[str, tuple[int, ...]]] = {}


def kept_by_nms(cache: RunCache, nms: tuple[float, int, float]) -> dict[str, tuple[int, ...]]:
    """Tracklet ids kept per video by tracklet-NMS with ``(iou_threshold, P, min_score)``; the
    run's own output when those are the run's settings (NMS is deterministic)."""
    run_nms = TrialSettings.of_run(cache.cfg).nms
    if nms == run_nms:
        return cache.kept
    key = (cache.run_uri, len(cache.works), nms)
    if key not in _NMS_MEMO:
        if cache.tracklets_all is None:
            raise ConfigError("this trial changes tracklet-NMS but the cache was loaded without "
                              "tracklets_all (load_cache(..., need_tracklets_all=True))")
        out = nms_tracklets(cache.tracklets_all, *nms)
        kept: dict[str, list[int]] = {w.video_id: [] for w in cache.works}
        for v, t in zip(out.column("video_id").to_pylist(), out.column("tracklet_id").to_pylist()):
            if t not in kept.setdefault(v, []):
                kept[v].append(int(t))
        _NMS_MEMO[key] = {v: tuple(ids) for v, ids in kept.items()}
    return _NMS_MEMO[key]


def _restrict(grounding: pa.Table, kept: dict[str, set[int]]) -> pa.Table:
    """Grounding rows of the kept tracklets of the given videos (others untouched),
    renormalised over the kept set per (video, expression, variant, frame)."""
    df = grounding.to_pandas()
    changed = df["video_id"].isin(list(kept))
    pairs = [(v, t) for v, ids in kept.items() for t in ids]
    keep = ~changed | pd.MultiIndex.from_arrays([df["video_id"], df["tracklet_id"]]).isin(pairs)
    df = df[keep].copy()
    rows = df["video_id"].isin(list(kept)).to_numpy()
    if rows.any():
        sub = df.loc[rows]
        total = sub.groupby(["video_id", "exp_id", "variant", "frame"])["prob"].transform("sum").to_numpy()
        p = sub["prob"].to_numpy(np.float64)
        df.loc[rows, "prob"] = np.where(total > 0, p / np.where(total > 0, total, 1.0), p).astype(np.float32)
    return table_from_columns({k: df[k].to_numpy() if k not in ("video_id", "exp_id", "variant")
                               else df[k].tolist() for k in GROUNDING_SCHEMA.names}, GROUNDING_SCHEMA, "grounding")


def run_trial(cache: RunCache, settings: TrialSettings, missing_grounding: str = "drop") -> dict[str, Any]:
    """Scores of one trial: J, F, J&F (NaN when refused) and bookkeeping for the leaderboard."""
    from rvos_ray.runtime.run_lifecycle import split_scores

    t0 = time.perf_counter()
    kept = kept_by_nms(cache, settings.nms)
    grounded = cache.grounded
    changed: dict[str, set[int]] = {}
    missing = 0
    for w in cache.works:
        v = w.video_id
        ids = set(kept.get(v, ()))
        missing += len(ids - grounded.get(v, set()))
        if ids != set(cache.kept.get(v, ())):
            changed[v] = ids & grounded.get(v, set())
    info = {
        "kept_tracklets": int(sum(len(kept.get(w.video_id, ())) for w in cache.works)),
        "missing_tracklets": int(missing),
        "grounding_exact": not changed,
    }
    if missing and missing_grounding == "refuse":
        return {"J": float("nan"), "F": float("nan"), "J&F": float("nan"), "status": "refused",
                "time_s": time.perf_counter() - t0, **info}
    grounding = _restrict(cache.grounding, changed) if changed else cache.grounding
    pred = EnsembleStage(settings.sections["ensemble"]).combine(grounding)
    chosen = dict(zip(zip(pred.column("video_id").to_pylist(), pred.column("exp_id").to_pylist()),
                      pred.column("tracklet_id").to_pylist()))
    cols: dict[str, list] = {k: [] for k in METRICS_SCHEMA.names}
    for w in cache.works:
        for e in w.expressions:
            tid = chosen.get((w.video_id, e.exp_id), NO_PREDICTION)
            j, f, n = cache.pairs[(w.video_id, e.exp_id, int(tid))]
            cols["video"].append(w.video_id)
            cols["exp_id"].append(e.exp_id)
            cols["J"].append(j)
            cols["F"].append(f)
            cols["J&F"].append((j + f) / 2)
            cols["n_frames"].append(n)
    metrics = table_from_columns(cols, METRICS_SCHEMA, "trial metrics")
    # the run merges its per-video metrics in this order; the same order gives the same sums
    metrics = metrics.sort_by([("video", "ascending"), ("exp_id", "ascending")])
    s = split_scores(cache.protocol_view, cache.works, metrics)
    return {"J": float(s["J"]), "F": float(s["F"]), "J&F": float(s["J&F"]), "status": "ok",
            "time_s": time.perf_counter() - t0, **info}


def cache_trial(cache: RunCache, config: Mapping[str, Any], missing_grounding: str = "drop") -> dict[str, Any]:
    """A trial from a flat ``{axis: value}`` config, with models forbidden throughout."""
    with forbid_models() as guard:
        settings = TrialSettings.of_run(cache.cfg).with_axes(config, cache.variants)
        result = run_trial(cache, settings, missing_grounding)
    result["model_calls"] = len(guard.refused)
    return result
