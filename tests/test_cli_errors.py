"""What the command line says when something is wrong: one clear message and exit 2 for input,
config and placement errors (``--debug``: the traceback), exit 1 with ``--fail-on-error`` when a
video failed, and the way to a failed video's traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _runtime_support import REPO, copy_data, corrupt_video, make_data, write_test_config


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


def _cli(*args: str, entry: tuple[str, ...] = ("-m", "rvos_ray"), timeout: float = 600):
    return subprocess.run([sys.executable, *entry, *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _one_clean_error(r, prog: str, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    assert "Traceback" not in r.stderr, r.stderr
    first = [line for line in r.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert first, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("shapes"))


def test_a_missing_config_file(tmp_path):
    r = _cli("run", "--config", str(tmp_path / "nope.yaml"))
    _one_clean_error(r, "rvos-ray run", "nope.yaml", "does not exist")


def test_a_bad_override_and_a_bad_data_root(tmp_path):
    r = _cli("run", "--config", "configs/tiny.yaml", "nms.no_such_key=1", "--executor", "local")
    _one_clean_error(r, "rvos-ray run", "no_such_key")
    r = _cli("run", "--config", "configs/tiny.yaml", f"data.root={tmp_path / 'none'}", "--executor", "local",
             f"run.dir={tmp_path / 'run'}")
    _one_clean_error(r, "rvos-ray run", "does not exist")
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start


def test_the_job_entry_points_speak_the_same_way(tmp_path):
    r = _cli("--config", str(tmp_path / "nope.yaml"), entry=("jobs/evaluate.py",))
    _one_clean_error(r, "jobs/evaluate.py", "nope.yaml")


@pytest.mark.ray
def test_a_placement_error_is_one_message_and_debug_shows_the_traceback(data, tmp_path):
    args = ("run", "--config", "configs/tiny.yaml", f"data.root={data}", f"run.dir={tmp_path / 'run'}",
            "ray.num_cpus=1", "--no-progress")
    r = _cli(*args)
    _one_clean_error(r, "rvos-ray run", "cannot place the model actors", "CPU: 5 requested, 1 in the cluster")
    r = _cli(*args, "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "PlacementError" in r.stderr


@pytest.mark.slow
def test_fail_on_error_exits_1_and_the_summary_says_what_failed_and_where(data, tmp_path):
    bad = copy_data(data, tmp_path / "bad")
    vid = corrupt_video(bad)
    config = write_test_config(tmp_path / "tiny-1x1.yaml", models=1, variants=1)
    base = ("run", "--config", str(config), f"data.root={bad}", "--executor", "local", "--no-progress")
    r = _cli(*base, f"run.dir={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "2 done, 0 skipped (finished earlier), 1 failed" in r.stdout
    assert f"failed {vid} in segmentation: DataError" in r.stdout
    assert "failures/<video>.json" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["failed"] == 1
    r = _cli(*base, f"run.dir={tmp_path / 'b'}", "--fail-on-error")
    assert r.returncode == 1, r.stderr[-4000:]
    assert "1 failed" in r.stdout
