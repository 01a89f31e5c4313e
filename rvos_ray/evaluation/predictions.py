"""Where predicted masks come from: a submission folder, a submission zip, or memory.

A submission holds single-channel PNGs in which every nonzero pixel is foreground (0/255 by
convention; palette PNGs count by index), in one of two layouts, detected (never to be told):

- ``"annotations"`` (Ref-YouTube-VOS, Ref-DAVIS): ``Annotations/<video>/<exp_id>/<frame>.png``.
  A folder holds ``Annotations/`` (or is it); a zip holds it at its root or one folder down.
- ``"videos"`` (MeViS): ``<video>/<exp_id>/<frame>.png``, the video folders at the root of the
  folder or zip (MeViS's inference script zips its folder's contents).

An ``Annotations/`` entry at the root decides for the first; otherwise the folder or zip must
hold ``<video>/<exp_id>/<frame>.png`` at its root. The zip is read in place, never extracted.

Every source answers ``read(video, exp_id, frame)`` with the mask, or ``None`` when that frame
has no prediction (the scorer counts it as an empty mask). A file that exists but is not a
readable single-channel PNG is a :class:`DataError` naming it.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from rvos_ray.data import io as dio
from rvos_ray.data.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYOUT = "Annotations/<video>/<exp_id>/<frame>.png"
VIDEO_LAYOUT = "<video>/<exp_id>/<frame>.png"
#: layout name -> how it is written in messages
LAYOUTS = {"annotations": LAYOUT, "videos": f"{VIDEO_LAYOUT} at the root"}
EXPECTED = f"expected {LAYOUT}, or {VIDEO_LAYOUT} at the root (MeViS)"
_PROBE_DIRS = 64  # <video>/<exp_id> folders a folder's layout check looks into at most
_SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


class PredictionSource(Protocol):
    """Predicted masks by (video, exp_id, frame name)."""

    def read(self, video: str, exp_id: str, frame: str) -> np.ndarray | None:
        """The HxW mask (nonzero = foreground), or ``None`` when the frame is not predicted."""
        ...

    def name(self, video: str, exp_id: str, frame: str) -> str:
        """How the frame is named in messages (a path, or ``zip:member``)."""
        ...


def decode_mask_png(data: bytes, name: str) -> np.ndarray:
    """PNG bytes -> HxW array (nonzero = foreground). ``name`` is used in the errors.

    Grayscale PNGs decode through OpenCV (fast); palette and other single-channel modes through
    PIL so a palette image yields its indices, not colours. Multi-channel images are refused.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(f"{name}: not a PNG file; expected a single-channel PNG mask (0 = background)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and arr.ndim == 2:
        return arr
    # Palette or colour image, or OpenCV could not decode it (truncated / corrupt): ask PIL,
    # which both reads palette indices and says what is wrong with a broken file.
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in _SINGLE_CHANNEL_MODES:
                raise DataError(
                    f"{name}: PNG has mode {im.mode!r}; expected a single-channel PNG mask "
                    "(0 = background, nonzero = foreground)"
                )
            im.load()
            return np.asarray(im)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: unreadable or truncated PNG ({e}); expected a single-channel PNG mask") from e


def _check_layout_base(path: str) -> tuple[str, str]:
    """(the folder holding ``<video>/`` folders, layout name) of a submission folder: its
    ``Annotations/`` folder, the folder itself when it is named ``Annotations``, or the folder
    itself when it holds ``<video>/<exp_id>/<frame>.png``."""
    sub = dio.join(path, "Annotations")
    if dio.is_dir(sub):
        return sub, "annotations"
    if path.rstrip("/").rsplit("/", 1)[-1] == "Annotations":
        return path, "annotations"
    if _has_video_folders(path):
        return path, "videos"
    raise DataError(f"predictions folder {path} has no Annotations/ folder and no {VIDEO_LAYOUT} "
                    f"at its root; {EXPECTED}")


def _has_video_folders(path: str) -> bool:
    """Whether some ``path/<video>/<exp_id>/`` holds a ``.png`` (looks into a bounded number of
    folders, so a wrong, huge folder fails fast)."""
    looked = 0
    for video in dio.list_dir(path):
        vdir = dio.join(path, video)
        if not dio.is_dir(vdir):
            continue
        for exp in dio.list_dir(vdir):
            edir = dio.join(vdir, exp)
            if not dio.is_dir(edir):
                continue
            if any(n.endswith(".png") for n in dio.list_dir(edir)):
                return True
            looked += 1
            if looked >= _PROBE_DIRS:
                return False
    return False


class FolderPredictions:
    """A submission folder (local path or pyarrow.fs URI) in either layout (module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.base, self.layout = _check_layout_base(self.path)
        self._local = "://" not in self.base

    def name(self, video: str, exp_id: str, frame: str) -> str:
        return f"{self.base}/{video}/{exp_id}/{frame}.png"

    def read(self, video: str, exp_id: str, frame: str) -> np.ndarray | None:
        path = self.name(video, exp_id, frame)
        try:
            if self._local:  # plain open() is several times cheaper than a pyarrow stream
                with open(path, "rb") as f:
                    data = f.read()
            else:
                data = dio.read_bytes(path)
        except FileNotFoundError:
            return None
        except IsADirectoryError as e:
            raise DataError(f"{path}: is a directory; expected a PNG mask") from e
        return decode_mask_png(data, path)


class ZipPredictions:
    """A submission zip, read in place. Each process opens its own handle (safe under fork)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._zf: zipfile.ZipFile | None = None
        self._pid = -1
        self.layout = ""
        self._index = self._build_index(self._open())

    def _open(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            try:
                if "://" in self.path:
                    fs, p = dio.resolve(self.path)
                    handle = fs.open_input_file(p)
                    self._zf = zipfile.ZipFile(handle)
                else:
                    self._zf = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as e:
                raise DataError(f"predictions zip {self.path} is not a readable zip file ({e})") from e
            self._pid = os.getpid()
        return self._zf

    def _build_index(self, zf: zipfile.ZipFile) -> dict[tuple[str, str, str], str]:
        """(video, exp_id, frame) -> member, in the layout the zip holds (module docstring)."""
        pngs = [(m, m[2:] if m.startswith("./") else m) for m in zf.namelist() if m.endswith(".png")]
        index: dict[tuple[str, str, str], str] = {}
        for member, name in pngs:
            parts = name.split("/")
            if "Annotations" not in parts:
                continue
            rest = parts[parts.index("Annotations") + 1:]
            if len(rest) == 3 and all(rest):
                index[(rest[0], rest[1], rest[2][: -len(".png")])] = member
        if index:
            self.layout = "annotations"
            return index
        for member, name in pngs:
            parts = name.split("/")
            if len(parts) == 3 and all(parts):
                index[(parts[0], parts[1], parts[2][: -len(".png")])] = member
        if index:
            self.layout = "videos"
            return index
        tops = {name.split("/", 1)[0] for _, name in pngs if name.count("/") == 3}
        hint = ""
        if len(tops) == 1:
            hint = (f"; its PNGs are one folder down, under {tops.pop() + '/'!r}: zip that folder's "
                    "contents instead")
        raise DataError(f"predictions zip {self.path} holds no {LAYOUT} entries and no {VIDEO_LAYOUT} "
                        f"entries at its root; {EXPECTED}{hint}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zf"], state["_pid"] = None, -1
        return state

    def name(self, video: str, exp_id: str, frame: str) -> str:
        prefix = "Annotations/" if self.layout == "annotations" else ""
        member = self._index.get((video, exp_id, frame), f"{prefix}{video}/{exp_id}/{frame}.png")
        return f"{self.path}:{member}"

    def read(self, video: str, exp_id: str, frame: str) -> np.ndarray | None:
        member = self._index.get((video, exp_id, frame))
        if member is None:
            return None
        try:
            data = self._open().read(member)
        except (zipfile.BadZipFile, zlib.error, OSError) as e:
            raise DataError(f"{self.path}:{member}: cannot read zip member ({e})") from e
        return decode_mask_png(data, f"{self.path}:{member}")


class MemoryPredictions:
    """Predictions held in memory, for scoring inside a pipeline without files.

    ``source`` is a mapping ``{(video, exp_id, frame): mask}`` or a callable
    ``(video, exp_id, frame) -> mask | None``; masks are HxW arrays, nonzero = foreground.
    """

    def __init__(self, source: Mapping[tuple[str, str, str], np.ndarray] | Callable[[str, str, str], np.ndarray | None]):
        self.source = source

    def name(self, video: str, exp_id: str, frame: str) -> str:
        return f"prediction ({video!r}, {exp_id!r}, {frame!r})"

    def read(self, video: str, exp_id: str, frame: str) -> np.ndarray | None:
        if callable(self.source):
            mask = self.source(video, exp_id, frame)
        else:
            mask = self.source.get((video, exp_id, frame))
        return None if mask is None else np.asarray(mask)


def open_predictions(path: str) -> FolderPredictions | ZipPredictions:
    """A submission folder or ``.zip`` in either layout (detected; ``.layout`` says which); a
    missing path is a :class:`DataError` naming it."""
    path = os.fspath(path)
    if not dio.exists(path):
        raise DataError(f"predictions {path} do not exist; expected a folder or .zip with {LAYOUT} "
                        f"or {VIDEO_LAYOUT} (MeViS)")
    if dio.is_dir(path):
        return FolderPredictions(path)
    if path.lower().endswith(".zip"):
        return ZipPredictions(path)
    raise DataError(f"predictions {path} is neither a folder nor a .zip; {EXPECTED}")
