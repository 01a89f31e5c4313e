"""Ref-YouTube-VOS / Ref-DAVIS17 reader on a tiny hand-written fixture, and its errors."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from rvos_ray.data.datasets import open_dataset
from rvos_ray.data.errors import DataError
from rvos_ray.data.palette import encode_palette_png
from rvos_ray.data.refytvos import RefDAVIS17, RefYTVOS

# Frame f1 of video "vA": object 1 top-left 2x2, object 2 bottom-right 1x3.
LAB_F1 = np.array(
    [[1, 1, 0, 0, 0, 0],
     [1, 1, 0, 0, 0, 0],
     [0, 0, 0, 0, 0, 0],
     [0, 0, 0, 2, 2, 2]], dtype=np.uint8)
LAB_F0 = np.zeros((4, 6), dtype=np.uint8)
LAB_F0[0, 5] = 2


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 6, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _meta(videos: dict) -> bytes:
    return json.dumps({"videos": videos}).encode()


@pytest.fixture()
def root(tmp_path) -> str:
    r = str(tmp_path / "ytvos")
    valid = {
        "vA": {"expressions": {"0": {"exp": "a cat", "obj_id": "1"},
                               "1": {"exp": "two things", "obj_id": 2, "kind": "spatial"}},
               "frames": ["f0", "f1"]},
        "vB": {"expressions": {"0": {"exp": "unlabelled"}}, "frames": ["g0"]},
        "vT": {"expressions": {"0": {"exp": "a test video"}}, "frames": ["h0"]},
    }
    _write(f"{r}/meta_expressions/valid/meta_expressions.json", _meta(valid))
    _write(f"{r}/meta_expressions/test/meta_expressions.json", _meta({"vT": valid["vT"]}))
    for vid, frames in (("vA", ["f0", "f1"]), ("vB", ["g0"]), ("vT", ["h0"])):
        for f in frames:
            _write(f"{r}/valid/JPEGImages/{vid}/{f}.jpg", _jpeg())
    _write(f"{r}/valid/Annotations/vA/f0.png", encode_palette_png(LAB_F0))
    _write(f"{r}/valid/Annotations/vA/f1.png", encode_palette_png(LAB_F1))
    _write(f"{r}/valid/meta.json", json.dumps(
        {"videos": {"vA": {"objects": {"1": {"category": "cat", "frames": ["f1"]},
                                       "2": {"category": "dog", "frames": ["f0", "f1"]}}}}}).encode())
    return r


def _edit_meta(root: str, fn) -> str:
    path = f"{root}/meta_expressions/valid/meta_expressions.json"
    meta = json.load(open(path))
    fn(meta)
    _write(path, json.dumps(meta).encode())
    return path


def test_valid_is_valid_meta_minus_test_meta(root):
    assert RefYTVOS(root, "valid").video_ids() == ["vA", "vB"]
    # Test frames live under valid/ in the official release.
    test = RefYTVOS(root, "test")
    assert test.video_ids() == ["vT"]
    assert test.video("vT").frame_paths == (f"{root}/valid/JPEGImages/vT/h0.jpg",)
    os.remove(f"{root}/meta_expressions/test/meta_expressions.json")
    assert RefYTVOS(root, "valid").video_ids() == ["vA", "vB", "vT"]


def test_video_expressions_and_masks(root):
    ds = RefYTVOS(root, "valid")
    v = ds.video("vA")
    assert v.video_id == "vA" and v.frame_names == ("f0", "f1")
    assert v.frame_paths == (f"{root}/valid/JPEGImages/vA/f0.jpg", f"{root}/valid/JPEGImages/vA/f1.jpg")
    e0, e1 = ds.expressions("vA")
    assert (e0.exp_id, e0.text, e0.obj_ids, e0.kind) == ("0", "a cat", (1,), None)
    assert (e1.exp_id, e1.obj_ids, e1.kind) == ("1", (2,), "spatial")
    assert ds.expressions("vB")[0].obj_ids == ()  # official valid metas carry no obj_id
    assert ds.annotated_frames("vA") == ["f0", "f1"]
    assert ds.annotated_frames("vB") == []
    np.testing.assert_array_equal(ds.label_map("vA", "f1"), LAB_F1)
    m1 = ds.object_mask("vA", "f1", 1)
    assert m1.dtype == np.uint8 and m1.sum() == 4 and m1[:2, :2].all()
    both = ds.object_mask("vA", "f1", (1, 2))
    assert both.sum() == 7 and both[3, 3:].all()
    assert ds.object_mask("vA", "f0", [1]).sum() == 0
    assert ds.object_mask("vA", "f0", [2]).sum() == 1
    assert ds.categories() == {"vA": {1: "cat", 2: "dog"}}


def test_uri_root_and_factory(root):
    ds = open_dataset("file://" + root, "valid", "refytvos")
    assert ds.video_ids() == ["vA", "vB"]
    assert ds.label_map("vA", "f1")[3, 4] == 2
    assert ds.video("vA").frame_paths[0] == f"file://{root}/valid/JPEGImages/vA/f0.jpg"
    davis = open_dataset(root, "valid", "davis")
    assert isinstance(davis, RefDAVIS17) and davis.video_ids() == ["vA", "vB"]
    with pytest.raises(DataError, match="unknown dataset 'ytvos'"):
        open_dataset(root, "valid", "ytvos")


def test_missing_root_and_split(root, tmp_path):
    with pytest.raises(DataError, match="data root .*nowhere.* does not exist"):
        RefYTVOS(str(tmp_path / "nowhere"), "valid")
    with pytest.raises(DataError, match=r"split 'train' not found: .*meta_expressions/train/meta_expressions.json.*test, valid"):
        RefYTVOS(root, "train")
    os.makedirs(f"{root}/meta_expressions/extra")
    _write(f"{root}/meta_expressions/extra/meta_expressions.json", _meta({}))
    with pytest.raises(DataError, match=r"split folder .*/extra does not exist"):
        RefYTVOS(root, "extra")


def test_malformed_meta_names_file_and_key(root):
    path = f"{root}/meta_expressions/valid/meta_expressions.json"
    _write(path, b'{"videos": {')
    with pytest.raises(DataError, match=r"meta_expressions.json: meta_expressions.json is not valid JSON"):
        RefYTVOS(root, "valid")
    _write(path, b'{"vids": {}}')
    with pytest.raises(DataError, match=r"meta_expressions.json: missing key 'videos'"):
        RefYTVOS(root, "valid")
    _write(path, _meta({"vA": {"expressions": {}}}))
    with pytest.raises(DataError, match=r"missing key 'videos.vA.frames'"):
        RefYTVOS(root, "valid")
    _write(path, _meta({"vA": {"expressions": {}, "frames": "f0"}}))
    with pytest.raises(DataError, match=r"key 'videos.vA.frames' must be a JSON array"):
        RefYTVOS(root, "valid")
    _write(path, _meta({"vA": {"expressions": {"0": {"obj_id": "1"}}, "frames": ["f0"]}}))
    with pytest.raises(DataError, match=r"missing key 'videos.vA.expressions.0.exp'"):
        RefYTVOS(root, "valid").expressions("vA")


@pytest.mark.parametrize("bad", ["1.5", "one", True, 2.0, None, [1]])
def test_non_integer_obj_id(root, bad):
    path = _edit_meta(root, lambda m: m["videos"]["vA"]["expressions"]["0"].update(obj_id=bad))
    ds = RefYTVOS(root, "valid")
    with pytest.raises(DataError) as e:
        ds.expressions("vA")
    assert path in str(e.value) and "'videos.vA.expressions.0.obj_id' must be an integer object id" in str(e.value)


def test_missing_video_folder_and_frame(root):
    import shutil

    os.remove(f"{root}/valid/JPEGImages/vA/f1.jpg")
    with pytest.raises(DataError, match=r"JPEGImages/vA lacks 1 frame.*'f1.jpg'"):
        RefYTVOS(root, "valid").video("vA")
    shutil.rmtree(f"{root}/valid/JPEGImages/vB")
    with pytest.raises(DataError, match=r"video folder .*/valid/JPEGImages/vB does not exist"):
        RefYTVOS(root, "valid").video("vB")
    with pytest.raises(DataError, match=r"video 'nope' is not in split 'valid'"):
        RefYTVOS(root, "valid").video("nope")


def test_bad_annotation_pngs(root):
    ann = f"{root}/valid/Annotations/vA/f1.png"
    good = open(ann, "rb").read()
    _write(ann, good[: len(good) // 2])
    with pytest.raises(DataError, match=r"f1.png: unreadable or truncated annotation PNG.*palette \('P' mode\)"):
        RefYTVOS(root, "valid").label_map("vA", "f1")
    buf = io.BytesIO()
    Image.fromarray(LAB_F1 * 100).save(buf, format="PNG")  # greyscale 'L', not a palette
    _write(ann, buf.getvalue())
    with pytest.raises(DataError, match=r"f1.png: annotation PNG has mode 'L', expected a palette \('P' mode\) PNG"):
        RefYTVOS(root, "valid").object_mask("vA", "f1", 1)
    _write(ann, _jpeg())
    with pytest.raises(DataError, match=r"f1.png: annotation is JPEG"):
        RefYTVOS(root, "valid").label_map("vA", "f1")
    with pytest.raises(DataError, match=r"vA/f9.png: annotation PNG does not exist"):
        RefYTVOS(root, "valid").label_map("vA", "f9")


def test_missing_or_bad_meta_json(root):
    os.remove(f"{root}/valid/meta.json")
    with pytest.raises(DataError, match=r"valid/meta.json: meta.json does not exist"):
        RefYTVOS(root, "valid").categories()
    _write(f"{root}/valid/meta.json", json.dumps({"videos": {"vA": {"objects": {"x": {"category": "c"}}}}}).encode())
    with pytest.raises(DataError, match=r"key 'videos.vA.objects.x' must be an integer object id"):
        RefYTVOS(root, "valid").categories()
