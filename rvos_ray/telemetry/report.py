"""The HTML run report: one self-contained file from a run directory.

``write_report(run_dir)`` reads what a run left behind (``summary.json``, the event log,
``metrics.parquet``, ``predictions.parquet``, the per-video tracklet tables, ``config.yaml``,
``environment.json``) and writes ``<run>/report.html``: per-stage throughput over time,
latency distributions, stage time per video, J / F / J&F distributions, the worst expressions
with overlay thumbnails of prediction vs ground truth, the config and the environment.
plotly.js is inlined and thumbnails are PNG data URIs: the page needs no network access.

Both executors call :func:`write_run_report` when a run finishes; ``rvos-ray report RUN_DIR``
rebuilds it at any time (also for an interrupted run: it then reads the per-video event logs).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from omegaconf import OmegaConf

from rvos_ray.data import io as fio
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.telemetry import environment as env
from rvos_ray.telemetry import report_figures as figs
from rvos_ray.telemetry.metrics import stage_call_events
from rvos_ray.telemetry.report_template import PAGE
from rvos_ray.telemetry.thumbnails import Thumbnail, worst_frame_thumbnail
from rvos_ray.types import METRICS_SCHEMA, PREDICTION_SCHEMA, table_from_columns

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
ENVIRONMENT_NAME = "environment.json"


@dataclass
class Worst:
    video: str
    exp_id: str
    text: str
    J: float
    F: float
    JF: float
    n_frames: int
    thumb: Thumbnail | None = None


# --------------------------------------------------------------------------------------------
# Reading the run directory
# --------------------------------------------------------------------------------------------


def read_events(rd: RunDir) -> list[dict[str, Any]]:
    """The run's event log; for a run that has not finished, the per-video logs."""
    path = rd.path("events.jsonl")
    if fio.exists(path):
        return [json.loads(x) for x in fio.read_bytes(path).decode().splitlines() if x.strip()]
    root = rd.path("videos")
    events: list[dict[str, Any]] = []
    if fio.is_dir(root):
        for vid in fio.list_dir(root):
            events.extend(rd.read_events(vid))
    return events


def _read_json(rd: RunDir, name: str) -> Any:
    return rd.read_json(name) if fio.exists(rd.path(name)) else None


def _read_split_table(rd: RunDir, name: str, stem: str, schema: pa.Schema) -> pa.Table:
    if fio.exists(rd.path(name)):
        return rd.read_split_table(name, stem)
    return table_from_columns({f.name: [] for f in schema}, schema, name)


def frames_per_video(rd: RunDir, events: list[dict[str, Any]]) -> dict[str, int]:
    """Frame count of every video with stage events, from its ``done.json`` record."""
    out = {}
    for vid in sorted({str(e["video_id"]) for e in stage_call_events(events)}):
        if rd.is_done(vid):
            out[vid] = int(rd.done_record(vid).get("frames", 0))
    return out


def placements(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where each actor ran, from the driver's ``actors_ready`` event (Ray executor)."""
    rows = []
    for e in events:
        if e.get("stage") == "driver" and e.get("item") == "actors_ready":
            for stage, items in (e.get("placements") or {}).items():
                for p in items:
                    rows.append({"stage": stage, "name": p.get("name", ""), "host": p.get("host", ""),
                                 "node_id": str(p.get("node_id", "")), "pid": p.get("pid", ""),
                                 "resources": json.dumps(p.get("resources", {}), sort_keys=True),
                                 "gpu_ids": ",".join(p.get("gpu_ids", []))})
    return rows


def worst_expressions(rd: RunDir, cfg: Any, metrics: pa.Table, predictions: pa.Table, n: int
                      ) -> tuple[list[Worst], str]:
    """The ``n`` expressions with the lowest J&F, with thumbnails when the dataset is readable
    (the note says why not otherwise)."""
    m = metrics.to_pydict()
    rows = sorted(zip(m["video"], m["exp_id"], m["J"], m["F"], m["J&F"], m["n_frames"]),
                  key=lambda r: (r[4], r[0], r[1]))[:n]
    worst = [Worst(v, x, "", j, f, jf, nf) for v, x, j, f, jf, nf in rows]
    if not worst:
        return worst, ""
    chosen = {(v, x): t for v, x, t in zip(predictions.column("video_id").to_pylist(),
                                           predictions.column("exp_id").to_pylist(),
                                           predictions.column("tracklet_id").to_pylist())}
    try:
        from rvos_ray.data.datasets import open_dataset

        d = cfg.data
        reader = open_dataset(str(d.root), str(d.split), str(d.dataset))
    except Exception as e:  # the report is still useful without pictures
        return worst, f"no thumbnails: dataset not readable here ({type(e).__name__}: {e})"
    note = ""
    for w in worst:
        try:
            exprs = {x.exp_id: x for x in reader.expressions(w.video)}
            expr = exprs.get(w.exp_id)
            w.text = expr.text if expr else ""
            if expr is None or not rd.has_table(w.video, "tracklets"):
                continue
            w.thumb = worst_frame_thumbnail(reader, w.video, expr.obj_ids, rd.read_table(w.video, "tracklets"),
                                            int(chosen.get((w.video, w.exp_id), -1)))
        except Exception as e:
            note = f"some thumbnails missing ({type(e).__name__}: {e})"
    return worst, note


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def _plot_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render(run_dir: str, worst_n: int = 10) -> str:
    """The report of ``run_dir`` as an HTML string."""
    import jinja2
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs

    rd = RunDir(run_dir)
    if not fio.exists(rd.config_path):
        raise FileNotFoundError(f"{rd.config_path}: not a run directory (no config.yaml)")
    config_yaml = fio.read_bytes(rd.config_path).decode()
    cfg = OmegaConf.create(config_yaml)
    summary = _read_json(rd, "summary.json") or {}
    environment = _read_json(rd, ENVIRONMENT_NAME)
    env_note = ""
    if environment is None:
        environment, env_note = env.collect(), "collected when the report was made (no environment.json)"
    events = read_events(rd)
    calls = stage_call_events(events)
    frames_of = frames_per_video(rd, events)
    starts = [float(e["time"]) for e in events if e.get("item") == "run_start" and "time" in e]
    t0 = min(starts + [float(e["start"]) for e in calls]) if (starts or calls) else 0.0
    metrics = _read_split_table(rd, "metrics.parquet", "metrics", METRICS_SCHEMA)
    predictions = _read_split_table(rd, "predictions.parquet", "prediction", PREDICTION_SCHEMA)

    plots: dict[str, Any] = {}
    if calls:
        plots["throughput"] = Markup(_plot_html(figs.throughput_figure(events, frames_of, t0), "plot-throughput"))
        plots["latency"] = Markup(_plot_html(figs.latency_figure(events), "plot-latency"))
        plots["breakdown"] = Markup(_plot_html(figs.breakdown_figure(events), "plot-breakdown"))
    if metrics.num_rows:
        plots["scores"] = Markup(_plot_html(figs.scores_figure(metrics.to_pydict()), "plot-scores"))
    worst, thumb_note = worst_expressions(rd, cfg, metrics, predictions, worst_n)

    cards = [(k, _fmt(summary[k])) for k in ("videos", "done", "skipped", "failed", "expressions") if k in summary]
    if "wall_seconds" in summary:
        cards.append(("wall seconds", f"{summary['wall_seconds']:.1f}"))
    if "compute_seconds" in summary:
        cards.append(("stage compute seconds", f"{summary['compute_seconds']:.1f}"))
    for k in ("J&F", "J", "F"):
        if k in summary:
            cards.append((k, f"{summary[k]:.4f}"))
    env_rows = [(k, v) for k, v in environment.items() if k != "packages"]
    env_rows += [(f"package {k}", v) for k, v in sorted((environment.get("packages") or {}).items())]
    if env_note:
        env_rows.insert(0, ("note", env_note))

    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(PAGE)
    return template.render(
        title=rd.uri, run_dir=rd.uri, executor=summary.get("executor", "?"),
        generated=_dt.datetime.now().isoformat(timespec="seconds"), plotly_js=Markup(get_plotlyjs()),
        cards=cards, failures=summary.get("failures", []), plots=plots,
        stage_rows=figs.throughput_table(events, frames_of), worst=worst, thumbnail_note=thumb_note,
        config_yaml=config_yaml, environment=env_rows, placements=placements(events),
        nodes=sorted((summary.get("nodes") or {}).items()))


def write_report(run_dir: str, out: str | None = None, worst_n: int = 10) -> str:
    """Write the report (default ``<run>/report.html``, atomically); returns its path."""
    html = render(run_dir, worst_n)
    path = out or RunDir(run_dir).path(REPORT_NAME)
    fio.write_bytes(path, html.encode("utf-8"))
    return path


def write_run_report(run_dir: str) -> str | None:
    """Called by the executors when a run finishes: record the environment, write the report.

    A report that cannot be made is logged, never fatal: the run's results are already written."""
    rd = RunDir(run_dir)
    try:
        rd.write_json(ENVIRONMENT_NAME, env.collect())
        return write_report(run_dir)
    except Exception:
        log.exception("could not write the run report of %s (rvos-ray report %s retries)", rd.uri, rd.uri)
        return None
