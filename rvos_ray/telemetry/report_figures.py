"""The run report's figures (plotly), computed from the run's event log and metrics table.

Every function takes plain Python data (event dicts, column lists) and returns a plotly
``Figure``; :mod:`rvos_ray.telemetry.report` turns them into HTML. Throughput is measured the
way the dashboards measure it: a stage has finished a video when the last of its calls for
that video has ended, and that video's frames count as done at that moment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from rvos_ray.telemetry.metrics import stage_call_events, stage_key

#: pipeline order of stages in the figures (stages not listed follow, by name)
STAGE_ORDER = ("segmentation", "pooling", "propagation", "nms", "grounding", "ensemble", "writer", "scoring")

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=380,
               legend=dict(orientation="h", y=-0.2))


def _go():
    import plotly.graph_objects as go  # plotly is heavy; only the report needs it

    return go


def order_stages(names: Sequence[str]) -> list[str]:
    def key(n: str) -> tuple[int, str]:
        base = n.split("[", 1)[0]
        return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), n)

    return sorted(set(names), key=key)


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------


def stage_completions(events: Sequence[Mapping[str, Any]], frames_of: Mapping[str, int]
                      ) -> dict[str, list[tuple[float, int]]]:
    """stage -> [(time the stage finished a video, that video's frames)], sorted by time."""
    last: dict[tuple[str, str], float] = {}
    for e in stage_call_events(events):
        k = (str(e["stage"]), str(e["video_id"]))
        last[k] = max(last.get(k, -math.inf), float(e["end"]))
    out: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for (stage, vid), t in last.items():
        out[stage].append((t, int(frames_of.get(vid, 0))))
    return {s: sorted(v) for s, v in out.items()}


def bin_width(span: float, bins: int = 40) -> float:
    """A readable bin width (1, 2, 5 x 10^k seconds) giving about ``bins`` bins over ``span``."""
    raw = max(span / max(bins, 1), 1e-3)
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * exp >= raw:
            return m * exp
    return 10 * exp


def throughput_series(completions: Mapping[str, Sequence[tuple[float, int]]], t0: float, width: float
                      ) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """stage -> (bin centres in seconds since ``t0``, frames/s, videos/s) per bin of ``width``."""
    if not completions:
        return {}
    t_end = max(t for v in completions.values() for t, _ in v)
    n = max(int(math.floor((t_end - t0) / width)) + 1, 1)
    out = {}
    for stage, items in completions.items():
        frames, videos = [0.0] * n, [0.0] * n
        for t, f in items:
            i = min(max(int((t - t0) // width), 0), n - 1)
            frames[i] += f
            videos[i] += 1
        centres = [(i + 0.5) * width for i in range(n)]
        out[stage] = (centres, [x / width for x in frames], [x / width for x in videos])
    return out


def throughput_figure(events: Sequence[Mapping[str, Any]], frames_of: Mapping[str, int], t0: float):
    """Frames/s per stage over time (bars binned) and videos finished per stage (cumulative)."""
    go = _go()
    from plotly.subplots import make_subplots

    comp = stage_completions(events, frames_of)
    span = max((t for v in comp.values() for t, _ in v), default=t0) - t0
    width = bin_width(span)
    series = throughput_series(comp, t0, width)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"frames/s per stage ({width:g} s bins)",
                                                        "videos finished per stage (cumulative)"))
    for stage in order_stages(list(series)):
        x, fps, _ = series[stage]
        color = stage_color(stage)
        fig.add_trace(go.Scatter(x=x, y=fps, name=stage, mode="lines", line=dict(shape="hv", color=color),
                                 legendgroup=stage), row=1, col=1)
        times = [t - t0 for t, _ in comp[stage]]
        fig.add_trace(go.Scatter(x=times, y=list(range(1, len(times) + 1)), name=stage, mode="lines+markers",
                                 line=dict(shape="hv", color=color), legendgroup=stage, showlegend=False),
                      row=1, col=2)
    fig.update_xaxes(title_text="seconds since run start")
    fig.update_yaxes(title_text="frames/s", row=1, col=1)
    fig.update_yaxes(title_text="videos", row=1, col=2)
    fig.update_layout(title="Per-stage throughput over time", **_LAYOUT)
    return fig


def throughput_table(events: Sequence[Mapping[str, Any]], frames_of: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per stage: calls, videos, frames, busy seconds (sum of call times) and the stage's rate
    over its busy time and over the run's wall time."""
    calls = stage_call_events(events)
    if not calls:
        return []
    t0 = min(float(e["start"]) for e in calls)
    t1 = max(float(e["end"]) for e in calls)
    wall = max(t1 - t0, 1e-9)
    rows: dict[str, dict[str, Any]] = {}
    seen: dict[str, set[str]] = defaultdict(set)
    for e in calls:
        s = str(e["stage"])
        r = rows.setdefault(s, {"stage": s, "calls": 0, "videos": 0, "frames": 0, "busy_s": 0.0})
        r["calls"] += 1
        r["busy_s"] += float(e["end"]) - float(e["start"])
        if e["video_id"] not in seen[s]:
            seen[s].add(e["video_id"])
            r["videos"] += 1
            r["frames"] += int(frames_of.get(e["video_id"], 0))
    for r in rows.values():
        r["frames_per_busy_s"] = r["frames"] / r["busy_s"] if r["busy_s"] > 0 else 0.0
        r["frames_per_wall_s"] = r["frames"] / wall
        r["videos_per_wall_s"] = r["videos"] / wall
    return [rows[s] for s in order_stages(list(rows))]


# --------------------------------------------------------------------------------------------
# Latency and per-video breakdown
# --------------------------------------------------------------------------------------------


def latency_figure(events: Sequence[Mapping[str, Any]]):
    """Distribution of one call's wall time, per stage (and grounder variant / segmenter model)."""
    go = _go()
    by: dict[str, list[float]] = defaultdict(list)
    for e in stage_call_events(events):
        by[stage_key(e)].append(float(e["end"]) - float(e["start"]))
    fig = go.Figure()
    for k in order_stages(list(by)):
        fig.add_trace(go.Box(y=by[k], name=k, boxpoints="outliers", marker_color=stage_color(k)))
    fig.update_yaxes(title_text="seconds per call", type="log")
    fig.update_layout(title="Latency distribution per stage call", showlegend=False, **_LAYOUT)
    return fig


def breakdown(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """video -> stage -> seconds of stage calls (summed over the stage's calls)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in stage_call_events(events):
        out[str(e["video_id"])][str(e["stage"])] += float(e["end"]) - float(e["start"])
    return {v: dict(s) for v, s in out.items()}


def breakdown_figure(events: Sequence[Mapping[str, Any]], max_videos: int = 60):
    """Stacked bars: seconds per stage for each video (the slowest ``max_videos``)."""
    go = _go()
    b = breakdown(events)
    videos = sorted(b, key=lambda v: -sum(b[v].values()))[:max_videos]
    videos.reverse()  # slowest on top
    stages = order_stages([s for v in b.values() for s in v])
    fig = go.Figure()
    for s in stages:
        fig.add_trace(go.Bar(y=videos, x=[b[v].get(s, 0.0) for v in videos], name=s, orientation="h",
                             marker_color=stage_color(s)))
    title = "Stage time per video" + (f" (slowest {max_videos} of {len(b)})" if len(b) > max_videos else "")
    layout = dict(_LAYOUT)
    layout["height"] = max(300, 40 + 22 * len(videos))
    layout["legend"] = dict(layout["legend"], traceorder="normal")
    fig.update_layout(title=title, barmode="stack", xaxis_title="seconds of stage calls", **layout)
    return fig


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def scores_figure(columns: Mapping[str, Sequence[float]]):
    """Histograms of per-expression J, F and J&F."""
    go = _go()
    fig = go.Figure()
    for i, name in enumerate(("J", "F", "J&F")):
        fig.add_trace(go.Histogram(x=list(columns[name]), name=name, opacity=0.6, marker_color=_color(i),
                                   xbins=dict(start=0.0, end=1.05, size=0.05)))  # [1.0, 1.05) holds 1.0
    fig.update_layout(title="Per-expression J, F and J&F", barmode="overlay", xaxis_title="score",
                      yaxis_title="expressions", **_LAYOUT)
    fig.update_xaxes(range=[0, 1.05])
    return fig


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def stage_color(name: str) -> str:
    """One colour per pipeline stage in every figure (``stage[variant]`` takes its stage's)."""
    base = name.split("[", 1)[0]
    i = STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER) + sum(map(ord, base))
    return _color(i)
