"""Shared by the benches that run the demo's pipeline on synthetic shapes sets: write a set with
`rvos-ray make-shapes`, run `rvos-ray run --config configs/demo.yaml` on it (the documented
command, in a subprocess: local Ray on loopback, the shipped models), read what the run wrote.
Not a bench itself (``make bench`` skips files starting with ``_``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RVOS = os.path.join(os.path.dirname(sys.executable), "rvos-ray")
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def make_shapes(out: Path, videos: int, seed: int, frames: tuple[int, int] | None = None) -> Path:
    """The synthetic benchmark at ``out`` (make-shapes skips a set already up to date; its valid
    split is what runs use). ``frames``: (min, max) frames per video, else make-shapes' default."""
    extra = ["--min-frames", str(frames[0]), "--max-frames", str(frames[1])] if frames else []
    subprocess.run([RVOS, "make-shapes", "--out", str(out), "--videos", str(videos), "--seed", str(seed), *extra],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def run_demo_config(data: Path, run_dir: Path, overrides: list[str], resume: bool = False) -> dict[str, Any]:
    """``rvos-ray run --config configs/demo.yaml`` on ``data``'s valid split; returns its
    summary.json plus ``bench_wall_s`` (the command's wall time, Ray start included).
    ``resume``: videos a previous run of the same config finished are not recomputed."""
    t0 = time.perf_counter()
    cmd = [RVOS, "run", "--config", str(DEMO_CONFIG), f"data.root={data}", "data.split=valid",
           f"run.dir={run_dir}", f"run.resume={str(resume).lower()}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["bench_wall_s"] = time.perf_counter() - t0
    return summary


def propagated_frames(run_dir: Path) -> int:
    """Candidate-frames propagated by a run: the rows of every video's tracklets_all table."""
    from rvos_ray.runtime.run_dir import RunDir

    rd = RunDir(str(run_dir))
    return sum(rd.read_table(v, "tracklets_all").num_rows for v in rd.done_videos())
