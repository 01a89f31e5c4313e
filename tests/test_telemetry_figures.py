"""Report figures: throughput, latency and per-video breakdown from hand-made events."""

import pytest

from rvos_ray.telemetry import report_figures as f

EVENTS = [
    {"stage": "driver", "item": "run_start", "video_id": "", "time": 100.0},
    # video a (10 frames): two segmentation calls, the last ends at 103
    {"stage": "segmentation", "model": "htc", "video_id": "a", "start": 100.0, "end": 102.0},
    {"stage": "segmentation", "model": "htc", "video_id": "a", "start": 101.0, "end": 103.0},
    {"stage": "nms", "video_id": "a", "start": 103.0, "end": 103.5},
    # video b (20 frames)
    {"stage": "segmentation", "model": "htc", "video_id": "b", "start": 100.0, "end": 104.5},
    {"stage": "nms", "video_id": "b", "start": 105.0, "end": 105.25},
]
FRAMES = {"a": 10, "b": 20}


def test_stage_completions_use_the_last_call_of_each_video():
    c = f.stage_completions(EVENTS, FRAMES)
    assert c == {"segmentation": [(103.0, 10), (104.5, 20)], "nms": [(103.5, 10), (105.25, 20)]}


def test_throughput_series_bins_frames_and_videos():
    s = f.throughput_series(f.stage_completions(EVENTS, FRAMES), t0=100.0, width=2.0)
    # bins [100,102) [102,104) [104,106): segmentation ends at 103 (10 f) and 104.5 (20 f)
    centres, fps, vps = s["segmentation"]
    assert centres == [1.0, 3.0, 5.0]
    assert fps == [0.0, 5.0, 10.0]
    assert vps == [0.0, 0.5, 0.5]
    assert s["nms"][1] == [0.0, 5.0, 10.0]


@pytest.mark.parametrize("span,width", [(40.0, 1.0), (100.0, 5.0), (0.5, 0.02), (1000.0, 50.0), (0.0, 0.001)])
def test_bin_width_is_1_2_5_times_a_power_of_ten(span, width):
    assert f.bin_width(span) == pytest.approx(width)


def test_throughput_table():
    rows = {r["stage"]: r for r in f.throughput_table(EVENTS, FRAMES)}
    seg = rows["segmentation"]
    assert (seg["calls"], seg["videos"], seg["frames"]) == (3, 2, 30)
    assert seg["busy_s"] == pytest.approx(8.5)
    assert seg["frames_per_busy_s"] == pytest.approx(30 / 8.5)
    assert seg["frames_per_wall_s"] == pytest.approx(30 / 5.25)  # wall: 100 .. 105.25
    assert list(rows) == ["segmentation", "nms"]  # pipeline order


def test_breakdown_sums_call_seconds_per_video_and_stage():
    assert f.breakdown(EVENTS) == {"a": {"segmentation": 4.0, "nms": 0.5}, "b": {"segmentation": 4.5, "nms": 0.25}}


def test_figures_have_one_trace_per_stage():
    thr = f.throughput_figure(EVENTS, FRAMES, 100.0)
    assert {t.name for t in thr.data} == {"segmentation", "nms"}
    lat = f.latency_figure(EVENTS)
    assert [t.name for t in lat.data] == ["segmentation[htc]", "nms"]
    assert sorted(lat.data[0].y) == [2.0, 2.0, 4.5]
    br = f.breakdown_figure(EVENTS)
    assert [t.name for t in br.data] == ["segmentation", "nms"]
    assert list(br.data[0].y) == ["a", "b"]  # slowest (b, 4.75 s) on top = last
    sc = f.scores_figure({"J": [0.5, 1.0], "F": [0.25, 1.0], "J&F": [0.375, 1.0]})
    assert [t.name for t in sc.data] == ["J", "F", "J&F"]
