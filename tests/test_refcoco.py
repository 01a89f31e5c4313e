"""REFER-format reader: a fixture written here loads; the restricted unpickler refuses code."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from rvos_ray import masks as rle
from rvos_ray.data.errors import DataError
from rvos_ray.data.refcoco import RefCOCO, load_refs


def _py2_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING: how Python 2 pickles a str


def _py2_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)  # BININT


def _py2_refs_pickle() -> bytes:
    """A protocol-2 pickle as REFER ships it (written by Python 2: text as byte strings)."""
    sent = b"}(" + _py2_str("sent") + _py2_str("the caf\u00e9 cup on the left") + _py2_str("sent_id") + _py2_int(5) + b"u"
    ref = (b"}(" + _py2_str("ref_id") + _py2_int(0) + _py2_str("ann_id") + _py2_int(11)
           + _py2_str("image_id") + _py2_int(1) + _py2_str("split") + _py2_str("train")
           + _py2_str("category_id") + _py2_int(1) + _py2_str("sentences") + b"](" + sent + b"e" + b"u")
    return b"\x80\x02](" + ref + b"e."


def _write_fixture(root, refs_bytes=None):
    d = root / "refcoco"
    d.mkdir(parents=True)
    imgs = root / "images" / "mscoco" / "images" / "train2014"
    imgs.mkdir(parents=True)
    for iid, (h, w) in {1: (40, 60), 2: (30, 30)}.items():
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(imgs / f"COCO_train2014_{iid:012d}.jpg")
    crowd = rle.encode(np.pad(np.ones((4, 4), np.uint8), ((0, 36), (0, 56))))
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 60},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 30, "width": 30}],
        "annotations": [
            # image 1: a 10x20 rectangle (polygon), a 20x20 one, a crowd region (skipped)
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 200.0,
             "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]], "bbox": [0, 0, 20, 10]},
            {"id": 12, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 400.0,
             "segmentation": [[30, 10, 50, 10, 50, 30, 30, 30]], "bbox": [30, 10, 20, 20]},
            {"id": 13, "image_id": 1, "category_id": 3, "iscrowd": 1, "area": 16.0,
             "segmentation": {"size": [40, 60], "counts": crowd.decode()}, "bbox": [0, 0, 4, 4]},
            {"id": 21, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 100.0,
             "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]], "bbox": [5, 5, 10, 10]},
        ],
        "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "plate"}, {"id": 3, "name": "people"}],
    }
    (d / "instances.json").write_text(json.dumps(instances))
    if refs_bytes is None:
        refs = [
            {"ref_id": 0, "ann_id": 12, "image_id": 1, "split": "train", "category_id": 2,
             "sentences": [{"sent_id": 0, "sent": "the big plate"}, {"sent_id": 1, "sent": "right plate"}]},
            {"ref_id": 1, "ann_id": 21, "image_id": 2, "split": "val", "category_id": 1,
             "sentences": [{"sent_id": 2, "sent": "the cup"}]},
        ]
        refs_bytes = pickle.dumps(refs, protocol=4)
    (d / "refs(unc).p").write_bytes(refs_bytes)
    return root


def test_refer_fixture_loads(tmp_path):
    ds = RefCOCO(str(_write_fixture(tmp_path)), "refcoco", "unc")
    assert ds.splits() == ["train", "val"]
    train = list(ds.samples("train"))
    assert [s.text for s in train] == ["the big plate", "right plate"]
    s = train[0]
    assert s.ann_ids == (11, 12)  # crowd annotation 13 is not a candidate
    assert s.target == 1 and (s.height, s.width) == (40, 60)
    assert s.image_path.endswith("images/mscoco/images/train2014/COCO_train2014_000000000001.jpg")
    assert os.path.exists(s.image_path)
    # polygon rasterisation: 20x10 and 20x20 rectangles (pycocotools includes the far edges)
    a = rle.areas(list(s.rles), 40, 60)
    assert 200 <= a[0] <= 231 and 400 <= a[1] <= 441
    m = rle.decode(s.rles[1], 40, 60)
    assert m[20, 40] == 1 and m[5, 5] == 0
    (v,) = ds.samples("val")
    assert (v.ann_ids, v.target, v.text) == ((21,), 0, "the cup")
    # max_candidates keeps the target (and the largest others)
    assert list(ds.samples("train", max_candidates=1))[0].ann_ids == (12,)


def test_python2_refs_pickle_loads(tmp_path):
    (tmp_path / "x").mkdir()
    p = tmp_path / "x" / "refs.p"
    p.write_bytes(_py2_refs_pickle())
    (ref,) = load_refs(str(p))
    assert ref == {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1,
                   "sentences": [{"sent": "the caf\u00e9 cup on the left", "sent_id": 5}]}
    ds = RefCOCO(str(_write_fixture(tmp_path / "r", _py2_refs_pickle())), "refcoco", "unc")
    (s,) = ds.samples("train")
    assert s.target == 0 and s.ann_ids == (11, 12)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps([{"ref_id": 0, "payload": _RunsCode(marker)}], protocol=2)
    path = tmp_path / "evil.p"
    path.write_bytes(evil)
    with pytest.raises(DataError, match=r"refusing to load global (posix|os)\.system"):
        load_refs(str(path))
    assert not marker.exists()
    # a plain pickle of an arbitrary class instance is refused too
    path.write_bytes(pickle.dumps([DataError("x")]))
    with pytest.raises(DataError, match="refusing to load global"):
        load_refs(str(path))


def test_bad_refer_input_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"refs\(unc\)\.p does not exist"):
        RefCOCO(str(tmp_path), "refcoco", "unc")
    p = tmp_path / "refs.p"
    p.write_bytes(pickle.dumps([{"ref_id": 0}]))
    with pytest.raises(DataError, match="ref 0 has no 'ann_id'"):
        load_refs(str(p))
