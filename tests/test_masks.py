import numpy as np
import pytest

from rvos_ray import masks


def _rand_masks(rng, n, h, w, p=0.3):
    return (rng.random((n, h, w)) < p).astype(np.uint8)


def test_encode_decode_roundtrip():
    rng = np.random.default_rng(0)
    m = _rand_masks(rng, 1, 17, 23)[0]
    counts = masks.encode(m)
    assert isinstance(counts, bytes)
    np.testing.assert_array_equal(masks.decode(counts, 17, 23), m)


def test_encode_many_matches_encode():
    rng = np.random.default_rng(1)
    ms = _rand_masks(rng, 4, 9, 11)
    assert masks.encode_many(ms) == [masks.encode(m) for m in ms]
    assert masks.encode_many(np.zeros((0, 9, 11), np.uint8)) == []


def test_areas_hand_computed():
    a = np.zeros((5, 6), np.uint8)
    a[1:3, 2:5] = 1  # 6 pixels
    b = np.zeros((5, 6), np.uint8)
    assert list(masks.areas([masks.encode(a), masks.encode(b), masks.empty(5, 6)], 5, 6)) == [6, 0, 0]


def test_iou_and_intersections_hand_computed():
    a = np.zeros((4, 4), np.uint8)
    a[0:2, 0:2] = 1  # 4 px
    b = np.zeros((4, 4), np.uint8)
    b[1:3, 1:3] = 1  # 4 px, overlap 1
    ra, rb = masks.encode(a), masks.encode(b)
    iou = masks.iou_matrix([ra], [rb, ra], 4, 4)
    assert iou[0, 0] == pytest.approx(1 / 7)
    assert iou[0, 1] == pytest.approx(1.0)
    inter, union = masks.intersection_matrix([ra], [rb, ra], 4, 4)
    assert inter.tolist() == [[1, 4]]
    assert union.tolist() == [[7, 4]]


def test_tracklet_iou_matches_dense_bruteforce():
    rng = np.random.default_rng(2)
    T, na, nb, h, w = 5, 3, 4, 13, 19
    A = _rand_masks(rng, T * na, h, w).reshape(T, na, h, w)
    B = _rand_masks(rng, T * nb, h, w).reshape(T, nb, h, w)
    A[2, 1] = 0  # an empty mask on one frame
    fa = [masks.encode_many(A[t]) for t in range(T)]
    fb = [masks.encode_many(B[t]) for t in range(T)]
    got = masks.tracklet_iou(fa, fb, h, w)
    for p in range(na):
        for q in range(nb):
            inter = sum(int((A[t, p] & B[t, q]).sum()) for t in range(T))
            union = sum(int((A[t, p] | B[t, q]).sum()) for t in range(T))
            assert got[p, q] == pytest.approx(inter / union, abs=1e-12)


def test_tracklet_iou_all_empty_is_zero_and_shape_checked():
    e = masks.empty(3, 3)
    assert masks.tracklet_iou([[e]], [[e]], 3, 3).tolist() == [[0.0]]
    with pytest.raises(ValueError, match="frames"):
        masks.tracklet_iou([[e]], [[e], [e]], 3, 3)


def test_every_function_takes_more_than_255_masks():
    """pycocotools' area() refuses > 255 masks per call under NumPy 2; masks.py must not."""
    rng = np.random.default_rng(7)
    n, h, w = 1200, 6, 7
    dense = _rand_masks(rng, n, h, w, p=0.4)
    rles = masks.encode_many(dense)
    np.testing.assert_array_equal(masks.areas(rles, h, w), dense.reshape(n, -1).sum(1))
    boxes = masks.boxes_xywh(rles, h, w)
    assert boxes.shape == (n, 4)
    for m, b in zip(dense[:50], boxes[:50]):
        ys, xs = np.nonzero(m)
        if len(xs):
            assert tuple(b) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    inter, union = masks.intersection_matrix(rles, rles[:3], h, w)
    d = dense.reshape(n, -1).astype(np.int64)
    np.testing.assert_array_equal(inter, d @ d[:3].T)
    # tracklet-IoU with 300 tracklets on each of 4 frames (one frame's masks > 255)
    frames = [rles[t * 300 : (t + 1) * 300] for t in range(4)]
    t_iou = masks.tracklet_iou(frames, frames, h, w)
    assert t_iou.shape == (300, 300)
    np.testing.assert_allclose(np.diag(t_iou)[np.diag(t_iou) > 0], 1.0)


def test_grounder_boxes_of_a_long_video():
    """A 36-frame video with 10 tracklets: 360 masks in one call (the grounder's geometry)."""
    from rvos_ray.models.grounder import boxes_from_rles

    rng = np.random.default_rng(3)
    T, P, h, w = 36, 10, 8, 9
    dense = _rand_masks(rng, T * P, h, w, p=0.5).reshape(T, P, h, w)
    rles = [[masks.encode(dense[t, p]) for p in range(P)] for t in range(T)]
    boxes, present = boxes_from_rles(rles, h, w)
    assert boxes.shape == (T, P, 5) and present.all()
    assert (boxes[..., 4] > 0).all() and (boxes[..., 4] <= 1).all()


def test_uncompressed_and_polygons():
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:5] = 1
    # column-major run lengths of m
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    np.testing.assert_array_equal(masks.decode(masks.from_uncompressed(runs, 5, 6), 5, 6), m)
    poly = masks.from_polygons([[0, 0, 4, 0, 4, 2, 0, 2]], 5, 6)
    assert masks.areas([poly], 5, 6)[0] > 0
