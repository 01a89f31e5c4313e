"""Starting or joining Ray (rvos_ray.runtime.ray_session), as every command does it.

- Only an explicit address joins: a stale ``ray_current_cluster`` file (a head that once ran on
  this machine and did not stop cleanly) must not make the sweep, grounder training, the
  ablation or a run try to join it.
- One helper: nothing else in the package or the jobs calls ``ray.init``.
- A local Ray a command starts listens on loopback only, even from an environment without any
  RAY_* variable (the README's `rvos-ray run` is checked socket by socket in
  test_readme_commands.py; here the helper itself, quickly).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from _runtime_support import REPO, is_loopback

SNIPPET = r"""
import json, os, sys
from omegaconf import OmegaConf
from rvos_ray.runtime import ray_session
what = sys.argv[1]
if what == "sweep":
    ray_session.prepare("")
    from rvos_ray.runtime import sweep_exec
    started = sweep_exec.init_sweep_ray(OmegaConf.create({"ray": {"address": "", "num_cpus": 1}}))
elif what == "train-grounder":
    from rvos_ray.config import load_config
    from rvos_ray.training.train_grounder import _ray_init
    started = _ray_init(load_config(None, ["ray.num_cpus=1"]))
else:
    from rvos_ray.config import load_config
    ray_session.prepare("")
    from rvos_ray.runtime.ray_exec import init_ray
    started = init_ray(load_config(None, ["ray.num_cpus=1"]))
import psutil, ray
ctx = ray.get_runtime_context()
gcs = ctx.gcs_address
node_ip = ray.util.get_node_ip_address()
listening = set()
for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        pass
ray_session.disconnect(started)
print(json.dumps({"started": started, "gcs": gcs, "node_ip": node_ip, "listening": sorted(listening)}))
"""


def _clean_env(tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_TMPDIR": tmp, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    return env


@pytest.mark.ray
@pytest.mark.parametrize("what", ["run", "sweep", "train-grounder"])
def test_a_stale_cluster_file_is_never_joined_and_the_new_ray_is_on_loopback(what):
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths have a length limit
    # what a head that died without cleanup leaves behind: its address, listed as current
    (Path(tmp) / "ray").mkdir()
    (Path(tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    r = subprocess.run([sys.executable, "-c", SNIPPET, what], cwd=REPO, env=_clean_env(tmp),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["started"] is True
    assert out["gcs"].startswith("127.0.0.1:") and out["gcs"] != "127.0.0.1:1"
    assert out["node_ip"] == "127.0.0.1"
    assert out["listening"] and all(is_loopback(ip) for ip in out["listening"]), out


def test_only_the_session_helper_calls_ray_init():
    offenders = []
    for path in [*(REPO / "rvos_ray").rglob("*.py"), *(REPO / "jobs").glob("*.py")]:
        if path.name == "ray_session.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bray\.init\(", line):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "call rvos_ray.runtime.ray_session.connect instead:\n" + "\n".join(offenders)


def test_joining_sets_nothing_and_a_local_start_sets_loopback_and_token(monkeypatch):
    from rvos_ray.runtime import ray_session

    for k in ray_session.LOCAL_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_session.target_address(None, "") == ""
    assert ray_session.target_address("10.0.0.1:6379", "") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")
    assert ray_session.target_address(None, "") == "127.0.0.1:6380"
    ray_session.prepare("127.0.0.1:6380")
    assert not any(k in os.environ for k in ray_session.LOCAL_ENV)
    ray_session.prepare("")
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and os.environ["RAY_AUTH_MODE"] == "token"


def test_a_local_ray_is_sized_for_the_actors_it_will_place():
    """configs/tiny.yaml asks for 2 segmenters, 1 propagator, 1 grounding actor (its two
    variants share their encoders) at 1 CPU each and a task slot: a local Ray declares 5
    logical CPUs even on a 2-core machine."""
    from omegaconf import OmegaConf

    from rvos_ray.config import load_config
    from rvos_ray.runtime.placement import local_node_size, requests_of

    c = OmegaConf.to_container(load_config(REPO / "configs" / "tiny.yaml"), resolve=True)
    assert local_node_size(requests_of(c), 2) == (5, {})
    assert local_node_size(requests_of(c), 16) == (16, {})
    c["propagation"]["resources"].update(replicas=3, num_cpus=0.5, custom={"prop": 1})
    cpus, custom = local_node_size(requests_of(c), 2)
    assert (cpus, custom) == (6, {"prop": 3.0})  # 2 + 1.5 + 1 + 1 = 5.5 -> 6
