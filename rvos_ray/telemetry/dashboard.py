"""The Grafana dashboard of the per-stage metrics, built as code with grafana-foundation-sdk.

``python -m rvos_ray.telemetry.dashboard`` regenerates ``dashboards/rvos_ray_stages.json``
(committed; a test checks it equals a fresh generation). Panels: per-stage throughput in
frames/s and videos/s, stage calls/s per model and variant, latency p50/p95, queue depth and
calls in flight, failures / retries / videos given up, and Ray's own node CPU, memory, GPU and
GPU-memory metrics. Metric names come from :data:`rvos_ray.telemetry.metrics.METRICS`, so
the dashboard and the recorder cannot drift apart.

Variables: ``datasource`` (a Prometheus), ``SessionName`` (one Ray session, like Ray's own
dashboards) and ``stage`` (multi-select).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvos_ray.telemetry.metrics import prometheus_name as pn

UID = "rvos-ray-stages"
TITLE = "rvos-ray: per-stage throughput"
OUT = Path(__file__).resolve().parents[2] / "dashboards" / "rvos_ray_stages.json"

#: label filters of the stage metrics and of Ray's node metrics
STAGE_FILTER = '{stage=~"$stage",SessionName=~"$SessionName"}'
NODE_FILTER = '{SessionName=~"$SessionName"}'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    per_stage: bool = True  # every query returns one series (at least) per stage
    gpu: bool = False  # needs a node with GPUs to return data


def _rate(key: str, by: str = "stage", suffix: str = "") -> str:
    return f"sum by ({by}) (rate({pn(key, suffix)}{STAGE_FILTER}[$__rate_interval]))"


def _total_or_zero(key: str, active: str) -> str:
    """The counter's total per stage, 0 for stages active (``active`` exported) without any:
    Ray cannot create a counter at 0, so a stage that never failed has no failure series."""
    return (f"sum by (stage) ({pn(key)}{STAGE_FILTER}) or "
            f"(0 * sum by (stage) ({pn(active)}{STAGE_FILTER}))")


def _quantile(q: float) -> str:
    return (f"histogram_quantile({q}, sum by (stage, le) "
            f"(rate({pn('latency', '_bucket')}{STAGE_FILTER}[$__rate_interval])))")


ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    ("Per-stage throughput", (
        PanelSpec("Frames/s per stage",
                  "Video frames per second whose stage finished (a video's frames count when the stage "
                  "finished its last call for that video).",
                  "suffix: frames/s", (Query(_rate("frames"), "{{stage}}"),)),
        PanelSpec("Videos/s per stage", "Videos per second for which the stage finished.",
                  "suffix: videos/s", (Query(_rate("videos"), "{{stage}}"),)),
        PanelSpec("Stage calls/s per model and variant",
                  "Finished stage calls per second; segmentation per model, grounding per group of variants sharing encoders.",
                  "suffix: calls/s",
                  (Query(_rate("items", "stage, variant, model"), "{{stage}} {{model}}{{variant}}"),)),
    )),
    ("Latency", (
        PanelSpec("Stage call latency p50", "Median wall time of one stage call (from the histogram).", "s",
                  (Query(_quantile(0.5), "{{stage}} p50"),)),
        PanelSpec("Stage call latency p95", "95th percentile wall time of one stage call.", "s",
                  (Query(_quantile(0.95), "{{stage}} p95"),)),
    )),
    ("Queues", (
        PanelSpec("Queue depth", "Stage calls submitted by the driver and not started yet "
                  "(submitted - started - abandoned after an earlier stage of their video failed; "
                  "Ray executor).", "short",
                  (Query(f"sum by (stage) ({pn('submitted')}{STAGE_FILTER}) - "
                         f"({_total_or_zero('started', 'submitted')}) - "
                         f"({_total_or_zero('abandoned', 'submitted')})", "{{stage}} queued"),)),
        PanelSpec("Calls in flight", "Stage calls running now, over all workers.", "short",
                  (Query(f"sum by (stage) ({pn('in_flight')}{STAGE_FILTER})", "{{stage}} running"),)),
    )),
    ("Failures", (
        PanelSpec("Failures, retries and videos given up",
                  "Totals in the Ray session: stage calls that raised, calls re-run after their worker "
                  "died, and videos given up (failure record written).", "short",
                  (Query(_total_or_zero("failures", "started"), "{{stage}} failed calls"),
                   Query(_total_or_zero("retries", "started"), "{{stage}} retries"),
                   Query(_total_or_zero("videos_failed", "started"), "{{stage}} videos given up"))),
    )),
    ("Ray cluster", (
        PanelSpec("Node CPU utilization", "Ray's node metrics: CPU utilization per node.", "percent",
                  (Query(f"sum by (instance) (ray_node_cpu_utilization{NODE_FILTER})", "{{instance}}"),),
                  per_stage=False),
        PanelSpec("Node memory", "Ray's node metrics: memory used and total per node.", "bytes",
                  (Query(f"sum by (instance) (ray_node_mem_used{NODE_FILTER})", "{{instance}} used"),
                   Query(f"sum by (instance) (ray_node_mem_total{NODE_FILTER})", "{{instance}} total")),
                  per_stage=False),
        PanelSpec("GPU utilization", "Ray's node metrics: utilization per GPU.", "percent",
                  (Query(f"sum by (instance, GpuIndex, GpuDeviceName) (ray_node_gpus_utilization{NODE_FILTER})",
                         "{{instance}} GPU {{GpuIndex}} {{GpuDeviceName}}"),),
                  per_stage=False, gpu=True),
        PanelSpec("GPU memory used", "Ray's node metrics: memory used per GPU.", "bytes",
                  (Query(f"sum by (instance, GpuIndex, GpuDeviceName) (ray_node_gram_used{NODE_FILTER}) * 1024 * 1024",
                         "{{instance}} GPU {{GpuIndex}}"),),
                  per_stage=False, gpu=True),
    )),
)


def panel_specs() -> list[PanelSpec]:
    return [p for _, panels in ROWS for p in panels]


def build() -> dict[str, Any]:
    """The dashboard as the JSON object Grafana imports."""
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus as prom
    from grafana_foundation_sdk.builders import timeseries as ts
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

    ds = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
    d = (db.Dashboard(TITLE).uid(UID).tags(["rvos-ray", "ray"]).refresh("10s").time("now-30m", "now")
         .timezone("browser").editable().tooltip(dm.DashboardCursorSync.CROSSHAIR)
         .description("Per-stage metrics of rvos-ray (ray.util.metrics, exported by Ray's metrics agent)"))
    d = d.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    d = d.with_variable(
        db.QueryVariable("SessionName").label("Ray session").datasource(ds)
        .query(f"label_values({pn('items')}, SessionName)").refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_DESC).include_all(True).all_value(".*"))
    d = d.with_variable(
        db.QueryVariable("stage").label("Stage").datasource(ds).query(f"label_values({pn('items')}, stage)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*"))
    ids = iter(range(1, 1000))
    for title, panels in ROWS:
        d = d.with_row(db.Row(title).id(next(ids)))
        width = 24 // len(panels) if len(panels) > 1 else 24
        width = max(width, 8)
        for spec in panels:
            p = (ts.Panel().id(next(ids)).title(spec.title).description(spec.description).unit(spec.unit)
                 .datasource(ds).height(8).span(width).line_width(1).fill_opacity(10).min(0)
                 .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                         .placement(cm.LegendPlacement.BOTTOM).show_legend(True)))
            for i, q in enumerate(spec.queries):
                p = p.with_target(prom.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(65 + i))
                                  .datasource(ds).range())
            d = d.with_panel(p)
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


def render() -> str:
    """The dashboard JSON text as committed (sorted keys, 2-space indent, final newline)."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def queries(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Prometheus query of a dashboard JSON: ``{"panel", "expr", "legend"}``."""
    out = []
    for panel in dashboard.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for t in inner.get("targets", []) or []:
                if "expr" in t:
                    out.append({"panel": inner.get("title", ""), "expr": t["expr"], "legend": t.get("legendFormat", "")})
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard JSON (default ``dashboards/rvos_ray_stages.json``)."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(render())
    tmp.replace(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
