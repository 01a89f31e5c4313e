"""Palette PNG annotations: round trip, the DAVIS colour map, and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rvos_ray.data.errors import DataError
from rvos_ray.data.palette import PALETTE, decode_palette_png, encode_palette_png, read_palette_png


def test_round_trip_keeps_ids_and_is_palette_mode():
    lab = np.array([[0, 1, 2], [3, 255, 7]], np.uint8)
    data = encode_palette_png(lab)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "P"
        assert im.getpalette()[3:12] == [128, 0, 0, 0, 128, 0, 128, 128, 0]
    np.testing.assert_array_equal(decode_palette_png(data, "x.png"), lab)


def test_palette_is_the_voc_colour_map():
    # ids 0..4 and 8 of the PASCAL VOC / DAVIS colour map
    rgb = [tuple(PALETTE[3 * i:3 * i + 3]) for i in (0, 1, 2, 3, 4, 8)]
    assert rgb == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (64, 0, 0)]
    assert len(PALETTE) == 768


def test_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing.png: annotation PNG does not exist"):
        read_palette_png(str(tmp_path / "missing.png"))
    with pytest.raises(DataError, match=r"junk.png: unreadable or truncated"):
        decode_palette_png(b"not an image", "junk.png")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(DataError, match=r"rgb.png: annotation PNG has mode 'RGB', expected a palette \('P' mode\)"):
        decode_palette_png(buf.getvalue(), "rgb.png")
    with pytest.raises(ValueError, match="HxW"):
        encode_palette_png(np.zeros((2, 2, 3), np.uint8))
