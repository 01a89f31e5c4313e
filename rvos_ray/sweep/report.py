"""A sweep's outputs in the run directory: leaderboard, best settings, a printed table.

    <run>/sweeps/<name>/leaderboard.parquet   every trial: its settings, J, F, J&F, time, status
    <run>/sweeps/<name>/leaderboard.csv       the same, for spreadsheets
    <run>/sweeps/<name>/best.yaml             the run's config with the best settings: a config
                                              `rvos-ray run --config` accepts (run.dir points to
                                              <run>/sweeps/<name>/best_run)
    <run>/sweeps/<name>/summary.json          counts, best and baseline figures, timings

The leaderboard also holds a ``baseline`` row: the run's own settings recomputed from the
cache, which must equal the run's J&F (``reproduces_run`` in the summary).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from rvos_ray.config import RunConfig
from rvos_ray.data import io as fio

__all__ = ["display_value", "leaderboard_frame", "write_leaderboard", "best_config", "format_table"]

SCORE_COLUMNS = ["J&F", "J", "F"]
INFO_COLUMNS = ["time_s", "status", "kept_tracklets", "missing_tracklets", "grounding_exact", "model_calls"]


def display_value(key: str, value: Any) -> Any:
    """A leaderboard cell: variant subsets as ``a+b`` (``all`` for every variant)."""
    if key == "ensemble.variants":
        if value is None:
            return "all"
        return value if isinstance(value, str) else "+".join(str(v) for v in value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def leaderboard_frame(rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> pd.DataFrame:
    """Rows sorted by J&F (best first, unscored last) with a ``rank`` column."""
    df = pd.DataFrame([{**{k: v for k, v in r.items() if k not in axes},
                        **{a: display_value(a, r.get(a)) for a in axes}} for r in rows])
    first = ["rank", "trial_id", "kind", *axes, *SCORE_COLUMNS]
    df = df.sort_values("J&F", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    return df[cols]


def write_leaderboard(out_dir: str, df: pd.DataFrame) -> tuple[str, str]:
    """``leaderboard.parquet`` and ``leaderboard.csv`` under ``out_dir`` (atomic writes)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(table, sink)
    pq_path, csv_path = fio.join(out_dir, "leaderboard.parquet"), fio.join(out_dir, "leaderboard.csv")
    fio.write_bytes(pq_path, sink.getvalue().to_pybytes())
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    fio.write_bytes(csv_path, buf.getvalue().encode())
    return pq_path, csv_path


def best_config(run_cfg: DictConfig, settings: Mapping[str, Any], run_dir: str) -> str:
    """YAML of ``run_cfg`` with ``settings`` (dotted keys) applied and ``run.dir`` set: a
    complete config for ``rvos-ray run --config``."""
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.to_container(run_cfg, resolve=True))
    for key, value in settings.items():
        OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.update(cfg, "run.dir", run_dir)
    header = "# Best settings of a sweep: rvos-ray run --config <this file>\n"
    return header + OmegaConf.to_yaml(cfg, resolve=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def format_table(df: pd.DataFrame, axes: Sequence[str], top: int) -> str:
    """The first ``top`` rows as a fixed-width text table."""
    cols = ["rank", "trial_id", *axes, *SCORE_COLUMNS, "time_s"]
    if "grounding_exact" in df.columns and not df["grounding_exact"].fillna(True).all():
        cols.append("grounding_exact")
    cols = [c for c in cols if c in df.columns]
    head = [c.replace("ensemble.", "").replace("nms.", "nms.") for c in cols]
    body = [[_fmt(r[c]) for c in cols] for _, r in df.head(top).iterrows()]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(b[i].ljust(widths[i]) for i in range(len(cols))) for b in body]
    if len(df) > top:
        out.append(f"... {len(df) - top} more rows in the leaderboard")
    return "\n".join(out)
