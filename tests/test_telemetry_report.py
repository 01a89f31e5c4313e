"""The HTML run report from a hand-made run directory (known IoUs), and the report command."""

import re

import pytest

from _telemetry_support import STAGES, make_run
from rvos_ray.cli import main as cli_main
from rvos_ray.telemetry.report import render, write_report


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def test_report_has_every_section_and_no_network_reference(made):
    html = render(str(made["run"]))
    for div in ("plot-throughput", "plot-latency", "plot-breakdown", "plot-scores"):
        assert f'id="{div}"' in html, div
    for table in ("stage-table", "worst-expressions", "environment-table", "config-yaml"):
        assert f'id="{table}"' in html, table
    # plotly.js is inlined, and nothing is fetched from elsewhere
    assert "Plotly" in html and len(html) > 1_000_000
    assert not re.search(r'<script[^>]+src=', html)
    assert not re.search(r'<link[^>]+href=["\']https?:', html)
    # every stage of the events is a row of the stage table, in pipeline order
    table = html.split('id="stage-table"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<tr><td>(\w+)</td>", table) == list(STAGES)
    # environment: collected at report time (no environment.json in the hand-made run)
    assert "collected when the report was made" in html


def test_worst_expressions_are_sorted_with_thumbnails_and_ious(made):
    html = render(str(made["run"]), worst_n=50)
    table = html.split('id="worst-expressions"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>([^<]+)</td><td>([^<]+)</td>", table)
    expected = made["expected"]
    assert len(rows) == len(expected)
    js = [expected[(v, x)] for _, v, x in rows]
    assert js == sorted(js)  # worst first
    # each row's thumbnail names the worst frame's IoU: 0 for a wrong tracklet, 1 for the GT one
    ious = [float(x) for x in re.findall(r"IoU ([0-9.]+)</td>", table)]
    assert ious == js
    assert table.count('src="data:image/png;base64,') == len(expected)


def test_report_command_writes_the_file(made, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli_main(["report", str(made["run"]), "--out", str(out), "--worst", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert text.count('class="thumb"') == 2


def test_report_of_a_folder_that_is_no_run_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "not a run directory (no config.yaml)" in capsys.readouterr().err


def test_default_location_is_inside_the_run(made):
    path = write_report(str(made["run"]))
    assert path.endswith("/report.html") and (made["run"] / "report.html").stat().st_size > 1_000_000
