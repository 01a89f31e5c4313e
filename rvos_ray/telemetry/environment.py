"""The environment a run ran in, for its report: host, Python, package versions, git commit.

Collected cheaply (package metadata, no heavy imports) on the driver when a run finishes and
stored as ``<run>/environment.json``; where the actors ran is in the event log (the driver's
``actors_ready`` event).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

#: distributions whose versions the report lists
PACKAGES = ("rvos-ray", "ray", "torch", "torchvision", "mmdet", "mmcv", "mmengine", "transformers", "timm",
            "pyarrow", "numpy", "pandas", "pycocotools", "omegaconf", "opencv-python-headless", "plotly")


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def git_commit(path: Path | None = None) -> str:
    """The checkout's commit (with ``+dirty`` when files differ), or "" outside a git checkout."""
    where = path or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def collect() -> dict[str, Any]:
    """Host, OS, Python, CPU count, visible GPUs (``CUDA_VISIBLE_DEVICES``), versions, commit."""
    return {
        "collected_at": time.time(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "ray_address": os.environ.get("RAY_ADDRESS", ""),
        "git_commit": git_commit(),
        "packages": package_versions(),
    }
