"""The run report's page (jinja2). Everything is inline: plotly.js, styles and PNG thumbnails,
so the file opens anywhere without network access."""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>rvos-ray run report: {{ title }}</title>
<style>
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1280px;
        color: #222; padding: 0 16px; }
 h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
 .sub { color: #666; }
 table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
 th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
 th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
 .cards { display: flex; flex-wrap: wrap; gap: 12px; }
 .card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 120px; background: #fafafa; }
 .card .v { font-size: 1.5em; font-weight: 600; } .card .k { color: #666; font-size: 0.85em; }
 pre { background: #f6f8fa; padding: 10px; overflow: auto; max-height: 480px; font-size: 0.85em; }
 .note { color: #8a6d3b; background: #fcf8e3; padding: 6px 10px; border-radius: 4px; }
 img.thumb { display: block; border: 1px solid #ccc; }
 .legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }
</style>
<script type="text/javascript">{{ plotly_js }}</script>
</head>
<body>
<h1>Run report</h1>
<div class="sub">{{ run_dir }} &middot; {{ executor }} executor &middot; generated {{ generated }}</div>

<h2 id="summary">Summary</h2>
<div class="cards">
{% for k, v in cards %}<div class="card"><div class="v">{{ v }}</div><div class="k">{{ k }}</div></div>
{% endfor %}</div>
{% if failures %}
<h3>Failed videos</h3>
<table id="failures-table"><tr><th>video</th><th>stage</th><th>error</th><th>message</th></tr>
{% for f in failures %}<tr><td>{{ f.video_id }}</td><td>{{ f.stage }}</td><td>{{ f.error }}</td><td>{{ f.message[:300] }}</td></tr>
{% endfor %}</table>
{% endif %}

<h2 id="throughput">Per-stage throughput</h2>
{% if plots.get('throughput') %}{{ plots.get('throughput') }}{% else %}<p class="note">No stage events in this run directory.</p>{% endif %}
<table id="stage-table">
<tr><th>stage</th><th>calls</th><th>videos</th><th>frames</th><th>busy s</th><th>frames / busy s</th>
<th>frames / wall s</th><th>videos / wall s</th></tr>
{% for r in stage_rows %}<tr><td>{{ r.stage }}</td><td class="num">{{ r.calls }}</td><td class="num">{{ r.videos }}</td>
<td class="num">{{ r.frames }}</td><td class="num">{{ "%.2f"|format(r.busy_s) }}</td>
<td class="num">{{ "%.2f"|format(r.frames_per_busy_s) }}</td><td class="num">{{ "%.2f"|format(r.frames_per_wall_s) }}</td>
<td class="num">{{ "%.3f"|format(r.videos_per_wall_s) }}</td></tr>
{% endfor %}</table>

<h2 id="latency">Latency</h2>
{% if plots.get('latency') %}{{ plots.get('latency') }}{% endif %}

<h2 id="breakdown">Stage time per video</h2>
{% if plots.get('breakdown') %}{{ plots.get('breakdown') }}{% endif %}

<h2 id="scores">Scores</h2>
{% if plots.get('scores') %}{{ plots.get('scores') }}
<h3 id="worst">Worst expressions</h3>
<p class="legend">Frame with the lowest IoU of each expression:<span style="background:#00c800"></span>ground truth
<span style="background:#e61e1e"></span>prediction (overlap yellow)</p>
{% if thumbnail_note %}<p class="note">{{ thumbnail_note }}</p>{% endif %}
<table id="worst-expressions">
<tr><th>#</th><th>video</th><th>exp</th><th>expression</th><th>J</th><th>F</th><th>J&amp;F</th><th>frames</th><th>worst frame</th></tr>
{% for w in worst %}<tr><td class="num">{{ loop.index }}</td><td>{{ w.video }}</td><td>{{ w.exp_id }}</td><td>{{ w.text }}</td>
<td class="num">{{ "%.3f"|format(w.J) }}</td><td class="num">{{ "%.3f"|format(w.F) }}</td><td class="num">{{ "%.3f"|format(w.JF) }}</td>
<td class="num">{{ w.n_frames }}</td>
<td>{% if w.thumb %}<img class="thumb" alt="overlay {{ w.video }} {{ w.exp_id }}" src="{{ w.thumb.data_uri }}">
frame {{ w.thumb.frame }}, IoU {{ "%.3f"|format(w.thumb.iou) }}{% else %}&ndash;{% endif %}</td></tr>
{% endfor %}</table>
{% else %}<p class="note">No per-expression metrics (unannotated split, or run.score=false).</p>{% endif %}

<h2 id="config">Config</h2>
<pre id="config-yaml">{{ config_yaml }}</pre>

<h2 id="environment">Environment</h2>
<table id="environment-table">
{% for k, v in environment %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>
{% if placements %}<h3>Actors</h3>
<table id="placements-table"><tr><th>stage</th><th>name</th><th>host</th><th>node</th><th>pid</th><th>resources</th><th>GPUs</th></tr>
{% for p in placements %}<tr><td>{{ p.stage }}</td><td>{{ p.name }}</td><td>{{ p.host }}</td><td>{{ p.node_id[:12] }}</td>
<td class="num">{{ p.pid }}</td><td>{{ p.resources }}</td><td>{{ p.gpu_ids }}</td></tr>
{% endfor %}</table>{% endif %}
{% if nodes %}<h3>Work per node</h3>
<table id="nodes-table"><tr><th>node</th><th>actors</th><th>calls</th><th>seconds</th><th>by stage (calls, s)</th></tr>
{% for n, d in nodes %}<tr><td>{{ n[:12] }}</td><td>{{ d.actors | join(", ") }}</td><td class="num">{{ d.calls }}</td>
<td class="num">{{ "%.1f" % d.seconds }}</td><td>{% for s, v in d.stages.items() %}{{ s }} {{ v.calls }}, {{ "%.1f" % v.seconds }}{% if not loop.last %}; {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>{% endif %}
</body>
</html>
"""
