"""Synthetic benchmark: layout, determinism, and expressions checked against the rendered
ground truth independently of the generator's own logic (attributes from meta.json,
positions from the annotation masks' centroids)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from rvos_ray.cli import main as cli_main
from rvos_ray.data.refytvos import RefYTVOS
from rvos_ray.data.synthetic import make_shapes
from rvos_ray.data.synthetic_scene import COLORS, DIRECTIONS, SHAPES, SIZES


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("shapes"))
    make_shapes(root, videos=6, seed=11, height=192, width=320, min_frames=20, max_frames=26)
    return root


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    kw = dict(videos=2, height=96, width=160, min_frames=5, max_frames=7)
    make_shapes(a, seed=3, **kw)
    make_shapes(b, seed=3, **kw)
    make_shapes(c, seed=4, **kw)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys() or fa != fc
    assert fa[os.path.join("train", "meta.json")] != fc[os.path.join("train", "meta.json")]


def test_layout_is_ref_youtube_vos(tmp_path):
    root = str(tmp_path / "s")
    summary = make_shapes(root, videos=2, seed=0, height=96, width=160, min_frames=5, max_frames=7)
    assert summary["skipped"] is False
    for split in ("train", "valid"):
        meta = json.load(open(os.path.join(root, "meta_expressions", split, "meta_expressions.json")))
        objs = json.load(open(os.path.join(root, split, "meta.json")))["videos"]
        assert len(meta["videos"]) == 2 and set(objs) == set(meta["videos"])
        for vid, entry in meta["videos"].items():
            assert 5 <= len(entry["frames"]) <= 7
            assert entry["frames"][:2] == ["00000", "00005"]
            for f in entry["frames"]:
                assert os.path.isfile(os.path.join(root, split, "JPEGImages", vid, f + ".jpg"))
                assert os.path.isfile(os.path.join(root, split, "Annotations", vid, f + ".png"))
            for e in entry["expressions"].values():
                assert set(e) == {"exp", "obj_id", "kind"} and e["obj_id"] in objs[vid]["objects"]
            for o in objs[vid]["objects"].values():
                assert o["category"] in SHAPES and o["color"] in COLORS and o["size"] in SIZES
                assert o["motion"] in DIRECTIONS and set(o["frames"]) <= set(entry["frames"])
    # Same parameters again: nothing rewritten.
    assert make_shapes(root, videos=2, seed=0, height=96, width=160, min_frames=5, max_frames=7)["skipped"]


def test_reader_reads_what_generator_wrote(shapes):
    ds = RefYTVOS(shapes, "valid")
    vids = ds.video_ids()
    assert vids == [f"valid{i:04d}" for i in range(6)]
    cats = ds.categories()
    for vid in vids:
        video = ds.video(vid)
        assert ds.annotated_frames(vid) == list(video.frame_names)
        lab = ds.label_map(vid, video.frame_names[0])
        assert lab.shape == (192, 320)
        assert set(np.unique(lab)) - {0} <= set(cats[vid])
        assert 3 <= len(cats[vid]) <= 5


def _masks(ds: RefYTVOS, vid: str) -> dict[str, np.ndarray]:
    return {f: ds.label_map(vid, f) for f in ds.annotated_frames(vid)}


_ATTR = re.compile(r"^the (?:(small|large) )?(?:(red|green|blue|yellow|purple) )?(circle|square|triangle|star|cross|object)$")


def _parse_phrase(text: str) -> tuple[str | None, str | None, str | None]:
    m = _ATTR.match(text)
    assert m, f"not a template phrase: {text!r}"
    size, color, shape = m.groups()
    return size, color, (None if shape == "object" else shape)


def _matching(objs: dict, size, color, shape, motion=None) -> set[int]:
    return {int(i) for i, o in objs.items()
            if (size is None or o["size"] == size) and (color is None or o["color"] == color)
            and (shape is None or o["category"] == shape) and (motion is None or o["motion"] == motion)}


def _centroids(labels: dict[str, np.ndarray], oid: int) -> dict[str, tuple[float, float, int]]:
    out = {}
    for f, lab in labels.items():
        ys, xs = np.nonzero(lab == oid)
        if len(xs):
            out[f] = (xs.mean(), ys.mean(), len(xs))
    return out


def test_expressions_are_unambiguous_visible_and_mixed(shapes):
    ds = RefYTVOS(shapes, "train")
    objs_meta = json.load(open(os.path.join(shapes, "train", "meta.json")))["videos"]
    kinds: dict[str, int] = {}
    checked_spatial = checked_motion = 0
    for vid in ds.video_ids():
        objs = objs_meta[vid]["objects"]
        labels = _masks(ds, vid)
        exps = ds.expressions(vid)
        per_obj: dict[int, int] = {}
        cents = {int(i): _centroids(labels, int(i)) for i in objs}
        full = {i: max((a for _, _, a in c.values()), default=0) for i, c in cents.items()}
        for e in exps:
            (oid,) = e.obj_ids
            per_obj[oid] = per_obj.get(oid, 0) + 1
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
            assert any((lab == oid).any() for lab in labels.values()), f"{vid} {e.text}: never visible"
            if e.kind == "attribute":
                assert _matching(objs, *_parse_phrase(e.text)) == {oid}, (vid, e.text)
            elif e.kind == "motion":
                phrase, direction = re.match(r"^(.*) moving (left|right|up|down)$", e.text).groups()
                assert _matching(objs, *_parse_phrase(phrase), motion=direction) == {oid}, (vid, e.text)
                # the motion is real: the centroid moves that way between well-visible frames
                # (>= ~1 px/frame along the axis; 1 px slack for rounding)
                index = {f: t for t, f in enumerate(sorted(labels))}
                good = [(index[f], c) for f, c in sorted(cents[oid].items()) if c[2] >= 0.95 * full[oid]]
                if len(good) >= 2 and good[-1][0] - good[0][0] >= 3:
                    (t0, (x0, y0, _)), (t1, (x1, y1, _)) = good[0], good[-1]
                    d = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}[direction]
                    assert d >= 0.8 * (t1 - t0) - 1, (vid, e.text, d, t1 - t0)
                    checked_motion += 1
            else:
                assert e.kind == "spatial"
                checked_spatial += _check_spatial(e.text, oid, objs, cents, full)
        assert set(per_obj) == {int(i) for i in objs}
        assert min(per_obj.values()) >= 2
    assert set(kinds) == {"attribute", "spatial", "motion"}
    assert checked_spatial > 0 and checked_motion > 0


def _check_spatial(text: str, oid: int, objs: dict, cents: dict, full: dict) -> int:
    """Check a spatial expression on frames where the objects involved are (nearly) unoccluded,
    so mask centroids are their centres. Returns the number of frames checked."""
    def whole(i, f):
        return f in cents[i] and cents[i][f][2] >= 0.95 * full[i]

    m = re.match(r"^the (leftmost|rightmost|topmost|bottommost) (\w+)$", text)
    n = 0
    if m:
        word, shape = m.groups()
        axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[word]
        group = _matching(objs, None, None, shape)
        assert oid in group and len(group) >= 2
        for f in cents[oid]:
            others = [j for j in group - {oid} if whole(j, f)]
            if whole(oid, f) and others:
                for j in others:  # 3 px slack: the triangle's centroid sits below its centre
                    assert sign * cents[oid][f][axis] < sign * cents[j][f][axis] + 3, (text, f)
                n += 1
        return n
    m = re.match(r"^the (\w+) (to the left of|to the right of|above|below) (the .*)$", text)
    assert m, f"not a spatial template: {text!r}"
    shape, rel, ref_text = m.groups()
    (ref,) = _matching(objs, *_parse_phrase(ref_text))
    assert ref != oid and objs[str(oid)]["category"] == shape
    axis, sign = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1), "below": (1, 1)}[rel]
    for f in cents[oid]:
        if whole(oid, f) and whole(ref, f):
            assert sign * (cents[oid][f][axis] - cents[ref][f][axis]) > 0, (text, f)
            n += 1
    return n


def test_objects_are_large_enough(shapes):
    ds = RefYTVOS(shapes, "valid")
    for vid in ds.video_ids():
        labels = _masks(ds, vid)
        for oid in ds.categories()[vid]:
            extent = 0
            for lab in labels.values():
                ys, xs = np.nonzero(lab == oid)
                if len(xs):
                    extent = max(extent, xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert extent >= 0.12 * 192  # at least ~12% of the short side across


def test_cli_writes_and_refuses_foreign_folder(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert cli_main(["make-shapes", "--out", out, "--videos", "1", "--seed", "2",
                     "--height", "96", "--width", "128", "--min-frames", "4", "--max-frames", "4"]) == 0
    printed = capsys.readouterr().out
    assert "train: 1 videos, 4 frames" in printed and "valid: 1 videos, 4 frames" in printed
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli_main(["make-shapes", "--out", str(foreign), "--videos", "1"]) == 2
    assert "not written by make-shapes" in capsys.readouterr().err
