"""One sweep trial over a run's cache: NMS (when swept) -> ensemble -> predictions -> J, F, J&F.

No model runs here (the trial is wrapped in :func:`rvos_ray.sweep.guard.forbid_models`), and
nothing is re-implemented: tracklet-NMS is :func:`rvos_ray.stages.tracklet_nms.nms_tracklets`,
the ensemble is :func:`rvos_ray.stages.ensemble.ensemble`, and the split's J, F, J&F are
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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rvos_ray.registry import ConfigError
from rvos_ray.stages.ensemble import ensemble
from rvos_ray.stages.tracklet_nms import nms_tracklets
from rvos_ray.sweep.cache import NO_PREDICTION, RunCache
from rvos_ray.sweep.guard import forbid_models
from rvos_ray.sweep.space import WEIGHT_PREFIX
from rvos_ray.types import GROUNDING_SCHEMA, METRICS_SCHEMA, table_from_columns

__all__ = ["TrialSettings", "run_trial", "cache_trial", "kept_by_nms"]


#: the cache axes that set one scalar field of :class:`TrialSettings`: axis -> (field, type)
_SCALAR_AXES: dict[str, tuple[str, type]] = {
    "ensemble.mode": ("mode", str), "ensemble.temperature": ("temperature", float),
    "ensemble.frame_stride": ("frame_stride", int), "nms.iou_threshold": ("iou_threshold", float),
    "nms.max_tracklets": ("max_tracklets", int), "nms.min_score": ("min_score", float),
}


@dataclass(frozen=True)
class TrialSettings:
    """The NMS and ensemble settings of one trial (the run's, overlaid by the trial's axes)."""

    variants: tuple[str, ...] | None
    weights: tuple[tuple[str, float], ...]
    mode: str
    temperature: float
    frame_stride: int
    iou_threshold: float
    max_tracklets: int
    min_score: float

    @classmethod
    def of_run(cls, cfg: Mapping[str, Any]) -> TrialSettings:
        e, n = cfg["ensemble"], cfg["nms"]
        vs = e.get("variants")
        return cls(
            variants=tuple(str(v) for v in vs) if vs else None,
            weights=tuple(sorted((str(k), float(v)) for k, v in dict(e.get("weights") or {}).items())),
            mode=str(e["mode"]),  # a run's config.yaml is resolved: every key is there
            temperature=float(e["temperature"]),
            frame_stride=int(e["frame_stride"]),
            iou_threshold=float(n["iou_threshold"]),
            max_tracklets=int(n["max_tracklets"]),
            min_score=float(n["min_score"]),
        )

    def with_axes(self, config: Mapping[str, Any], variants: list[str]) -> TrialSettings:
        """These settings with a trial's flat ``{axis: value}`` config applied."""
        s = self
        weights = dict(self.weights)
        for key, value in config.items():
            if key.startswith(WEIGHT_PREFIX):
                if not weights:  # the run used equal weights: the other variants keep 1.0
                    weights = {v: 1.0 for v in variants}
                weights[key[len(WEIGHT_PREFIX):]] = float(value)
            elif key == "ensemble.variants":
                vs = None if value is None else ((value,) if isinstance(value, str) else tuple(value))
                s = replace(s, variants=None if vs is None else tuple(str(v) for v in vs))
            elif key in _SCALAR_AXES:
                field_name, kind = _SCALAR_AXES[key]
                s = replace(s, **{field_name: kind(value)})
            else:
                raise ConfigError(f"trial config: {key!r} is not a cache axis")
        return replace(s, weights=tuple(sorted(weights.items())))

    @property
    def nms(self) -> tuple[float, int, float]:
        return (self.iou_threshold, self.max_tracklets, self.min_score)

    def overrides(self) -> dict[str, Any]:
        """The settings as run-config keys (for the best-settings YAML)."""
        return {
            "nms.iou_threshold": self.iou_threshold,
            "nms.max_tracklets": self.max_tracklets,
            "nms.min_score": self.min_score,
            "ensemble.variants": None if self.variants is None else list(self.variants),
            "ensemble.weights": dict(self.weights),
            "ensemble.mode": self.mode,
            "ensemble.temperature": self.temperature,
            "ensemble.frame_stride": self.frame_stride,
        }


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
    pred = ensemble(grounding, dict(settings.weights) or None, settings.mode, settings.temperature,
                    settings.frame_stride, list(settings.variants) if settings.variants else None)
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
