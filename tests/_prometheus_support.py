"""A real Prometheus for the tests: started on 127.0.0.1 with the project's scrape config
(``dashboards/prometheus.yml``) pointed at a test Ray's service-discovery file, and queried
through its HTTP API."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
SKIP_REASON = "prometheus binary not found (Debian: apt-get install -y prometheus)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """One Prometheus process; ``stop()`` ends it."""

    def __init__(self, sd_file: Path, workdir: Path, scrape_interval: str = "2s") -> None:
        cfg = yaml.safe_load((REPO / "dashboards" / "prometheus.yml").read_text())
        cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = scrape_interval
        # Ray's endpoint serves a few hundred kB; on a loaded machine a 1 s scrape times out
        cfg["global"]["scrape_timeout"] = scrape_interval
        (job,) = cfg["scrape_configs"]
        job["file_sd_configs"][0]["files"] = [str(sd_file)]  # this Ray's file, not /tmp/ray's
        job["file_sd_configs"][0]["refresh_interval"] = "1s"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError("prometheus not ready")

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")["result"]

    def targets_up(self) -> int:
        return sum(1 for t in self.api("targets")["activeTargets"] if t.get("health") == "up")

    def wait_for(self, expr: str, predicate, timeout: float = 60.0) -> list[dict]:
        """Poll an instant query until ``predicate(result)``; returns the result."""
        deadline = time.time() + timeout
        result: list[dict] = []
        while time.time() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(1.0)
        raise TimeoutError(f"{expr}: still {result} after {timeout:.0f}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def concrete(expr: str, session: str, rate_interval: str = "20s") -> str:
    """A dashboard expression with Grafana's variables replaced: this Ray ``session`` (other
    Rays on the machine may share a port Ray's service discovery lists), every stage, and
    ``$__rate_interval`` as given."""
    return (expr.replace("$__rate_interval", rate_interval).replace('"$stage"', '".*"')
            .replace('"$SessionName"', f'"{session}"'))


def values_by(result: list[dict], label: str) -> dict[str, list[float]]:
    """label value -> every sample value (NaN included) of the series with that label."""
    out: dict[str, list[float]] = {}
    for series in result:
        key = series["metric"].get(label, "")
        samples = series.get("values") or [series["value"]]
        out.setdefault(key, []).extend(float(v) for _, v in samples)
    return out


def finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v) and not math.isinf(v)]
