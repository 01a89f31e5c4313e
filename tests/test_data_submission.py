"""Submission writer: 0/255 single-channel PNGs, zip in each benchmark's layout (Annotations/ at
its root, or MeViS's video folders at its root), and the tracklet + prediction tables -> PNGs
helper."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from rvos_ray import masks
from rvos_ray.data.errors import DataError
from rvos_ray.data.submission import submission_layout, write_predictions, write_submission, zip_submission
from rvos_ray.types import PREDICTION_SCHEMA, TRACKLET_SCHEMA, Expression, Video, table_from_columns


def _png(path: str) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_write_and_zip_round_trip(tmp_path):
    out = str(tmp_path / "sub")
    m1 = np.array([[0, 1], [1, 1]], np.uint8)
    m2 = np.zeros((2, 2), bool)
    n = write_submission(out, [("v1", "0", "00000", m1), ("v1", "0", "00005", m2), ("v2", "3", "00000", m1 * 255)])
    assert n == 3
    mode, arr = _png(f"{out}/Annotations/v1/0/00000.png")
    assert mode == "L" and arr.tolist() == [[0, 255], [255, 255]]
    assert _png(f"{out}/Annotations/v1/0/00005.png")[1].tolist() == [[0, 0], [0, 0]]
    assert _png(f"{out}/Annotations/v2/3/00000.png")[1].tolist() == [[0, 255], [255, 255]]

    zpath = str(tmp_path / "zips" / "submission.zip")
    assert zip_submission(out, zpath) == 3
    with zipfile.ZipFile(zpath) as zf:
        names = sorted(zf.namelist())
        assert names == ["Annotations/v1/0/00000.png", "Annotations/v1/0/00005.png", "Annotations/v2/3/00000.png"]
        for name in names:
            with open(os.path.join(out, name), "rb") as f:
                assert zf.read(name) == f.read()
    assert os.listdir(tmp_path / "zips") == ["submission.zip"]  # no temp file left behind
    first = open(zpath, "rb").read()
    zip_submission(out, zpath)
    assert open(zpath, "rb").read() == first  # same PNGs, same zip bytes


@pytest.mark.parametrize("dataset, prefix", [("refytvos", "Annotations/"), ("davis", "Annotations/"), ("mevis", "")])
def test_zip_layout_per_benchmark(tmp_path, dataset, prefix):
    # Ref-YouTube-VOS / Ref-DAVIS: Annotations/ at the zip root. MeViS: its server takes the
    # prediction folder's contents (cd inference && zip -r submission.zip ./*), i.e. the video
    # folders at the zip root.
    out = str(tmp_path / "sub")
    m = np.array([[0, 1], [1, 1]], np.uint8)
    write_submission(out, [("v1", "0", "00000", m), ("v2", "3", "00007", m)])
    zpath = str(tmp_path / f"{dataset}.zip")
    assert zip_submission(out, zpath, dataset=dataset) == 2
    with zipfile.ZipFile(zpath) as zf:
        names = sorted(zf.namelist())
        assert names == [prefix + "v1/0/00000.png", prefix + "v2/3/00007.png"]
        assert zf.read(prefix + "v1/0/00000.png") == open(f"{out}/Annotations/v1/0/00000.png", "rb").read()
    assert submission_layout(dataset) == ("annotations" if prefix else "videos")


def test_zip_of_unknown_dataset_is_a_data_error(tmp_path):
    out = str(tmp_path / "sub")
    write_submission(out, [("v1", "0", "00000", np.ones((2, 2), np.uint8))])
    with pytest.raises(DataError, match=r"unknown dataset 'ytvos'.*davis, mevis, refytvos"):
        zip_submission(out, str(tmp_path / "s.zip"), dataset="ytvos")
    assert not os.path.exists(tmp_path / "s.zip")


def test_zip_of_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nothing/Annotations: submission folder does not exist"):
        zip_submission(str(tmp_path / "nothing"), str(tmp_path / "s.zip"))


def _tables():
    h, w = 2, 3
    a0 = np.array([[1, 0, 0], [0, 0, 0]], np.uint8)
    a2 = np.array([[0, 0, 0], [0, 1, 1]], np.uint8)
    b1 = np.array([[1, 1, 1], [1, 1, 1]], np.uint8)
    rows = [  # tracklet 5 lacks frame 1; tracklet 6 only has frame 1; another video's row
        ("vid", 5, 0, a0), ("vid", 5, 2, a2), ("vid", 6, 1, b1), ("other", 5, 1, b1),
    ]
    trk = table_from_columns({
        "video_id": [r[0] for r in rows], "tracklet_id": [r[1] for r in rows],
        "keyframe": [0] * len(rows), "source": ["htc"] * len(rows), "det_score": [0.9] * len(rows),
        "frame": [r[2] for r in rows], "height": [h] * len(rows), "width": [w] * len(rows),
        "rle": [masks.encode(r[3]) for r in rows], "prob": [1.0] * len(rows),
    }, TRACKLET_SCHEMA)
    pred = table_from_columns({
        "video_id": ["vid", "vid", "vid", "other"], "exp_id": ["0", "1", "2", "0"],
        "tracklet_id": [5, 6, 42, 5], "score": [0.8, 0.5, 0.1, 0.3],
    }, PREDICTION_SCHEMA)
    return trk, pred, a0, a2, b1


def test_write_predictions_chosen_tracklet_per_frame(tmp_path):
    trk, pred, a0, a2, b1 = _tables()
    video = Video("vid", ("00000", "00005", "00010"), ("a.jpg", "b.jpg", "c.jpg"))
    out = str(tmp_path / "sub")
    exps = [Expression("vid", e, "x", (1,)) for e in ("0", "1", "2", "3")]
    n = write_predictions(out, trk, pred, video, expressions=exps)
    assert n == 4 * 3
    got = {(e, f): _png(f"{out}/Annotations/vid/{e}/{f}.png")[1] // 255
           for e in "0123" for f in video.frame_names}
    zero = np.zeros((2, 3), np.uint8)
    np.testing.assert_array_equal(got["0", "00000"], a0)
    np.testing.assert_array_equal(got["0", "00005"], zero)  # tracklet missing on this frame
    np.testing.assert_array_equal(got["0", "00010"], a2)
    np.testing.assert_array_equal(got["1", "00005"], b1)
    np.testing.assert_array_equal(got["1", "00000"], zero)
    for f in video.frame_names:  # unknown tracklet 42, and expression 3 with no prediction
        np.testing.assert_array_equal(got["2", f], zero)
        np.testing.assert_array_equal(got["3", f], zero)
    assert not os.path.exists(f"{out}/Annotations/other")


def test_write_predictions_without_tracklets_reads_frame_size(tmp_path):
    trk, pred, *_ = _tables()
    frame = tmp_path / "f.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 7, 3), np.uint8)).save(buf, format="JPEG")
    frame.write_bytes(buf.getvalue())
    video = Video("lonely", ("00000",), (str(frame),))
    out = str(tmp_path / "sub")
    n = write_predictions(out, trk, pred, video, expressions=[Expression("lonely", "0", "x", (1,))])
    assert n == 1
    assert _png(f"{out}/Annotations/lonely/0/00000.png")[1].shape == (4, 7)


def test_write_predictions_rejects_duplicate_rows(tmp_path):
    trk, _, *_ = _tables()
    pred = table_from_columns({"video_id": ["vid", "vid"], "exp_id": ["0", "0"], "tracklet_id": [5, 6],
                               "score": [0.5, 0.4]}, PREDICTION_SCHEMA)
    video = Video("vid", ("00000",), ("a.jpg",))
    with pytest.raises(DataError, match=r"expression '0' of video 'vid' has several rows"):
        write_predictions(str(tmp_path), trk, pred, video)
