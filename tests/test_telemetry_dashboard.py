"""The committed Grafana dashboard is what the code generates, its queries use the recorded
metric names, and the Prometheus config reads Ray's service-discovery file."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rvos_ray.telemetry import dashboard as d
from rvos_ray.telemetry.metrics import METRICS, prometheus_name

REPO = Path(__file__).resolve().parents[1]
PROM_CONFIG = REPO / "dashboards" / "prometheus.yml"


def test_committed_json_equals_a_fresh_generation():
    assert d.OUT.read_text() == d.render(), "run: python -m rvos_ray.telemetry.dashboard"


def test_queries_use_recorded_metrics_and_group_by_stage():
    board = json.loads(d.OUT.read_text())
    queries = d.queries(board)
    specs = {q.expr: s for s in d.panel_specs() for q in s.queries}
    assert [q["expr"] for q in queries] == list(specs)  # every panel's every query, in order
    ours = {prometheus_name(k, sfx) for k in METRICS for sfx in ("", "_bucket")}
    used = set()
    for q in queries:
        names = set(re.findall(r"\b(ray_[a-z_]+)\{", q["expr"]))
        assert names, q
        if specs[q["expr"]].per_stage:
            assert names <= ours, names - ours
            assert "by (stage" in q["expr"] and "{{stage}}" in q["legend"]
        else:
            assert all(n.startswith("ray_node_") for n in names)
        used |= names
    # every metric the telemetry records is on the dashboard
    for key in METRICS:
        sfx = "_bucket" if METRICS[key].kind == "histogram" else ""
        assert prometheus_name(key, sfx) in used, key
    titles = [p["title"] for p in board["panels"]]
    for t in ("Frames/s per stage", "Videos/s per stage", "Stage call latency p50", "Stage call latency p95",
              "Queue depth", "Failures, retries and videos given up", "Node CPU utilization", "GPU utilization"):
        assert t in titles
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "SessionName", "stage"}


def test_prometheus_config_reads_rays_service_discovery_file():
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    (job,) = cfg["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install -y prometheus)")
def test_promtool_accepts_the_config():
    out = subprocess.run(["promtool", "check", "config", str(PROM_CONFIG)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
