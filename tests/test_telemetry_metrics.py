"""Telemetry hooks and the no-Ray sink: hand-counted calls, in-flight bookkeeping, modes."""

import threading

import pytest

from rvos_ray.telemetry import metrics as m


def _mem(t: m.Telemetry) -> m.MemorySink:
    sink = t.memory()
    assert sink is not None
    return sink


def test_counts_items_frames_videos_latency_and_failures():
    t = m.Telemetry([m.MemorySink()])
    t.submitted("grounding", 3, variant="bert")
    for seconds in (0.5, 1.5):
        t.stage_started("grounding", variant="bert")
        t.stage_finished("grounding", seconds, variant="bert")
    t.stage_started("grounding", variant="bert")
    t.stage_finished("grounding", 0.25, ok=False, variant="bert")
    t.stage_started("nms")
    t.stage_finished("nms", 0.1, frames=12, videos=1)
    t.video_stage_done("grounding", frames=12)
    s = _mem(t)
    g = m.tags_of("grounding", variant="bert")
    assert s.counters[("submitted", g)] == 3
    assert s.counters[("started", g)] == 3
    assert s.counters[("items", g)] == 2
    assert s.counters[("failures", g)] == 1
    assert s.observations[("latency", g)] == [0.5, 1.5, 0.25]  # failed calls have a latency too
    assert s.gauges[("in_flight", g)] == 0
    assert s.total("frames", "nms") == 12 and s.total("videos", "nms") == 1
    # fan-out stages count videos and frames once per video, without variant/model tags
    assert s.counters[("videos", m.tags_of("grounding"))] == 1
    assert s.counters[("frames", m.tags_of("grounding"))] == 12
    assert s.total("items", "grounding", variant="bert") == 2
    assert s.total("items", "grounding", variant="other") == 0


def test_in_flight_follows_concurrent_calls_and_never_goes_negative():
    t = m.Telemetry([m.MemorySink()])
    tags = m.tags_of("propagation")
    t.stage_started("propagation")
    t.stage_started("propagation")
    assert _mem(t).gauges[("in_flight", tags)] == 2
    t.stage_finished("propagation", 0.1)
    assert _mem(t).gauges[("in_flight", tags)] == 1
    t.stage_finished("propagation", 0.1)
    t.stage_finished("propagation", 0.1)  # a finish without start (e.g. telemetry installed late)
    assert _mem(t).gauges[("in_flight", tags)] == 0


def test_in_flight_is_thread_safe():
    t = m.Telemetry([m.MemorySink()])

    def work():
        for _ in range(500):
            t.stage_started("segmentation", model="htc")
            t.stage_finished("segmentation", 0.0, model="htc")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = _mem(t)
    tags = m.tags_of("segmentation", model="htc")
    assert s.counters[("items", tags)] == 2000
    assert s.gauges[("in_flight", tags)] == 0


def test_retry_attempts_count_as_retries_not_starts():
    t = m.Telemetry([m.MemorySink()])
    t.stage_started("propagation", attempt=0)
    t.stage_started("propagation", attempt=1)
    t.stage_started("propagation", attempt=2)
    s = _mem(t)
    assert s.total("started", "propagation") == 1
    assert s.total("retries", "propagation") == 2


def test_driver_hooks():
    t = m.Telemetry([m.MemorySink()])
    t.video_failed("segmentation")
    t.video_failed("segmentation")
    t.submitted("nms", 0)  # nothing submitted: no series
    s = _mem(t)
    assert s.total("videos_failed", "segmentation") == 2
    assert ("submitted", m.tags_of("nms")) not in s.counters


def test_off_records_nothing_and_modes(monkeypatch):
    off = m.make("off")
    assert not off.enabled and off.memory() is None
    off.stage_started("nms")
    off.stage_finished("nms", 1.0, frames=3, videos=1)
    assert isinstance(m.make("memory").memory(), m.MemorySink)
    monkeypatch.setenv(m.ENV, "memory")
    assert m.make().memory() is not None
    monkeypatch.setenv(m.ENV, "bogus")
    with pytest.raises(ValueError, match="RVOS_TELEMETRY='bogus'"):
        m.make()


def test_current_is_made_once_and_install_replaces_it(monkeypatch):
    monkeypatch.setenv(m.ENV, "memory")
    old = m.install(None)
    try:
        a = m.current()
        assert m.current() is a
        mine = m.Telemetry([])
        assert m.install(mine) is a
        assert m.current() is mine
    finally:
        m.install(old)


def test_prometheus_names():
    assert m.prometheus_name("items") == "ray_rvos_stage_items_total"
    assert m.prometheus_name("in_flight") == "ray_rvos_stage_in_flight"
    assert m.prometheus_name("latency", "_bucket") == "ray_rvos_stage_latency_seconds_bucket"
    assert list(m.LATENCY_BOUNDS) == sorted(m.LATENCY_BOUNDS)


def test_stage_key_and_call_events():
    events = [
        {"stage": "grounding", "variant": "bert", "video_id": "v", "start": 0.0, "end": 1.0},
        {"stage": "segmentation", "model": "htc", "video_id": "v", "start": 0.0, "end": 1.0},
        {"stage": "nms", "video_id": "v", "start": 0.0, "end": 1.0},
        {"stage": "driver", "item": "run_start", "time": 0.0},
    ]
    assert [m.stage_key(e) for e in m.stage_call_events(events)] == ["grounding[bert]", "segmentation[htc]", "nms"]


def test_failed_video_abandons_its_calls_of_later_stages_only():
    order = ("segmentation", "pooling", "propagation", "nms")
    t = m.Telemetry([m.MemorySink()])
    t.submitted("segmentation", 2, video_id="a", model="htc")
    t.submitted("pooling", 1, video_id="a")
    t.submitted("segmentation", 2, video_id="b", model="htc")
    t.submitted("pooling", 1, video_id="b")
    t.video_failed("segmentation", video_id="a", order=order)
    t.video_done("b")
    t.video_failed("pooling", video_id="b", order=order)  # already done: nothing pending
    s = _mem(t)
    assert s.total("abandoned", "pooling") == 1  # video a's pooling call never ran
    assert s.total("abandoned", "segmentation") == 0  # segmentation calls of a did run (and failed)
    assert s.total("videos_failed", "segmentation") == 1 and s.total("videos_failed", "pooling") == 1
    t.video_failed("unknown", video_id="c", order=order)  # an unknown stage abandons nothing
    assert s.total("abandoned") == 1

