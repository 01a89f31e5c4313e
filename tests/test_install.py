"""The install: requirements.lock agrees with pyproject.toml, the venv is this clone's own and equals
the lock, and mmcv's one-time build shows its progress."""
from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "cluster" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


lock = _load("lock")
build_progress = _load("build_progress")


def test_lock_agrees_with_pyproject():
    assert lock.check() == []


def test_lock_pins_everything_with_hashes():
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = lock.parse_lock()["pins"]
    entries = [i for i, ln in enumerate(lines) if ln and not ln[0].isspace() and not ln.startswith("#")]
    assert len(entries) == len(pins) > 100
    for i in entries:  # each pin is followed by its hashes
        assert lines[i].endswith(" \\") and lines[i + 1].startswith("    --hash=sha256:"), lines[i]
    assert pins["torch"][1] == "2.14.1" and pins["torchvision"][1] == "0.29.1"
    assert pins["mmdet"][1] == "3.3.0" and pins["mmengine"][1].startswith("0.10.")
    for tool in ("uv", "pip", "setuptools", "wheel", "ninja", "pytest"):
        assert tool in pins
    assert "mmcv" not in pins and lock.parse_lock()["local"] == ["mmcv==2.1.0"]
    assert "opencv-python" not in pins and "opencv-python-headless" in pins


def _copy_inputs(tmp_path: Path) -> Path:
    (tmp_path / "cluster").mkdir()
    for rel in ("pyproject.toml", "requirements.lock", "cluster/lock-extra.in"):
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_check_names_what_changed(tmp_path):
    root = _copy_inputs(tmp_path)
    assert lock.check(root) == []
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    numpy_pin = lock.parse_lock()["pins"]["numpy"][1]
    text = text.replace('"numpy>=1.26",', f'"numpy>{numpy_pin}",\n  "left-pad>=1",', 1)
    pyproject.write_text(text)
    problems = lock.check(root)
    assert any("changed since" in p for p in problems)
    assert any(p.startswith("left-pad>=1 is not in the lock") for p in problems)
    assert any(p == f"numpy>{numpy_pin} is locked at {numpy_pin}" for p in problems)


def test_check_refuses_a_local_build_pyproject_excludes(tmp_path):
    root = _copy_inputs(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"mmcv>=2.0.0rc4,<2.2.0"', '"mmcv>=2.2"'))
    assert any("does not admit the local build mmcv==2.1.0" in p for p in lock.check(root))


def test_install_refuses_a_stale_lock(tmp_path):
    """install.sh stops at its first step, before it creates or changes anything."""
    root = _copy_inputs(tmp_path)
    for rel in ("cluster/install.sh", "cluster/lock.py"):
        shutil.copy(ROOT / rel, root / rel)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pillow>=10",', '"pillow>=10",\n  "left-pad",'))
    r = subprocess.run(["bash", "cluster/install.sh"], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "RVOS_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 1
    assert "left-pad is not in the lock" in r.stderr and "make lock" in r.stderr
    assert not (root / ".venv").exists()


def test_freeze_diff_and_extraneous():
    want = lock.expected()
    freeze = "".join(f"{n}=={v}\n" for n, v in want.items())
    assert lock.freeze_diff(freeze) == []
    wrong = freeze.replace(f"numpy=={want['numpy']}", "numpy==1.26.4") + "opencv-python==5.0.0.93\n"
    wrong = wrong.replace(f"mmcv=={want['mmcv']}\n", "")
    problems = lock.freeze_diff(wrong)
    assert f"numpy is 1.26.4, locked {want['numpy']}" in problems
    assert "mmcv==2.1.0 is locked but not installed" in problems
    assert "opencv-python==5.0.0.93 is installed but not locked" in problems
    assert lock.extraneous(wrong) == ["opencv-python"]


def test_select_gives_a_hash_checked_requirements_file():
    text = lock.select(["pip", "torch"])
    lines = text.splitlines()
    assert sorted(ln.split()[0] for ln in lines if not ln.startswith(" ")) == ["pip==26.3", "torch==2.14.1"]
    assert all("--hash=sha256:" in ln for ln in lines if ln.startswith(" "))
    assert not text.rstrip().endswith("\\") and "# via" not in text


_OWN_VENV = Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()


@pytest.mark.skipif(not _OWN_VENV, reason="runs only in this clone's .venv (make test)")
def test_venv_is_this_clones_own_and_equals_the_lock():
    import rvos_ray

    venv = ROOT / ".venv"
    assert venv.is_dir() and not venv.is_symlink()
    assert Path(rvos_ray.__file__).resolve().is_relative_to(ROOT)
    assert (venv / ".rvos-root").read_text().strip() == str(ROOT)
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    assert lock.freeze_diff(freeze) == []


def test_progress_lines_of_a_ninja_build():
    now = [0.0]
    out = io.StringIO()
    p = build_progress.Progress(out, "[install] ", heartbeat=60, now=lambda: now[0], estimate_min=18)
    p.feed("running build_ext\n")
    now[0] = 60.0  # the estimate until a rate is measured, then the rate (15 s a file)
    for step in range(1, 6):
        p.feed(f"[{step}/77] /tmp/b/bin/g++ -MMD -MF x.o.d -I/s/mmcv/ops/csrc/common -c -c "
               f"/s/mmcv/ops/csrc/pytorch/cpu/roi_align.cpp -o /b/roi_align.o -std=c++20\n")
        now[0] += 15
    now[0] = 1800.0
    p.feed("[77/77] c++ -c /s/mmcv/ops/csrc/pytorch/nms.cpp -o nms.o\n")
    p.beat()  # just printed: no heartbeat
    now[0] = 1900.0
    p.beat()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[install]   [1/77] pytorch/cpu/roi_align.cpp  1:00 elapsed, ~17 min left"
    assert lines[4] == "[install]   [5/77] pytorch/cpu/roi_align.cpp  2:00 elapsed, ~18 min left"
    assert lines[5:] == [
        "[install]   [77/77] pytorch/nms.cpp  30:00 elapsed",
        "[install]   ... linking and packing the wheel, 31:40 elapsed",
    ]


def test_progress_filter_keeps_the_whole_log(tmp_path):
    lines = "noise\n[1/2] c++ -c a/csrc/x.cpp -o x.o\nerror: something\n[2/2] c++ -c b.cu -o b.o\n"
    log = tmp_path / "build.log"
    r = subprocess.run([sys.executable, str(ROOT / "cluster" / "build_progress.py"), "--log", str(log)],
                       input=lines, capture_output=True, text=True, check=True)
    assert log.read_text() == lines
    assert [ln.split()[0:2] for ln in r.stderr.splitlines()] == [["[1/2]", "x.cpp"], ["[2/2]", "b.cu"]]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RVOS_TEST_SECOND_CLONE") != "1" or not _OWN_VENV,
                    reason="a whole second install (minutes, ~6 GB): set RVOS_TEST_SECOND_CLONE=1")
def test_a_second_clones_install_leaves_this_clone_alone(tmp_path):
    """`make install` in a second clone gives it a venv of its own; this clone's imports and
    install stamp are unchanged."""
    stamp = (ROOT / ".venv" / ".rvos-stamp").read_text()
    other = tmp_path / "second-clone"
    subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(other)], check=True)
    try:
        subprocess.run(["bash", "cluster/install.sh"], cwd=other, check=True)
        code = "import rvos_ray; print(rvos_ray.__file__)"
        mine = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", code], capture_output=True,
                              text=True, check=True, cwd=tmp_path).stdout.strip()
        theirs = subprocess.run([str(other / ".venv/bin/python"), "-c", code], capture_output=True,
                                text=True, check=True, cwd=tmp_path).stdout.strip()
        assert Path(mine).is_relative_to(ROOT) and Path(theirs).is_relative_to(other)
        assert (ROOT / ".venv" / ".rvos-stamp").read_text() == stamp
    finally:
        shutil.rmtree(other, ignore_errors=True)
