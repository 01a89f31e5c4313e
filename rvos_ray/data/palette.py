"""Palette ('P' mode) PNG annotations: pixel value = object id, 0 = background.

Ref-YouTube-VOS, Ref-DAVIS17 and the synthetic benchmark store their ground truth this way.
Reading checks the mode and decodes the whole image eagerly, so a truncated or wrong-mode
file fails here with a :class:`DataError` that names it, not later inside a stage.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from rvos_ray.data import io as dio
from rvos_ray.data.errors import DataError


def _make_palette() -> bytes:
    """The 256-colour palette DAVIS / YouTube-VOS annotations use (PASCAL VOC colour map):
    each id's bits are spread over the high bits of R, G and B, so small ids get distinct
    saturated colours."""
    out = bytearray()
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += bytes((r, g, b))
    return bytes(out)


PALETTE: bytes = _make_palette()
"""768 bytes (R, G, B for ids 0..255); id 0 is black."""


def encode_palette_png(label: np.ndarray) -> bytes:
    """uint8 HxW label map (values = object ids) -> palette PNG bytes."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"a label map must be HxW, got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError("label map values must be object ids in 0..255")
        label = label.astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(label))
    im.putpalette(PALETTE)  # an 'L' image with a palette becomes 'P' with the same indices
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_palette_png(data: bytes, name: str) -> np.ndarray:
    """Palette PNG bytes -> uint8 HxW of palette indices (object ids).

    ``name`` (the file's path or URI) is used in the error messages. Raises :class:`DataError`
    for bytes that are not a complete PNG, or for a PNG whose mode is not 'P'.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise DataError(f"{name}: annotation is {im.format}, expected a palette ('P' mode) PNG")
            if im.mode != "P":
                raise DataError(
                    f"{name}: annotation PNG has mode {im.mode!r}, expected a palette ('P' mode) PNG "
                    "whose pixel values are object ids"
                )
            im.load()  # decode now: a truncated file raises here, not in a later stage
            arr = np.array(im, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        # PIL reports truncation as OSError ('image file is truncated'), broken chunks as
        # SyntaxError, unknown bytes as UnidentifiedImageError (an OSError).
        raise DataError(
            f"{name}: unreadable or truncated annotation PNG ({e}); expected a palette ('P' mode) PNG"
        ) from e
    return arr


def read_palette_png(uri: str) -> np.ndarray:
    """Read a palette PNG annotation (local path or URI) -> uint8 HxW object ids."""
    try:
        data = dio.read_bytes(uri)
    except FileNotFoundError as e:
        raise DataError(f"{uri}: annotation PNG does not exist") from e
    except OSError as e:
        raise DataError(f"{uri}: cannot read annotation PNG ({e})") from e
    return decode_palette_png(data, uri)
