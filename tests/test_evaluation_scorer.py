"""The scorer end to end: a tiny dataset written here, submissions as folders and zips, the CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rvos_ray import cli
from rvos_ray.data.errors import DataError
from rvos_ray.data.refytvos import RefYTVOS
from rvos_ray.evaluation.predictions import MemoryPredictions, open_predictions
from rvos_ray.evaluation.scorer import Scorer, score_split
from rvos_ray.types import METRICS_SCHEMA
from test_evaluation_metrics import ref_jf  # the plain per-frame reference

H, W = 64, 96
FRAMES = {"v0": ["00000", "00005", "00010", "00015", "00020"], "v1": ["00000", "00003", "00006", "00009"]}
# video -> exp_id -> obj_id
EXPRESSIONS = {"v0": {"0": 1, "1": 1, "2": 2}, "v1": {"0": 1, "1": 2, "2": 3}}


def _objects(vid: str, t: int) -> dict[int, np.ndarray]:
    """Each object's full mask on frame index t (later ids are drawn over earlier ones)."""
    out = {}
    yy, xx = np.mgrid[:H, :W]
    m1 = np.zeros((H, W), bool)
    m1[10 + t:30 + t, 5 + 4 * t:25 + 4 * t] = True
    out[1] = m1
    out[2] = (yy - 40) ** 2 + (xx - 60 + 3 * t) ** 2 <= (8 + t) ** 2
    if vid == "v1":
        m3 = np.zeros((H, W), bool)
        if t < 2:  # object 3 leaves after the second annotated frame
            m3[50:H, 80 - 5 * t:W] = True  # touches the bottom-right border
        out[3] = m3
    return out


def gt_label_map(vid: str, t: int) -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    for oid, m in _objects(vid, t).items():
        lab[m] = oid
    return lab


def _write_png(path: str, arr: np.ndarray, palette: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(arr)
    if palette:
        im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)
    im.save(path)


@pytest.fixture
def root(tmp_path):
    """A Ref-YouTube-VOS-layout split 'valid' with palette annotations (no frames needed)."""
    r = tmp_path / "data"
    videos = {}
    for vid, frames in FRAMES.items():
        for t, name in enumerate(frames):
            _write_png(str(r / "valid" / "Annotations" / vid / f"{name}.png"), gt_label_map(vid, t), palette=True)
        videos[vid] = {
            "expressions": {e: {"exp": f"object {o}", "obj_id": str(o)} for e, o in EXPRESSIONS[vid].items()},
            "frames": frames,
        }
    meta = r / "meta_expressions" / "valid" / "meta_expressions.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"videos": videos}))
    return str(r)


def gt_masks() -> dict[tuple[str, str, str], np.ndarray]:
    """(video, exp_id, frame) -> 0/1 ground-truth mask of the expression's object."""
    out = {}
    for vid, frames in FRAMES.items():
        for t, name in enumerate(frames):
            lab = gt_label_map(vid, t)
            for e, o in EXPRESSIONS[vid].items():
                out[(vid, e, name)] = (lab == o).astype(np.uint8)
    return out


def perturbed(seed: int = 0) -> dict[tuple[str, str, str], np.ndarray | None]:
    """Shifted, eroded, emptied, replaced and missing (None) predictions."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, m in gt_masks().items():
        roll = rng.random()
        if roll < 0.1:
            out[k] = None
        elif roll < 0.2:
            out[k] = np.zeros_like(m)
        elif roll < 0.6:
            out[k] = np.roll(m, (rng.integers(-4, 5), rng.integers(-4, 5)), axis=(0, 1))
        elif roll < 0.8:
            p = m.copy()
            p[rng.random(m.shape) < 0.05] ^= 1
            out[k] = p
        else:
            out[k] = m.copy()
    return out


def write_submission(folder, masks) -> str:
    for (vid, e, name), m in masks.items():
        if m is not None:
            _write_png(os.path.join(folder, "Annotations", vid, e, f"{name}.png"), (m != 0).astype(np.uint8) * 255)
    return str(folder)


def zip_folder(folder: str, zpath: str, prefix: str = "") -> str:
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for d, _, files in os.walk(folder):
            for f in files:
                p = os.path.join(d, f)
                zf.write(p, prefix + os.path.relpath(p, folder))
    return zpath


def expected(preds, protocol: str = "rvos") -> dict[tuple[str, str], tuple[float, float, int]]:
    """Independent computation: reference J/F per frame, mean per expression."""
    gts = gt_masks()
    out = {}
    for vid, frames in FRAMES.items():
        use = frames if protocol == "rvos" else frames[1:-1]
        for e in EXPRESSIONS[vid]:
            vals = []
            for name in use:
                p = preds[(vid, e, name)]
                vals.append(ref_jf(gts[(vid, e, name)], np.zeros((H, W), np.uint8) if p is None else p))
            out[(vid, e)] = (float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals])), len(use))
    return out


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(["score", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def read_csv(path: str) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as f:
        return {(r["video"], r["exp_id"]): r for r in csv.DictReader(f)}


# ------------------------------------------------------------------------------------------


def test_ground_truth_as_submission_scores_exactly_one(root, tmp_path, capsys):
    sub = write_submission(tmp_path / "sub", gt_masks())
    out = str(tmp_path / "m.csv")
    rc, stdout, _ = run_cli(["--data-root", root, "--split", "valid", "--predictions", sub, "--out", out,
                             "--workers", "1"], capsys)
    assert rc == 0
    rows = read_csv(out)
    assert len(rows) == 6
    for r in rows.values():
        assert (float(r["J"]), float(r["F"]), float(r["J&F"])) == (1.0, 1.0, 1.0)
    assert rows[("v0", "0")]["n_frames"] == "5" and rows[("v1", "2")]["n_frames"] == "4"
    assert "scored 2 of 2 listed videos, 6 of 6 listed expressions: 27 expression-frames (9 annotated frames)" in stdout
    assert "(mean over 6 of 6 listed expressions)" in stdout
    assert "missing prediction frames: 0 of 27" in stdout
    assert "J 1.0000   F 1.0000   J&F 1.0000" in stdout


def test_perturbed_submission_equals_independent_computation(root, tmp_path):
    preds = perturbed(seed=1)
    sub = write_submission(tmp_path / "sub", preds)
    for protocol in ("rvos", "davis"):
        report = score_split(root, "valid", sub, protocol=protocol, workers=1)
        want = expected(preds, protocol)
        got = {(r.video, r.exp_id): r for r in report.expressions}
        assert set(got) == set(want)
        for k, (j, f, n) in want.items():
            assert got[k].J == pytest.approx(j, abs=1e-6)
            assert got[k].F == pytest.approx(f, abs=1e-6)
            assert got[k].n_frames == n
        s = report.summary()
        if protocol == "rvos":
            assert s["J"] == pytest.approx(np.mean([v[0] for v in want.values()]), abs=1e-9)
            assert s["F"] == pytest.approx(np.mean([v[1] for v in want.values()]), abs=1e-9)
        assert s["J&F"] == pytest.approx((s["J"] + s["F"]) / 2)
        assert 0 < s["J"] < 1 and 0 < s["F"] < 1  # really perturbed


def test_davis_protocol_aggregates_per_object(root, tmp_path):
    # v0: exps 0 and 1 both refer to object 1; exp 0 perfect (J=F=1), exp 1 empty (0, 0; the
    # object is on every frame), exp 2 (object 2) perfect. v1: all perfect.
    preds = gt_masks()
    for name in FRAMES["v0"]:
        preds[("v0", "1", name)] = np.zeros((H, W), np.uint8)
    sub = write_submission(tmp_path / "sub", preds)
    report = score_split(root, "valid", sub, protocol="davis", workers=1)
    rows = {(r.video, r.exp_id): r for r in report.expressions}
    assert (rows[("v0", "1")].J, rows[("v0", "1")].F, rows[("v0", "1")].n_frames) == (0.0, 0.0, 3)
    s = report.summary()
    # objects: v0/1 -> mean(1, 0) = 0.5, v0/2 -> 1, v1/1, v1/2, v1/3 -> 1: (0.5 + 4) / 5
    assert s["n_objects"] == 5
    assert s["J"] == pytest.approx(0.9) and s["F"] == pytest.approx(0.9)
    # the same submission under "rvos": mean over 6 expressions of (1, 0, 1, 1, 1, 1)
    assert score_split(root, "valid", sub, protocol="rvos", workers=1).summary()["J"] == pytest.approx(5 / 6)


def test_missing_frames_are_empty_and_counted(root, tmp_path, capsys):
    preds = gt_masks()
    dropped = [("v0", "2", "00010"), ("v1", "0", "00000"), ("v1", "2", "00009")]
    for k in dropped:
        preds[k] = None
    sub = write_submission(tmp_path / "sub", preds)
    out = str(tmp_path / "m.csv")
    rc, stdout, _ = run_cli(["--data-root", root, "--predictions", sub, "--out", out, "--workers", "1"], capsys)
    assert rc == 0
    assert "missing prediction frames: 3 of 27" in stdout
    assert os.path.join("v0", "2", "00010.png") in stdout
    rows = read_csv(out)
    # v0/2: one of five frames empty against a present object: J = F = 4/5
    assert float(rows[("v0", "2")]["J"]) == pytest.approx(0.8)
    assert float(rows[("v0", "2")]["F"]) == pytest.approx(0.8)
    # v1/2 (object 3) is absent on frame 00009: a missing (empty) prediction is right there
    assert float(rows[("v1", "2")]["J"]) == 1.0
    report = score_split(root, "valid", sub, workers=1)
    assert report.n_missing == 3
    assert {(r.video, r.exp_id): r.n_missing for r in report.expressions}[("v1", "0")] == 1


def test_strict_makes_a_missing_frame_an_error(root, tmp_path, capsys):
    preds = gt_masks()
    preds[("v1", "1", "00006")] = None
    sub = write_submission(tmp_path / "sub", preds)
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(tmp_path / "m.csv"),
                          "--strict", "--workers", "1"], capsys)
    assert rc == 2
    assert os.path.join("v1", "1", "00006.png") in err and "missing" in err
    assert not (tmp_path / "m.csv").exists()


def test_wrong_size_prediction_names_file_and_expected_size(root, tmp_path, capsys):
    sub = write_submission(tmp_path / "sub", gt_masks())
    bad = os.path.join(sub, "Annotations", "v1", "0", "00003.png")
    _write_png(bad, np.zeros((H, W + 1), np.uint8))
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(tmp_path / "m.csv"),
                          "--workers", "2"], capsys)
    assert rc == 2
    assert bad in err and f"is {W + 1}x{H}" in err and f"expected {W}x{H}" in err
    assert "Traceback" not in err


def test_unreadable_prediction_names_file(root, tmp_path, capsys):
    sub = write_submission(tmp_path / "sub", gt_masks())
    bad = os.path.join(sub, "Annotations", "v0", "1", "00005.png")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(tmp_path / "m.csv"),
                          "--workers", "1"], capsys)
    assert rc == 2 and bad in err and "PNG" in err
    open(bad, "wb").write(b"not a png at all")
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(tmp_path / "m.csv"),
                          "--workers", "1"], capsys)
    assert rc == 2 and bad in err and "not a PNG" in err


def test_rgb_prediction_is_refused_and_palette_counts_by_index(root, tmp_path):
    src = tmp_path / "p"
    rgb = np.zeros((H, W, 3), np.uint8)
    _write_png(str(src / "rgb.png"), rgb)
    from rvos_ray.evaluation.predictions import decode_mask_png

    with pytest.raises(DataError, match="mode 'RGB'.*single-channel"):
        decode_mask_png(open(src / "rgb.png", "rb").read(), "rgb.png")
    idx = np.zeros((H, W), np.uint8)
    idx[5:9, 7:20] = 1  # palette colour of index 1 is (128, 0, 0)
    _write_png(str(src / "pal.png"), idx, palette=True)
    got = decode_mask_png(open(src / "pal.png", "rb").read(), "pal.png")
    assert np.array_equal(got != 0, idx != 0)


def test_missing_predictions_and_bad_paths(root, tmp_path, capsys):
    out = str(tmp_path / "m.csv")
    rc, _, err = run_cli(["--data-root", root, "--predictions", str(tmp_path / "nope"), "--out", out], capsys)
    assert rc == 2 and str(tmp_path / "nope") in err and "do not exist" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["--data-root", root, "--predictions", str(tmp_path / "empty"), "--out", out], capsys)
    assert rc == 2 and "no Annotations/ folder" in err
    sub = write_submission(tmp_path / "sub", gt_masks())
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(tmp_path / "m.txt")], capsys)
    assert rc == 2 and ".csv or .parquet" in err
    rc, _, err = run_cli(["--data-root", str(tmp_path / "no-root"), "--predictions", sub, "--out", out], capsys)
    assert rc == 2 and "no-root" in err


def test_zip_equals_folder_and_parquet_output(root, tmp_path, capsys):
    preds = perturbed(seed=2)
    sub = write_submission(tmp_path / "sub", preds)
    z = zip_folder(sub, str(tmp_path / "sub.zip"))
    nested = zip_folder(sub, str(tmp_path / "nested.zip"), prefix="my_submission/")
    tables = []
    for p, out in [(sub, "a.parquet"), (z, "b.parquet"), (nested, "c.parquet")]:
        rc, _, _ = run_cli(["--data-root", root, "--predictions", p, "--out", str(tmp_path / out)], capsys)
        assert rc == 0
        t = pq.read_table(tmp_path / out)
        assert t.schema.equals(METRICS_SCHEMA)
        tables.append(t)
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert score_split(root, "valid", z, workers=1).n_missing == sum(v is None for v in preds.values())


def test_process_pool_and_threads_equal_serial(root, tmp_path):
    preds = perturbed(seed=3)
    sub = write_submission(tmp_path / "sub", preds)
    serial = score_split(root, "valid", sub, workers=1).table()
    assert score_split(root, "valid", sub, workers=2).table().equals(serial)
    reader = RefYTVOS(root, "valid")
    assert Scorer(reader).score(open_predictions(sub), workers=2).table().equals(serial)


def test_in_memory_predictions_dict_and_callable(root):
    preds = perturbed(seed=4)
    reader = RefYTVOS(root, "valid")
    from_dict = Scorer(reader).score(MemoryPredictions({k: v for k, v in preds.items() if v is not None}))
    from_fn = Scorer(reader, protocol="rvos").score(MemoryPredictions(lambda v, e, f: preds[(v, e, f)]))
    want = expected(preds)
    for report in (from_dict, from_fn):
        assert report.n_missing == sum(v is None for v in preds.values())
        for r in report.expressions:
            assert (r.J, r.F) == pytest.approx(want[(r.video, r.exp_id)][:2], abs=1e-6)
    with pytest.raises(DataError, match="missing"):
        Scorer(reader, strict=True).score(MemoryPredictions(lambda v, e, f: preds[(v, e, f)]))


def test_expression_without_frames_is_nan_and_left_out(tmp_path):
    # A video with 2 annotated frames has none under "davis" (first and last excluded).
    r = tmp_path / "d"
    for t, name in enumerate(["00000", "00001"]):
        _write_png(str(r / "valid" / "Annotations" / "a" / f"{name}.png"), gt_label_map("v0", t), palette=True)
    meta = r / "meta_expressions" / "valid" / "meta_expressions.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"videos": {"a": {"expressions": {"0": {"exp": "x", "obj_id": "1"}},
                                                  "frames": ["00000", "00001"]}}}))
    sub = write_submission(tmp_path / "sub", {})
    os.makedirs(os.path.join(sub, "Annotations"), exist_ok=True)
    report = score_split(str(r), "valid", sub, protocol="davis", workers=1)
    (row,) = report.expressions
    assert row.n_frames == 0 and math.isnan(row.J)
    assert report.summary()["n_expressions_without_frames"] == 1


def test_score_does_not_import_torch_or_ray(root, tmp_path):
    sub = write_submission(tmp_path / "sub", gt_masks())
    code = (
        "import sys; from rvos_ray import cli\n"
        f"rc = cli.main(['score', '--data-root', {root!r}, '--predictions', {sub!r}, "
        f"'--out', {str(tmp_path / 'm.csv')!r}, '--workers', '2'])\n"
        "heavy = [m for m in ('torch', 'ray', 'mmdet', 'mmcv', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in res.stdout, res.stdout + res.stderr


def test_synthetic_benchmark_through_the_submission_writer(tmp_path, capsys):
    """make-shapes -> ground truth through data.submission (folder and zip) -> exactly 1.0."""
    from rvos_ray.data.submission import write_submission as write_sub, zip_submission
    from rvos_ray.data.synthetic import make_shapes

    data = str(tmp_path / "shapes")
    make_shapes(data, videos=2, seed=5, height=64, width=96, min_frames=8, max_frames=10)
    reader = RefYTVOS(data, "valid")
    items = [(v, e.exp_id, f, reader.object_mask(v, f, e.obj_ids))
             for v in reader.video_ids() for e in reader.expressions(v) for f in reader.annotated_frames(v)]
    sub = str(tmp_path / "sub")
    write_sub(sub, items)
    z = str(tmp_path / "sub.zip")
    zip_submission(sub, z)
    for p in (sub, z):
        rc, stdout, _ = run_cli(["--data-root", data, "--predictions", p, "--out", str(tmp_path / "m.csv"),
                                 "--json"], capsys)
        assert rc == 0
        s = json.loads(stdout.strip().splitlines()[-1])
        assert (s["J"], s["F"], s["J&F"]) == (1.0, 1.0, 1.0)
        assert s["n_frames"] == len(items) and s["n_missing"] == 0 and s["n_videos"] == 2


def test_mevis_union_of_objects(tmp_path, capsys):
    """MeViS: an expression refers to several objects; its ground truth is their union."""
    from pycocotools import mask as coco_mask

    root = tmp_path / "mevis"
    frames = ["00000", "00001", "00002"]
    objs = {a: [_objects("v1", t)[a] for t in range(3)] for a in (1, 2, 3)}

    def rle(m):
        if not m.any():
            return None
        r = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        return {"size": [H, W], "counts": r["counts"].decode("ascii")}

    (root / "valid_u").mkdir(parents=True)
    (root / "valid_u" / "mask_dict.json").write_text(json.dumps({str(a): [rle(m) for m in ms] for a, ms in objs.items()}))
    exps = {"0": {"exp": "the two", "obj_id": [0, 1], "anno_id": [1, 2]}, "1": {"exp": "three", "obj_id": [2], "anno_id": [3]}}
    (root / "valid_u" / "meta_expressions.json").write_text(
        json.dumps({"videos": {"m0": {"expressions": exps, "frames": frames}}}))
    union = [objs[1][t] | objs[2][t] for t in range(3)]
    preds = {("m0", "0", frames[t]): np.roll(union[t], (0, 2 * t), axis=(0, 1)).astype(np.uint8) for t in range(3)}
    preds.update({("m0", "1", f): objs[3][t].astype(np.uint8) for t, f in enumerate(frames)})
    sub = write_submission(tmp_path / "sub", preds)
    report = score_split(str(root), "valid_u", sub, dataset="mevis", workers=1)
    rows = {r.exp_id: r for r in report.expressions}
    want = [ref_jf(union[t], preds[("m0", "0", frames[t])]) for t in range(3)]
    assert rows["0"].J == pytest.approx(np.mean([w[0] for w in want]), abs=1e-6)
    assert rows["0"].F == pytest.approx(np.mean([w[1] for w in want]), abs=1e-6)
    assert rows["0"].J < 1 and (rows["1"].J, rows["1"].F) == (1.0, 1.0)

    # the run's zip in MeViS's layout (video folders at the root) is found and scores the same
    from rvos_ray.data.submission import zip_submission

    z = str(tmp_path / "mevis.zip")
    zip_submission(sub, z, dataset="mevis")
    with zipfile.ZipFile(z) as zf:
        assert sorted(zf.namelist())[0] == "m0/0/00000.png"
    assert score_split(str(root), "valid_u", z, dataset="mevis", workers=1).table().equals(report.table())
    # an Annotations/ zip still scores, with a note that the MeViS server wants the other layout
    za = zip_folder(sub, str(tmp_path / "ann.zip"))
    rc, stdout, _ = run_cli(["--data-root", str(root), "--split", "valid_u", "--dataset", "mevis",
                             "--predictions", za, "--out", str(tmp_path / "m.csv")], capsys)
    assert rc == 0 and "the MeViS server expects <video>/<exp_id>/<frame>.png at the zip root" in stdout
    rc, stdout, _ = run_cli(["--data-root", str(root), "--split", "valid_u", "--dataset", "mevis",
                             "--predictions", z, "--out", str(tmp_path / "m.csv")], capsys)
    assert rc == 0 and "server expects" not in stdout


def test_split_without_annotations_is_an_error(tmp_path, capsys):
    r = tmp_path / "d"
    (r / "valid").mkdir(parents=True)
    meta = r / "meta_expressions" / "valid" / "meta_expressions.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"videos": {"a": {"expressions": {"0": {"exp": "x"}}, "frames": ["00000"]}}}))
    sub = tmp_path / "sub" / "Annotations"
    sub.mkdir(parents=True)
    rc, _, err = run_cli(["--data-root", str(r), "--predictions", str(sub.parent), "--out", str(tmp_path / "m.csv")], capsys)
    assert rc == 2 and "no ground-truth annotations" in err


def test_expression_without_obj_id_is_an_error(root, tmp_path, capsys):
    meta = os.path.join(root, "meta_expressions", "valid", "meta_expressions.json")
    m = json.load(open(meta))
    del m["videos"]["v1"]["expressions"]["2"]["obj_id"]
    json.dump(m, open(meta, "w"))
    sub = write_submission(tmp_path / "sub", gt_masks())
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(tmp_path / "m.csv"),
                          "--workers", "1"], capsys)
    assert rc == 2 and meta in err and "'2'" in err and "no obj_id" in err


# ---- listed videos without ground truth ------------------------------------------------------


def test_listed_video_without_ground_truth_is_an_error_naming_the_folder(root, tmp_path, capsys):
    folder = os.path.join(root, "valid", "Annotations", "v1")
    shutil.rmtree(folder)
    sub = write_submission(tmp_path / "sub", gt_masks())
    out = tmp_path / "m.csv"
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(out), "--workers", "1"], capsys)
    assert rc == 2 and folder in err and "'v1'" in err and "does not exist" in err
    assert "--allow-missing-gt" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(DataError, match="no ground truth"):
        score_split(root, "valid", sub, workers=2)
    with pytest.raises(DataError, match="no ground truth"):
        Scorer(RefYTVOS(root, "valid")).score(open_predictions(sub))
    os.makedirs(folder)  # there, but without a single PNG
    rc, _, err = run_cli(["--data-root", root, "--predictions", sub, "--out", str(out), "--workers", "1"], capsys)
    assert rc == 2 and folder in err and "no .png" in err


def test_allow_missing_gt_skips_those_videos_and_says_what_was_averaged(root, tmp_path, capsys):
    shutil.rmtree(os.path.join(root, "valid", "Annotations", "v1"))
    sub = write_submission(tmp_path / "sub", gt_masks())
    out = str(tmp_path / "m.csv")
    rc, stdout, _ = run_cli(["--data-root", root, "--predictions", sub, "--out", out, "--workers", "2",
                             "--allow-missing-gt", "--json"], capsys)
    assert rc == 0
    assert set(read_csv(out)) == {("v0", e) for e in EXPRESSIONS["v0"]}
    assert "scored 1 of 2 listed videos, 3 of 6 listed expressions" in stdout
    assert "skipped (no ground truth, --allow-missing-gt): 1 video, 3 expressions: v1" in stdout
    assert "(mean over 3 of 6 listed expressions)" in stdout
    s = json.loads(stdout.strip().splitlines()[-1])
    assert (s["n_videos"], s["n_videos_listed"], s["n_expressions"], s["n_expressions_listed"]) == (1, 2, 3, 6)
    assert s["n_expressions_scored"] == 3 and s["skipped_videos"] == ["v1"] and s["J"] == 1.0
    report = Scorer(RefYTVOS(root, "valid")).score(open_predictions(sub), allow_missing_gt=True)
    assert report.skipped_videos == ["v1"] and report.n_videos == 1 and len(report.expressions) == 3


# ---- the MeViS layout: video folders at the root -------------------------------------------


def test_video_folders_at_the_root_are_detected_in_folder_and_zip(root, tmp_path, capsys):
    preds = perturbed(seed=6)
    sub = write_submission(tmp_path / "sub", preds)
    flat = str(tmp_path / "inference")  # MeViS's own inference folder: <video>/<exp_id>/<frame>.png
    shutil.copytree(os.path.join(sub, "Annotations"), flat)
    z = zip_folder(flat, str(tmp_path / "flat.zip"))  # cd inference && zip -r submission.zip ./*
    with zipfile.ZipFile(z) as zf:
        assert not any(n.startswith("Annotations") for n in zf.namelist())
    want = score_split(root, "valid", sub, workers=1).table()
    for p in (flat, z):
        assert score_split(root, "valid", p, workers=1).table().equals(want)
        rc, stdout, _ = run_cli(["--data-root", root, "--predictions", p, "--out", str(tmp_path / "m.csv")], capsys)
        assert rc == 0 and "<video>/<exp_id>/<frame>.png" in stdout


def test_neither_layout_is_an_error_naming_both(root, tmp_path, capsys):
    sub = write_submission(tmp_path / "sub", gt_masks())
    # the video folders one folder down in a zip (zip -r submission.zip inference): not a layout
    deep = zip_folder(os.path.join(sub, "Annotations"), str(tmp_path / "deep.zip"), prefix="inference/")
    rc, _, err = run_cli(["--data-root", root, "--predictions", deep, "--out", str(tmp_path / "m.csv")], capsys)
    assert rc == 2 and deep in err and "Annotations/<video>/<exp_id>/<frame>.png" in err
    assert "one folder down" in err and "'inference/'" in err
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("readme.txt", "x")
        zf.writestr("a/b.png", "x")
    rc, _, err = run_cli(["--data-root", root, "--predictions", str(junk), "--out", str(tmp_path / "m.csv")], capsys)
    assert rc == 2 and str(junk) in err and "<video>/<exp_id>/<frame>.png" in err
    (tmp_path / "odd" / "x").mkdir(parents=True)
    (tmp_path / "odd" / "x" / "y.png").write_bytes(b"")
    rc, _, err = run_cli(["--data-root", root, "--predictions", str(tmp_path / "odd"), "--out",
                          str(tmp_path / "m.csv")], capsys)
    assert rc == 2 and "no Annotations/ folder" in err and "<video>/<exp_id>/<frame>.png" in err
