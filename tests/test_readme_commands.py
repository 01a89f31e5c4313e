"""Every `rvos-ray`, `python jobs/...` and `ray job submit` command in README.md's code blocks,
run as a user runs it.

The README is parsed here, so a README change is tested too. Commands run in a copy of the
checkout's tracked files (``git ls-files``; ``.venv`` linked), with the environment a new
shell has (no RAY_* variables), so relative paths (``data/shapes``, ``runs/tiny``) land in the
copy and configs are used as shipped. Substituted: only the job server's address (a head
started by ``cluster/start_local.sh`` on free 127.0.0.1 ports instead of 8265). Training
commands run with their schedule cut to a few steps (a full schedule is 15+ minutes; the
command, config and data are the README's). Commands that need the paper's weights or datasets
(downloads, GPUs) cannot run offline: their configs and overrides are loaded and validated.

While `rvos-ray run --config configs/tiny.yaml` runs on the local Ray it starts, every listening
socket of its process tree must be on 127.0.0.1 / ::1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from _runtime_support import REPO, free_ports, is_loopback

pytestmark = [pytest.mark.ray, pytest.mark.slow]

README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
RUNS_AS = (".venv/bin/rvos-ray", "rvos-ray", "python", ".venv/bin/python", "ray")


def readme_commands(text: str | None = None) -> list[str]:
    """The commands of the README's code blocks (fenced, and indented by 4 spaces after a blank
    line), continuation lines joined and trailing comments dropped, in README order."""
    text = README.read_text() if text is None else text
    blocks, fenced, current, prev_blank = [], None, [], True
    for line in text.splitlines():
        if line.startswith("```"):
            if fenced is None:
                fenced = []
            else:
                blocks.append("\n".join(fenced))
                fenced = None
            continue
        if fenced is not None:
            fenced.append(line)
        elif line.startswith("    ") and line.strip() and (prev_blank or current):
            current.append(line[4:])
        else:
            if current:
                blocks.append("\n".join(current))
                current = []
        prev_blank = not line.strip()
    out = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            cmd = re.sub(r"\s+#\s.*$", "", line).strip()
            bare = re.sub(r"^(\w+=\S+\s+)+", "", cmd)  # leading VAR=value assignments
            if re.match(r"^(\.venv/bin/)?rvos-ray |^(\.venv/bin/)?python jobs/|^(\.venv/bin/)?ray job submit ", bare):
                out.append(cmd)
    return out


def _offline_impossible(cmd: str) -> bool:
    """Commands of the paper configuration: its weights (OpenMMLab URLs, the Hugging Face hub)
    and datasets cannot be fetched here."""
    return bool(re.search(r"configs/paper\.yaml|configs/propagator/paper\.yaml|condinst_r50_rvos|s3://|"
                          r"https?://download|data/ref-|data/mevis", cmd))


#: order of the runnable commands (they build on each other: data, then runs, then what reads runs)
STEPS = (
    (r"make-shapes .*--videos 3\b", 0),
    (r"rvos-ray run ", 1),
    (r"rvos-ray score ", 2),
    (r"jobs/evaluate\.py", 2),
    (r"rvos-ray sweep |jobs/sweep_ensemble\.py", 3),
    (r"rvos-ray ablate ", 3),
    (r"make-shapes ", 4),
    (r"train-propagator |train-grounder ", 5),
)

#: training schedules cut to a few steps (the README's command, config and data otherwise)
CUT = {
    "train-propagator": ["steps=6", "checkpoint_every=3", "warmup_steps=2"],
    "train-grounder": ["train_grounder.finetune.epochs=1", "train_grounder.val_every=1",
                       "train_grounder.finetune.data.0.videos=3", "train_grounder.finetune.val.0.videos=2"],
}


def _step(cmd: str) -> int:
    for pattern, step in STEPS:
        if re.search(pattern, cmd):
            return step
    raise AssertionError(f"README command the suite does not know how to order; add it to STEPS: {cmd}")


COMMANDS = readme_commands()
MAIN_RUN = ".venv/bin/rvos-ray run --config configs/tiny.yaml"  # the README's run: its sockets are checked
RUNNABLE = sorted((c for c in COMMANDS if not _offline_impossible(c)), key=_step)
PAPER = [c for c in COMMANDS if _offline_impossible(c)]


def test_the_readme_has_the_commands_this_file_runs():
    assert len(RUNNABLE) >= 10 and len(PAPER) >= 5, (RUNNABLE, PAPER)
    assert MAIN_RUN in RUNNABLE
    for c in COMMANDS:  # no usage synopses: a README command is one a user can paste
        assert "[" not in c.replace("'[", "").replace('"excludes": [', ""), c


# ------------------------------------------------------------------------------------------------
# the checkout copy, the environment, a head for `ray job submit`
# ------------------------------------------------------------------------------------------------


def _user_env(**extra: str) -> dict[str, str]:
    """A new shell's environment: none of the RAY_* settings this suite sets for itself, and
    no venv on PATH (the README's commands name .venv/bin/...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PWD"}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != VENV_BIN.resolve()]
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PATH": os.pathsep.join(path)})
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The tracked files of this checkout, copied; ``.venv`` linked."""
    root = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


@pytest.fixture(scope="module")
def head(checkout):
    """`cluster/start_local.sh --block` (as the README starts it) on free 127.0.0.1 ports."""
    gcs, dash, client, agent = free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths have a length limit
    env = _user_env(RAY_PORT=str(gcs), RAY_DASHBOARD_PORT=str(dash), RAY_CLIENT_PORT=str(client),
                    RAY_AGENT_PORT=str(agent), RAY_TEMP_DIR=temp_dir, RAY_NUM_CPUS="8")
    proc = subprocess.Popen(["bash", "cluster/start_local.sh", "--block"], cwd=checkout, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", address],
                             env={**env, "RAY_AUTH_MODE": "token"},
                             capture_output=True, timeout=60).returncode != 0:
            assert proc.poll() is None, f"the head did not start: {proc.stderr.read().decode()[-3000:]}"
            assert time.time() < deadline, "the head's job server did not come up in 180 s"
            time.sleep(2.0)
        yield address
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _substitute(cmd: str, head_address: str | None) -> str:
    if head_address:
        cmd = cmd.replace("http://127.0.0.1:8265", head_address)
    for name, extra in CUT.items():
        if f" {name} " in f" {cmd} ":
            cmd += " " + " ".join(extra)
    return cmd


# ------------------------------------------------------------------------------------------------
# listening sockets of a process tree
# ------------------------------------------------------------------------------------------------


class SocketWatch:
    """Samples, while a command runs, every listening TCP socket of its process tree."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: set[tuple[str, int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    conns = p.net_connections(kind="inet")
                    name = p.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                for c in conns:
                    if c.status == psutil.CONN_LISTEN:
                        self.seen.add((c.laddr.ip, c.laddr.port, name))
            self._stop.wait(0.5)

    def stop(self) -> set[tuple[str, int, str]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.seen


# ------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_readme_command_runs_as_written(cmd, checkout, request):
    is_job = "ray job submit" in cmd
    address = request.getfixturevalue("head") if is_job else None
    run_cmd = _substitute(cmd, address)
    env = _user_env()
    proc = subprocess.Popen(["bash", "-c", run_cmd], cwd=checkout, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = SocketWatch(proc.pid) if "job submit" not in cmd else None
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        seen = watch.stop() if watch else set()
    assert proc.returncode == 0, f"`{run_cmd}` exited {proc.returncode}\n{out[-3000:]}\n{err[-5000:]}"
    assert "Traceback" not in err, err[-5000:]
    if cmd == MAIN_RUN:  # a local Ray ran: GCS, raylet, object manager, workers, agents
        ports = {(ip, port) for ip, port, _ in seen}
        assert len(ports) >= 3, f"saw too few listening sockets to judge ({seen}): the watch is broken"
    if watch is not None:
        # (train-grounder included: its Ray Train workers meet through a file and gloo runs on
        # lo, where Ray Train's own setup opened a TCPStore on every interface)
        exposed = sorted(s for s in seen if not is_loopback(s[0]))
        assert not exposed, f"`{run_cmd}` started processes listening beyond loopback: {exposed}"
    if re.search(r"rvos-ray run |jobs/evaluate\.py", cmd):
        summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        assert summary["failed"] == 0 and summary["done"] + summary["skipped"] == summary["videos"] > 0, summary


@pytest.mark.parametrize("cmd", PAPER)
def test_paper_command_config_and_overrides_load(cmd):
    """The paper's commands cannot run offline; what they name must exist and load."""
    from rvos_ray.config import load_config

    words = shlex.split(re.sub(r"^(\w+=\S+\s+)+", "", cmd))
    if words[0].split("/")[-1] == "ray":
        words = words[words.index("--") + 1:]
    words = words[1:] if words[0] == "python" else words
    config = words[words.index("--config") + 1]
    assert (REPO / config).is_file(), f"{cmd}: {config} does not exist"
    overrides = [w for w in words if "=" in w and not w.startswith("-")]
    if config.endswith(".py"):  # an mmdet config for finetune-segmenter
        from mmengine.config import Config

        Config.fromfile(str(REPO / config))
    elif "propagator/" in config:
        from rvos_ray.training.train_propagator import load_train_config

        load_train_config(str(REPO / config), overrides)
    else:
        cfg = load_config(REPO / config, overrides)
        if "--variant" in words:
            names = [v["name"] for v in cfg.grounding.variants]
            assert words[words.index("--variant") + 1] in names
