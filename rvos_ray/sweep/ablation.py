"""The paper's ablation (Table 3) as configs: each row is the base pipeline config with a few
keys replaced, run as a whole split, and the rows' J&F / J / F written as the paper's table.

An ablation config (``configs/ablation/table3.yaml``)::

    title: ...                   # the table's caption
    base: configs/tiny.yaml      # the pipeline config every row starts from
    out: runs/ablation/table3    # row i runs in <out>/<i>_<slug>; the table is <out>/table.md|csv
    executor: local              # local (in-process) | ray
    overrides: [data.root=...]   # key=value applied to the base for every row
    rows:
      - name: Image-level Baseline
        set: {propagation.backend: none, propagation.options: {}, grounding.method: similarity}
        grounding_variants: 1    # keep the first N grounder variants (null: all)

``set`` *replaces* values (a mapping such as ``propagation.options`` is not merged into the
base's), so a row never inherits options of a backend it does not use. Rows run one after the
other with the runtime's executors; a row's run directory resumes like any run, so re-running
an ablation only computes what is missing.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rvos_ray.config import RunConfig, load_config
from rvos_ray.data import io as fio
from rvos_ray.registry import ConfigError
from rvos_ray.runtime import ray_session

__all__ = ["AblationConfig", "load_ablation_config", "row_config", "run_ablation", "table_markdown", "table_csv"]


@dataclass
class AblationRow:
    name: str = ""  # the row's label in the table
    set: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, replacing the base's
    grounding_variants: Any = None  # keep the first N grounding variants; None: all


@dataclass
class AblationConfig:
    title: str = "Ablation study"
    base: str = "configs/tiny.yaml"
    out: str = "runs/ablation"
    executor: str = "local"  # local | ray
    overrides: list[str] = field(default_factory=list)
    rows: list[AblationRow] = field(default_factory=list)


def load_ablation_config(path: str | Path) -> DictConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ablation config {p} does not exist")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(AblationConfig), OmegaConf.load(p))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{p}: key {key!r}: {getattr(e, 'msg', e)}" if key else f"{p}: {e}") from e
    if cfg.executor not in ("local", "ray"):
        raise ConfigError(f"{p}: executor must be local or ray, got {cfg.executor!r}")
    if not cfg.rows:
        raise ConfigError(f"{p}: no rows")
    for i, r in enumerate(cfg.rows):
        if not r.name:
            raise ConfigError(f"{p}: rows[{i}] needs a name")
    return cfg


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] or "row"


def row_config(base: str, overrides: Sequence[str], row: Any, run_dir: str, where: str) -> DictConfig:
    """The run config of one row: base + overrides, then the row's ``set`` (replacing), its
    variant count, and ``run.dir``. Validated against :class:`RunConfig`; read-only."""
    cfg = load_config(base, list(overrides))
    c = OmegaConf.to_container(cfg, resolve=True)
    work = OmegaConf.create(c)
    for key, value in (OmegaConf.to_container(row.set, resolve=True) or {}).items():
        OmegaConf.update(work, str(key), value, merge=False)
    n = row.grounding_variants
    if n is not None:
        variants = list(work.grounding.variants)
        if not 1 <= int(n) <= len(variants):
            raise ConfigError(f"{where}: grounding_variants {n}: the base has {len(variants)} variant(s)")
        work.grounding.variants = variants[: int(n)]
        names = {str(v.name) for v in work.grounding.variants}
        work.ensemble.weights = {k: v for k, v in work.ensemble.weights.items() if k in names}
        if work.ensemble.variants:
            work.ensemble.variants = [v for v in work.ensemble.variants if v in names] or None
    OmegaConf.update(work, "run.dir", run_dir)
    try:
        out = OmegaConf.merge(OmegaConf.structured(RunConfig), work)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {getattr(e, 'full_key', '')}: {getattr(e, 'msg', e)}") from e
    OmegaConf.set_readonly(out, True)
    return out


def run_ablation(acfg: DictConfig, extra_overrides: Sequence[str] = (), out: str | None = None,
                 address: str | None = None, log=print) -> list[dict[str, Any]]:
    """Run every row; returns one dict per row (name, run_dir, J&F, J, F, counts)."""
    out = str(out or acfg.out)
    overrides = [*acfg.overrides, *extra_overrides]
    cfgs = [row_config(str(acfg.base), overrides, r, fio.join(out, f"{i + 1}_{slug(str(r.name))}"),
                       f"ablation rows[{i}] ({r.name})") for i, r in enumerate(acfg.rows)]
    results = []
    started = False
    if acfg.executor == "ray":
        from rvos_ray.runtime.ray_exec import init_ray

        started = init_ray(cfgs[0], address)
    try:
        for r, cfg in zip(acfg.rows, cfgs):
            log(f"row {r.name!r}: running into {cfg.run.dir}")
            if acfg.executor == "ray":
                from rvos_ray.runtime.ray_exec import run_ray

                s = run_ray(cfg, address=address, progress=False)
            else:
                from rvos_ray.runtime.local_exec import run_local

                s = run_local(cfg, progress=False)
            nan = float("nan")
            results.append({"name": str(r.name), "run_dir": str(s["run_dir"]), "J&F": float(s.get("J&F", nan)),
                            "J": float(s.get("J", nan)), "F": float(s.get("F", nan)), "videos": s["videos"],
                            "failed": s["failed"], "expressions": s.get("scored_expressions", 0),
                            "wall_seconds": float(s["wall_seconds"])})
    finally:
        ray_session.disconnect(started)
    return results


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.1f}"


def table_markdown(title: str, rows: Sequence[dict[str, Any]]) -> str:
    """The paper's format: Model | J&F | J | F, in percent with one decimal, plus a line per row
    saying whether it improves on the row before."""
    lines = ["| Model | J&F ↑ | J ↑ | F ↑ |", "|---|---:|---:|---:|"]
    lines += [f"| {r['name']} | {_pct(r['J&F'])} | {_pct(r['J'])} | {_pct(r['F'])} |" for r in rows]
    lines += ["", f"Table: {title}", ""]
    for prev, r in zip(rows, rows[1:]):
        d = r["J&F"] - prev["J&F"]
        verdict = "improves on" if d > 0 else ("equals" if d == 0 else "does NOT improve on")
        lines.append(f"- {r['name']} {verdict} the row before: J&F {d * 100:+.1f}")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    import csv

    buf = io.StringIO()
    keys = ["name", "J&F", "J", "F", "expressions", "videos", "failed", "wall_seconds", "run_dir"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()


def write_tables(out: str, title: str, rows: Sequence[dict[str, Any]]) -> tuple[str, str, str]:
    """``table.md``, ``table.csv`` and ``table.json`` under ``out`` (atomic)."""
    md, csv_ = fio.join(out, "table.md"), fio.join(out, "table.csv")
    js = fio.join(out, "table.json")
    fio.write_bytes(md, table_markdown(title, rows).encode())
    fio.write_bytes(csv_, table_csv(rows).encode())
    fio.write_bytes(js, (json.dumps(list(rows), indent=2) + "\n").encode())
    return md, csv_, js
