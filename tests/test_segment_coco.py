"""Ref-YouTube-VOS layout -> COCO instances: loads in pycocotools, areas equal the palettes'."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from rvos_ray import cli
from rvos_ray.data.coco_convert import image_dir, to_coco, write_coco
from rvos_ray.data.refytvos import RefYTVOS
from rvos_ray.data.synthetic import make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), videos=2, seed=3, height=64, width=96, min_frames=4, max_frames=6)
    return str(root)


def test_coco_loads_and_matches_the_palettes(shapes, tmp_path):
    out = tmp_path / "instances_train.json"
    write_coco(shapes, "train", str(out))
    coco = COCO(str(out))  # pycocotools' own API indexes it
    reader = RefYTVOS(shapes, "train")
    cats = reader.categories()

    frames = [(v, f) for v in reader.video_ids() for f in reader.annotated_frames(v)]
    assert len(coco.getImgIds()) == len(frames)  # one image per annotated frame
    names = sorted({c for v in cats.values() for c in v.values()})
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == names
    assert sorted(coco.cats) == list(range(1, len(names) + 1))

    n_objects = 0
    for img in coco.loadImgs(coco.getImgIds()):
        vid, frame = img["video_id"], img["frame_name"]
        assert img["file_name"] == f"{vid}/{frame}.jpg"
        labels = reader.label_map(vid, frame)
        assert (img["height"], img["width"]) == labels.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert sorted(a["obj_id"] for a in anns) == sorted(int(o) for o in np.unique(labels) if o)
        for a in anns:
            palette_mask = labels == a["obj_id"]
            assert a["area"] == palette_mask.sum()  # areas equal the palette masks' areas
            np.testing.assert_array_equal(coco.annToMask(a), palette_mask)
            assert coco.cats[a["category_id"]]["name"] == cats[vid][a["obj_id"]]
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(palette_mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            n_objects += 1
    assert n_objects == len(coco.getAnnIds()) > 0
    assert image_dir(shapes, "train").endswith("train/JPEGImages")


def test_unknown_object_category_names_meta(shapes, tmp_path):
    import shutil

    from rvos_ray.data.errors import DataError

    root = tmp_path / "copy"
    shutil.copytree(shapes, root)
    meta_path = root / "train" / "meta.json"
    meta = json.loads(meta_path.read_text())
    vid = sorted(meta["videos"])[0]
    meta["videos"][vid]["objects"].pop(sorted(meta["videos"][vid]["objects"])[0])
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json"):
        to_coco(str(root), "train")


def test_cli_to_coco(shapes, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cli.main(["to-coco", "--root", shapes, "--split", "valid", "--out", str(out)]) == 0
    assert "images" in capsys.readouterr().out and json.loads(out.read_text())["annotations"]
    assert cli.main(["to-coco", "--root", str(tmp_path / "nope"), "--out", str(out)]) == 2
