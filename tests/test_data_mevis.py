"""MeViS reader: per-frame COCO RLE masks in mask_dict.json, multi-object expressions as the
union, null where an object is absent."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from rvos_ray.data.datasets import open_dataset
from rvos_ray.data.errors import DataError
from rvos_ray.data.mevis import MeViS

H, W = 3, 5
A1_F0 = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.uint8)
A1_F1 = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.uint8)
A2_F1 = np.array([[0, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], np.uint8)  # overlaps A1 at (1, 2)


def _rle(m: np.ndarray) -> dict:
    r = coco_mask.encode(np.asfortranarray(m))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture()
def root(tmp_path) -> str:
    r = str(tmp_path / "mevis")
    meta = {"videos": {"v1": {
        "expressions": {
            "0": {"exp": "the bird flying away", "obj_id": [0], "anno_id": [11]},
            "1": {"exp": "two birds", "obj_id": [0, 1], "anno_id": [11, 12]},
        },
        "frames": ["00000", "00001"],
    }}}
    _write(f"{r}/train/meta_expressions.json", json.dumps(meta).encode())
    _write(f"{r}/train/mask_dict.json", json.dumps({
        "11": [_rle(A1_F0), _rle(A1_F1)],
        "12": [None, _rle(A2_F1)],
    }).encode())
    for f in ("00000", "00001"):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(buf, format="JPEG")
        _write(f"{r}/train/JPEGImages/v1/{f}.jpg", buf.getvalue())
    return r


def test_expressions_carry_anno_ids(root):
    ds = open_dataset(root, "train", "mevis")
    assert isinstance(ds, MeViS) and ds.video_ids() == ["v1"]
    e0, e1 = ds.expressions("v1")
    assert (e0.text, e0.obj_ids, e1.obj_ids) == ("the bird flying away", (11,), (11, 12))
    assert ds.video("v1").frame_names == ("00000", "00001")
    assert ds.annotated_frames("v1") == ["00000", "00001"]


def test_union_and_null_frames(root):
    ds = MeViS(root, "train")
    np.testing.assert_array_equal(ds.object_mask("v1", "00000", (11, 12)), A1_F0)  # 12 absent: null
    union = ds.object_mask("v1", "00001", [11, 12])
    expected = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]], np.uint8)
    np.testing.assert_array_equal(union, expected)
    assert union.sum() == 5  # the overlapping pixel counted once
    assert ds.object_mask("v1", "00000", 12).shape == (H, W) and ds.object_mask("v1", "00000", 12).sum() == 0


def test_errors_name_file_and_key(root):
    with pytest.raises(DataError, match=r"split folder .*/valid_u does not exist \(folders: train\)"):
        MeViS(root, "valid_u")
    ds = MeViS(root, "train")
    with pytest.raises(DataError, match=r"mask_dict.json: missing key '99' \(anno_id\)"):
        ds.object_mask("v1", "00000", 99)
    with pytest.raises(DataError, match=r"frame 'zz' is not a frame of video 'v1'"):
        ds.object_mask("v1", "zz", 11)
    _write(f"{root}/train/mask_dict.json", json.dumps({"11": [_rle(A1_F0)]}).encode())
    with pytest.raises(DataError, match=r"mask_dict.json: key '11' must list 2 per-frame RLEs"):
        MeViS(root, "train").object_mask("v1", "00000", 11)
    meta_path = f"{root}/train/meta_expressions.json"
    meta = json.load(open(meta_path))
    meta["videos"]["v1"]["expressions"]["1"]["anno_id"] = [11, "x"]
    _write(meta_path, json.dumps(meta).encode())
    with pytest.raises(DataError, match=r"'videos.v1.expressions.1.anno_id' must be an integer"):
        MeViS(root, "train").expressions("v1")
