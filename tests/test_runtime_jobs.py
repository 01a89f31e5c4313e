"""The entry points for real: `rvos-ray run` killed mid-run and resumed, and jobs/evaluate.py
submitted with `ray job submit --working-dir .` to a head started by cluster/start_local.sh.

Both start their own Ray (a driver's local Ray; a standalone head on free 127.0.0.1 ports) and
stop exactly the processes they started, by process group.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from _runtime_support import REPO, VIDEOS, assert_same_results, free_ports, make_data, tiny_cfg, write_test_config
from rvos_ray.runtime.local_exec import run_local
from rvos_ray.runtime.run_dir import RunDir

pytestmark = [pytest.mark.ray, pytest.mark.slow]

VENV_BIN = REPO / ".venv" / "bin"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """tiny.yaml with one segmentation model and one grounder variant: three actor processes
    per Ray, which is what these tests can afford to start twice."""
    return write_test_config(tmp_path_factory.mktemp("config") / "tiny-1x1.yaml", models=1, variants=1)


@pytest.fixture(scope="module")
def reference(data, config, tmp_path_factory):
    run = tmp_path_factory.mktemp("local") / "run"
    run_local(tiny_cfg(data, run, config=config), progress=False)
    return run


def _env(**extra):
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30.0) -> None:
    """Signal the process group this test started (by its id), then make sure it is gone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_cmd(config, data, run):
    return [sys.executable, "-m", "rvos_ray.cli", "run", "--config", str(config),
            f"data.root={data}", f"run.dir={run}", "ray.max_videos_in_flight=1", "--no-progress"]


def test_driver_killed_mid_run_then_rerun_skips_finished_videos(config, data, reference, tmp_path):
    run = tmp_path / "run"
    rd = RunDir(str(run))
    proc = subprocess.Popen(_run_cmd(config, data, run), cwd=REPO, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not rd.done_videos():
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-3000:]}"
        assert rd.done_videos(), "no video finished in time"
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies without any cleanup
        proc.wait(timeout=30)
    finally:
        _stop_group(proc, signal.SIGKILL)  # the local Ray it started
    finished = rd.done_videos()
    assert 1 <= len(finished) < VIDEOS

    again = subprocess.run(_run_cmd(config, data, run), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped"] == len(finished)
    assert summary["done"] == VIDEOS - len(finished)
    assert summary["failed"] == 0
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == len(finished)
    assert_same_results(reference, run)


def _ray_cli(env, *args, timeout=120):
    """The `ray` CLI in a fresh process (it reads the auth token and mode from env / ~/.ray)."""
    return subprocess.run([str(VENV_BIN / "ray"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _job_status(env, address, sid) -> str:
    """SUCCEEDED / FAILED / STOPPED / PENDING / RUNNING, from `ray job status` (which words the
    final states as sentences), or UNKNOWN when the server did not answer."""
    r = _ray_cli(env, "job", "status", "--address", address, sid)
    text = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
    for pattern, status in ((r"Job '[^']*' succeeded", "SUCCEEDED"), (r"Job '[^']*' failed", "FAILED"),
                            (r"Job '[^']*' was stopped", "STOPPED")):
        if re.search(pattern, text):
            return status
    m = re.search(r"Status for job '[^']*': (\w+)", text)
    return m.group(1) if m else "UNKNOWN"


def test_job_submission_to_a_local_head(config, data, reference, tmp_path):
    gcs, dash, client, agent = free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = _env(RAY_PORT=str(gcs), RAY_DASHBOARD_PORT=str(dash), RAY_CLIENT_PORT=str(client),
               RAY_AGENT_PORT=str(agent), RAY_NUM_CPUS="4", RAY_TEMP_DIR=temp_dir,
               RVOS_RESOURCES='{"seg": 2, "prop": 2, "gnd": 8}')
    head = subprocess.Popen(["bash", str(REPO / "cluster" / "start_local.sh"), "--block"], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"http://127.0.0.1:{dash}"
    run = tmp_path / "run"
    try:
        deadline = time.time() + 180
        while _ray_cli(env, "job", "list", "--address", address).returncode != 0:
            assert head.poll() is None, f"ray start failed: {head.stderr.read().decode()[-3000:]}"
            assert time.time() < deadline, "the head's job server did not come up in 180 s"
            time.sleep(2.0)
        sid = f"rvos-test-{os.getpid()}-{int(time.time())}"
        excludes = {"excludes": [".venv", "runs", "data", ".git", "**/__pycache__", ".pytest_cache"]}
        # The head's job agent registers a little after the job server answers, and a busy
        # machine can drop a request: retry those; a retry of a submission that did get through
        # finds the job already there.
        transient = ("No available agent", "ConnectionError", "Remote end closed", "Read timed out")
        while True:
            submit = _ray_cli(
                env, "job", "submit", "--address", address, "--submission-id", sid,
                "--working-dir", ".", "--runtime-env-json", json.dumps(excludes), "--no-wait", "--",
                "python", "jobs/evaluate.py", "--config", str(config),
                f"data.root={data}", f"run.dir={run}", "--no-progress")
            if submit.returncode == 0 or "already exists" in submit.stderr:
                break
            assert any(t in submit.stderr for t in transient) and time.time() < deadline, \
                submit.stdout[-2000:] + submit.stderr[-3000:]
            time.sleep(3.0)
        deadline = time.time() + 480
        status = _job_status(env, address, sid)
        while status not in ("SUCCEEDED", "FAILED", "STOPPED") and time.time() < deadline:
            time.sleep(3.0)
            status = _job_status(env, address, sid)
        logs = _ray_cli(env, "job", "logs", "--address", address, sid).stdout
        assert status == "SUCCEEDED", f"job {sid} is {status}:\n{logs[-4000:]}"
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["done"], summary["failed"], summary["executor"]) == (VIDEOS, 0, "ray")
        last = [line for line in logs.splitlines() if line.startswith("{")][-1]  # the driver's JSON line
        assert json.loads(last)["done"] == VIDEOS
        assert (run / "submission.zip").is_file()
        assert_same_results(reference, run)
    finally:
        _stop_group(head, signal.SIGTERM)
