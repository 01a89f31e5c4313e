"""Files through pyarrow.fs: local paths and URIs (s3://, gs://, file://) alike.

Every write is atomic: bytes go to a temporary sibling that is then renamed over the target,
so a crash never leaves a half-written file where a finished one is expected.
"""

from __future__ import annotations

import io
import os
import uuid

import numpy as np
import pyarrow.fs as pafs
from PIL import Image


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI."""
    uri = os.fspath(uri)
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    base = os.fspath(base)
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(uri: str) -> list[str]:
    """Names (not paths) of the entries of a directory, sorted."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic write: temp file beside the target, then rename."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def read_image(uri: str) -> np.ndarray:
    """An RGB uint8 HxWx3 frame (JPEG/PNG)."""
    with Image.open(io.BytesIO(read_bytes(uri))) as im:
        return np.asarray(im.convert("RGB"))
