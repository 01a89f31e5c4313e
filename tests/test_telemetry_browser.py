"""The run report renders in headless Chromium with name resolution disabled (nothing may
come from the network): the plots are drawn by the inlined plotly.js, the tables and
thumbnails are there, and a screenshot is not blank."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from _telemetry_support import make_run
from rvos_ray.telemetry.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")

PLOTS = ("plot-throughput", "plot-latency", "plot-breakdown", "plot-scores")


def chromium(profile, *args, timeout=120):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}",
             # any host name fails to resolve: a page that needs the network cannot render
             "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    made = make_run(tmp_path_factory.mktemp("browser"))
    return made, write_report(str(made["run"]))


def test_dom_has_rendered_plots_tables_and_thumbnails(report, tmp_path):
    made, path = report
    out = chromium(tmp_path / "profile", "--dump-dom", f"file://{path}")
    dom = out.stdout.decode("utf-8", "replace")
    assert dom.startswith("<html") or "<body" in dom, out.stderr.decode()[-2000:]
    for plot in PLOTS:
        # plotly.js turned the placeholder div into SVG: the script ran, offline
        m = re.search(rf'<div id="{plot}"[^>]*class="[^"]*js-plotly-plot', dom)
        assert m, f"{plot} not rendered by plotly.js"
        body = dom[m.end():m.end() + 200_000]
        assert 'class="main-svg"' in body, plot
    # one line per stage in the throughput plot's legend
    assert dom.count('class="legendtext"') >= 7
    worst = dom.split('id="worst-expressions"', 1)[1].split("</table>", 1)[0]
    assert worst.count("<img") == min(10, len(made["expected"]))
    assert re.search(r'id="stage-table".*?<td>segmentation</td>', dom, re.S)
    assert 'id="environment-table"' in dom and 'id="config-yaml"' in dom


@pytest.mark.slow
def test_screenshot_is_not_blank(report, tmp_path):
    _, path = report
    shot = tmp_path / "shot.png"
    out = chromium(tmp_path / "profile", "--window-size=1280,2400", f"--screenshot={shot}", f"file://{path}")
    assert shot.exists(), out.stderr.decode()[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1280)
    non_white = (img < 245).any(axis=2).mean()
    colors = len(np.unique(img.reshape(-1, 3), axis=0))
    assert non_white > 0.03, f"only {non_white:.1%} of the page is not white"
    assert colors > 200, f"only {colors} colours: plots and thumbnails missing?"
    # the plot area (throughput plot, below the summary cards) has coloured trace pixels
    plot_band = img[400:800]
    saturated = (plot_band.max(axis=2).astype(int) - plot_band.min(axis=2)) > 60
    assert saturated.mean() > 0.001
