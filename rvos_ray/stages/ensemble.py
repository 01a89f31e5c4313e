"""Ensemble: combine the variants' per-frame grounding probabilities and pick one tracklet per
expression (paper: "simply average grounding probabilities from different models").

For each (video, expression, frame): every variant's distribution over the tracklets is first
tempered (p^(1/T), renormalised; T = 1 leaves it as is), then combined across variants with
weights w_v (default equal, renormalised over the variants present):

* ``mean``    : Σ_v w_v p_v                              (the paper's average)
* ``logmean`` : exp(Σ_v w_v log p_v), renormalised      (a weighted geometric mean)

s_p = mean of the combined probability over the frames (every ``frame_stride``-th grounded
frame), and the prediction is argmax_p s_p (ties: the lowest tracklet id) with score s_p.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from rvos_ray.registry import ConfigError, parse_options
from rvos_ray.stages.protocols import Stage
from rvos_ray.types import GROUNDING_SCHEMA, PREDICTION_SCHEMA, Resources, table_from_columns, validate

__all__ = ["ensemble", "EnsembleStage", "MODES"]

MODES = ("mean", "logmean")
_KEY = ["video_id", "exp_id", "frame"]


def ensemble(
    grounding: pa.Table,
    weights: Mapping[str, float] | None = None,
    mode: str = "mean",
    temperature: float = 1.0,
    frame_stride: int = 1,
    variants: Sequence[str] | None = None,
) -> pa.Table:
    """Grounding table (``GROUNDING_SCHEMA``) -> prediction table (``PREDICTION_SCHEMA``).

    ``variants`` restricts the ensemble to a subset (sweeps); ``weights`` maps variant -> weight
    (empty: equal weights; otherwise every variant present needs a weight).
    """
    if mode not in MODES:
        raise ConfigError(f"ensemble.mode: {mode!r} is not one of {list(MODES)}")
    if not temperature > 0:
        raise ConfigError(f"ensemble.temperature must be > 0, got {temperature}")
    if frame_stride < 1:
        raise ConfigError(f"ensemble.frame_stride must be >= 1, got {frame_stride}")
    df = validate(grounding, GROUNDING_SCHEMA, "grounding").to_pandas()
    if variants is not None:
        unknown = sorted(set(variants) - set(df["variant"].unique())) if len(df) else []
        if unknown:
            raise ConfigError(f"ensemble: variants {unknown} have no grounding rows")
        df = df[df["variant"].isin(list(variants))]
    if df.empty:
        return PREDICTION_SCHEMA.empty_table()
    present = sorted(df["variant"].unique())
    w = _weights(weights or {}, present)
    df = df[df["variant"].map(w) > 0].copy()

    p = df["prob"].to_numpy(np.float64).clip(0.0, 1.0)
    if temperature != 1.0:
        p = p ** (1.0 / temperature)
        df["prob"] = p
        p = p / df.groupby(_KEY + ["variant"])["prob"].transform("sum").to_numpy().clip(1e-300)
    df["w"] = df["variant"].map(w).to_numpy(np.float64)
    # weights renormalised over the variants that grounded this (video, exp, frame)
    wsum = df.groupby(_KEY + ["tracklet_id"])["w"].transform("sum").to_numpy()
    df["wn"] = df["w"].to_numpy() / wsum
    if mode == "mean":
        df["c"] = df["wn"] * p
        comb = df.groupby(_KEY + ["tracklet_id"], sort=False)["c"].sum()
    else:
        df["c"] = df["wn"] * np.log(np.clip(p, 1e-12, None))
        comb = np.exp(df.groupby(_KEY + ["tracklet_id"], sort=False)["c"].sum())
        comb = comb / comb.groupby(level=_KEY).transform("sum")
    comb = comb.rename("p").reset_index()

    if frame_stride > 1:
        rank = comb.groupby(["video_id", "exp_id"])["frame"].rank(method="dense").astype(int) - 1
        comb = comb[rank % frame_stride == 0]
    s = comb.groupby(["video_id", "exp_id", "tracklet_id"])["p"].mean().reset_index()
    s = s.sort_values(["video_id", "exp_id", "p", "tracklet_id"], ascending=[True, True, False, True])
    best = s.groupby(["video_id", "exp_id"], sort=False).head(1)
    return table_from_columns(
        {
            "video_id": best["video_id"].tolist(),
            "exp_id": best["exp_id"].tolist(),
            "tracklet_id": best["tracklet_id"].to_numpy(np.int32),
            "score": best["p"].to_numpy(np.float32),
        },
        PREDICTION_SCHEMA,
        "prediction",
    )


def _weights(weights: Mapping[str, float], present: list[str]) -> dict[str, float]:
    if not weights:
        return {v: 1.0 for v in present}
    out = {}
    for v in present:
        if v not in weights:
            raise ConfigError(f"ensemble.weights: no weight for variant {v!r} (weights for {sorted(weights)})")
        x = float(weights[v])
        if x < 0 or x != x:
            raise ConfigError(f"ensemble.weights[{v}]: {x} is not a weight >= 0")
        out[v] = x
    if not any(out.values()):
        raise ConfigError(f"ensemble.weights: every variant in {present} weighs 0")
    return out


class EnsembleStage(Stage):
    """The ensemble with the ``ensemble`` section's options (absent keys:
    :class:`rvos_ray.config.EnsembleConfig`'s defaults)."""

    stage = "ensemble"

    def __init__(self, section: Mapping[str, Any], resources: Resources | None = None) -> None:
        from rvos_ray.config import EnsembleConfig

        super().__init__(resources)
        self.options = o = parse_options(EnsembleConfig, section, "ensemble")
        if o.mode not in MODES:
            raise ConfigError(f"ensemble.mode: {o.mode!r} is not one of {list(MODES)}")

    def combine(self, grounding: pa.Table) -> pa.Table:
        o = self.options
        return ensemble(grounding, o.weights, o.mode, o.temperature, o.frame_stride, o.variants or None)

    def process(self, *tables: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(every variant's grounding rows of the video, variant-major; the prediction table)."""
        g = concat_grounding(tables)
        return g, validate(self.combine(g), PREDICTION_SCHEMA, "prediction")


def concat_grounding(tables: Sequence[pa.Table]) -> pa.Table:
    """Grounding tables of one video in one, in a fixed order (variant-major)."""
    if not tables:
        return GROUNDING_SCHEMA.empty_table()
    t = pa.concat_tables(list(tables)).combine_chunks()
    return t.sort_by([(k, "ascending") for k in ("exp_id", "variant", "frame", "tracklet_id")])
