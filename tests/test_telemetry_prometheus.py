"""Live metrics end to end: a real Prometheus, started with the project's scrape config on Ray's
service-discovery file, scrapes a local Ray while the Ray executor runs the tiny pipeline on a
synthetic split (one video with unreadable frames); then every PromQL expression of the
committed Grafana dashboard returns data for every stage, and the totals match the run.

One Ray, one Prometheus and one run serve every test of the module (1-3 minutes, most of it
Ray starting and the actors building their models).
"""

import json
import os

# Ray reads its authentication mode when imported: token, as `rvos-ray run` uses for a local Ray
# (Prometheus scrapes the metrics endpoint without the token)
os.environ.setdefault("RAY_AUTH_MODE", "token")
# A Ray with its dashboard starts slowly on a loaded machine (Ray's default wait is 60 s)
os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from _prometheus_support import PROMETHEUS, SKIP_REASON, Prometheus, concrete, finite, free_port, values_by

ray = pytest.importorskip("ray")

from rvos_ray.config import load_config  # noqa: E402
from rvos_ray.data.synthetic import make_shapes  # noqa: E402
from rvos_ray.runtime import graph  # noqa: E402
from rvos_ray.runtime.pipeline import STAGES  # noqa: E402
from rvos_ray.runtime.ray_exec import RayExecutor  # noqa: E402
from rvos_ray.runtime.ray_session import LOCAL_ENV  # noqa: E402
from rvos_ray.telemetry import dashboard  # noqa: E402
from rvos_ray.telemetry import metrics as tm  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON)]

REPO = Path(__file__).resolve().parents[1]
VIDEOS = 3  # one of them unreadable


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom")
    data = tmp / "shapes"
    make_shapes(str(data), videos=VIDEOS, seed=0, height=64, width=96, min_frames=6, max_frames=8)
    bad = sorted((data / "valid" / "JPEGImages").iterdir())[0]
    for f in bad.iterdir():
        f.write_bytes(b"this is not a JPEG")
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    # Ray's socket paths must stay short; its dashboard writes the service-discovery file there
    # an earlier test in this process may have installed its own telemetry: start from auto
    tm.install(None)
    ray_tmp = tempfile.mkdtemp(prefix="rvt", dir="/tmp")
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
             _metrics_export_port=free_port(), _node_ip_address="127.0.0.1", _temp_dir=ray_tmp,
             log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 1000, "agent_register_timeout_ms": 300_000})
    assert any(isinstance(x, tm.RaySink) for x in tm.current().sinks)  # connected: records to Ray
    prom = None
    try:
        sd = Path(ray_tmp) / "prom_metrics_service_discovery.json"
        deadline = time.time() + 60
        while not sd.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert sd.exists(), f"Ray wrote no {sd}"
        prom = Prometheus(sd, tmp / "prometheus")
        prom.wait_for("up", lambda r: any(s["value"][1] == "1" for s in r), timeout=60)
        # one video at a time: a counter's series appears at its first increment (Ray cannot
        # create one at 0), so rate() sees a stage's throughput only once a later video adds
        # to it in a later scrape; two videos in flight finished their stages within one
        # scrape interval and left every rate at 0 (seen once, under load)
        cfg = load_config(REPO / "configs" / "tiny.yaml", [
            f"data.root={data}", f"run.dir={tmp / 'run'}", "ray.max_videos_in_flight=1",
            *(f"{s}.resources.num_cpus=0.5" for s in ("segmentation", "propagation", "grounding", "tasks"))])
        t0 = time.time()
        summary = RayExecutor(cfg).run(progress=False)
        t1 = time.time()
        done = summary["done"]
        # every worker's final counts have reached Prometheus
        session = ray.get_runtime_context().get_session_name()
        prom.wait_for(f'sum({tm.prometheus_name("videos")}{{stage="writer",SessionName="{session}"}})',
                      lambda r: done == 0 or (bool(r) and float(r[0]["value"][1]) == done), timeout=60)
        time.sleep(3)  # one more scrape of every series
        events = [json.loads(x) for x in (tmp / "run" / "events.jsonl").read_text().splitlines()]
        stages = {e["stage"] for e in tm.stage_call_events(events)}
        yield {"prom": prom, "t0": t0, "t1": t1, "summary": summary, "run": tmp / "run", "bad": bad.name,
               "gpus": ray.cluster_resources().get("GPU", 0), "stages": stages, "variants": cfg.grounding.variants,
               "session": ray.get_runtime_context().get_session_name()}
    finally:
        if prom is not None:
            prom.stop()
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not any(isinstance(x, tm.RaySink) for x in tm.current().sinks)  # disconnected: no Ray sink


def _board_queries():
    board = json.loads(dashboard.OUT.read_text())
    specs = {q.expr: s for s in dashboard.panel_specs() for q in s.queries}
    return [(q, specs[q["expr"]]) for q in dashboard.queries(board)]


def test_the_run_had_a_failure_and_finished_the_rest(live):
    s = live["summary"]
    assert (s["done"], s["failed"]) == (VIDEOS - 1, 1)
    assert s["failures"][0]["video_id"] == live["bad"]
    # every pipeline stage ran (grounding only where the config has grounder variants)
    assert live["stages"] == set(STAGES) - (set() if live["variants"] else {"grounding"})


def test_every_dashboard_query_returns_data_for_every_stage(live):
    prom, t0 = live["prom"], live["t0"]
    end = time.time()
    checked = 0
    for q, spec in _board_queries():
        if not spec.per_stage:
            continue
        result = prom.query_range(concrete(q["expr"], live["session"]), t0 - 5, end, step=1)
        by_stage = values_by(result, "stage")
        missing = [s for s in sorted(live["stages"]) if not by_stage.get(s)]
        assert not missing, f"{spec.title}: no data for {missing}\n{q['expr']}"
        checked += 1
        if "rate(" in q["expr"] and "histogram_quantile" not in q["expr"]:
            # throughput: some stage ran at a positive rate (first increments of a new series
            # are invisible to rate(), so not every stage of a 3-video run needs to)
            assert max(max(finite(v), default=0) for v in by_stage.values()) > 0, spec.title
        if "histogram_quantile" in q["expr"]:
            lat = {s: finite(v) for s, v in by_stage.items()}
            assert any(lat.values()), f"{spec.title}: all NaN"
            assert all(x > 0 for v in lat.values() for x in v)
    assert checked == sum(1 for _, s in _board_queries() if s.per_stage)


def test_ray_node_panels(live):
    prom, t0 = live["prom"], live["t0"]
    for q, spec in _board_queries():
        if spec.per_stage:
            continue
        result = prom.query_range(concrete(q["expr"], live["session"]), t0 - 5, time.time(), step=1)
        if spec.gpu and not live["gpus"]:
            assert result == [], spec.title  # valid query; a node without GPUs exports no GPU metrics
            continue
        assert result and all(finite([float(v) for _, v in s["values"]]) for s in result), spec.title


def _range(live, expr):
    """``expr`` over the whole run, one sample a second (a scrape that timed out on a loaded
    machine leaves a gap in an instant query, not in this)."""
    return live["prom"].query_range(expr, live["t0"] - 5, time.time(), step=1)


def _sum_by(live, key, by="stage"):
    return _range(live, f'sum by ({by}) ({tm.prometheus_name(key)}{{SessionName="{live["session"]}"}})')


def _totals(live, key):
    """stage -> a counter's total (its largest value: counters only grow)."""
    return {s: max(finite(v)) for s, v in values_by(_sum_by(live, key), "stage").items()}


def test_totals_match_the_run(live):
    prom, s, run = live["prom"], live["summary"], live["run"]
    done = s["done"]
    frames = sum(json.loads((run / "videos" / v / "done.json").read_text())["frames"]
                 for v in os.listdir(run / "videos") if (run / "videos" / v / "done.json").exists())
    videos, frame_totals = _totals(live, "videos"), _totals(live, "frames")
    for stage in STAGES:
        assert videos.get(stage) == done, (stage, videos)
        assert frame_totals.get(stage) == frames, (stage, frame_totals)
    # the unreadable video: its segmentation calls raised, the video was given up there, and
    # its pooling call never ran
    failed_stage = s["failures"][0]["stage"]
    assert failed_stage == "segmentation"
    assert _totals(live, "failures").get("segmentation", 0) >= 1
    assert _totals(live, "videos_failed") == {"segmentation": 1}
    assert _totals(live, "abandoned") == {"pooling": 1}
    # nothing is left queued or running
    queue = [q for q, spec in _board_queries() if spec.title == "Queue depth"][0]
    depth = values_by(_range(live, concrete(queue["expr"], live["session"])), "stage")
    assert {st: v[-1] for st, v in depth.items()} == {st: 0.0 for st in live["stages"]}
    # calls in flight: whole numbers, at most what the actors and task slots allow, and some
    # call was seen running (Ray exports a gauge only while it is being set, so an idle
    # stage's series ages out instead of staying at 0)
    in_flight = [x for v in values_by(_sum_by(live, "in_flight"), "stage").values() for x in finite(v)]
    assert all(x == int(x) and 0 <= x <= 8 for x in in_flight) and max(in_flight) >= 1
    # grounding calls per variant group, segmentation calls per model
    items = _sum_by(live, "items", "stage, variant, model")
    variants = {r["metric"].get("variant") for r in items if r["metric"]["stage"] == "grounding"}
    models = {r["metric"].get("model") for r in items if r["metric"]["stage"] == "segmentation"}
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # (a grounding call runs a group of variants that share encoders, tagged with its name)
    assert variants == set(graph.group_names(cfg))
    assert models == {m["name"] for m in cfg["segmentation"]["models"]}


def test_run_wrote_its_report_and_event_log_with_tags(live):
    run = live["run"]
    html = (run / "report.html").read_text()
    for div in ("plot-throughput", "plot-latency", "plot-breakdown", "plot-scores"):
        assert f'id="{div}"' in html
    assert json.loads((run / "environment.json").read_text())["packages"]["ray"] == ray.__version__
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    calls = tm.stage_call_events(events)
    assert {e["stage"] for e in calls} == live["stages"]
    assert all(e.get("model") for e in calls if e["stage"] == "segmentation")
    assert all(e.get("variant") for e in calls if e["stage"] == "grounding")
    assert {e["completes"] for e in calls if "completes" in e} == {"segmentation", "propagation", "grounding"}
