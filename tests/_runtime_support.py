"""Shared helpers of the runtime tests: a tiny synthetic split, the tiny config over it, and
comparisons of two run directories' results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import OmegaConf

from rvos_ray.config import load_config
from rvos_ray.data.synthetic import make_shapes
from rvos_ray.runtime.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
VIDEOS = 3


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (for a Ray head's ports)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1)."""
    import ipaddress

    a = ipaddress.ip_address(ip.split("%")[0])
    return a.is_loopback or bool(getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback)


def make_data(root: Path, videos: int = VIDEOS) -> Path:
    """Three short 64x96 videos of the synthetic benchmark (train and valid, both annotated)."""
    make_shapes(str(root), videos=videos, seed=0, height=64, width=96, min_frames=4, max_frames=5)
    return root


def write_test_config(path: Path, models: int | None = None, variants: int | None = None) -> Path:
    """configs/tiny.yaml with 2 keyframes, optionally only the first ``models`` segmentation
    models and ``variants`` grounder variants (fewer actor processes), written to ``path``."""
    raw = OmegaConf.load(TINY)
    raw.keyframes.k = 2
    if models is not None:
        raw.segmentation.models = list(raw.segmentation.models)[:models]
    if variants is not None:
        raw.grounding.variants = list(raw.grounding.variants)[:variants]
    OmegaConf.save(raw, path)
    return path


def tiny_cfg(root: Path, run_dir: Path, *overrides: str, config: Path | None = None):
    """The run config over ``root``: ``config`` (default: tiny.yaml with 2 keyframes)."""
    if config is None:
        config = write_test_config(Path(run_dir).parent / f".{Path(run_dir).name}-tiny.yaml")
    return load_config(config, [f"data.root={root}", f"run.dir={run_dir}", *overrides])


def corrupt_video(root: Path, split: str = "valid") -> str:
    """Copy-free: overwrite every frame of the split's first video with bytes that are no
    image. Returns the video id."""
    folder = sorted((root / split / "JPEGImages").iterdir())[0]
    for f in folder.iterdir():
        f.write_bytes(b"this is not a JPEG")
    return folder.name


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def split_tables(run_dir: Path) -> dict:
    return {name: pq.read_table(run_dir / f"{name}.parquet") for name in ("predictions", "metrics", "failures")}


def assert_same_results(a: Path, b: Path) -> None:
    """Predictions, metrics and every finished video's cached tables are equal."""
    ta, tb = split_tables(a), split_tables(b)
    for name in ("predictions", "metrics"):
        assert ta[name].num_rows > 0, f"{a}: {name} is empty"
        assert ta[name].equals(tb[name]), f"{name} differ between {a} and {b}"
    ra, rb = RunDir(str(a)), RunDir(str(b))
    assert ra.done_videos() == rb.done_videos()
    for vid in sorted(ra.done_videos()):
        for stem in ("tracklets_all", "tracklets", "grounding", "prediction", "metrics"):
            assert ra.read_table(vid, stem).equals(rb.read_table(vid, stem)), f"{vid} {stem} differ"
