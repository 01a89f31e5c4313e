"""J and F against hand-computed values and against a plain, readable per-frame reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rvos_ray.evaluation.metrics import bound_pix, disk, frame_jf, score_expression, seg2bmap


# ------------------------------------------------------------------------------------------
# Plain reference: the DAVIS definitions written out literally, full frame, no tricks.
# ------------------------------------------------------------------------------------------


def ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    h, w = seg.shape
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def ref_dilate(b: np.ndarray, r: int) -> np.ndarray:
    """OR of the map shifted by every (dy, dx) with dy^2 + dx^2 <= r^2."""
    h, w = b.shape
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > r * r:
                continue
            src = b[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] |= src
    return out


def ref_jf(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> tuple[float, float]:
    gt, pred = gt.astype(bool), pred.astype(bool)
    union = np.sum(gt | pred)
    j = 1.0 if union == 0 else np.sum(gt & pred) / union
    h, w = gt.shape
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(h * h + w * w))
    fg_b, gt_b = ref_seg2bmap(pred), ref_seg2bmap(gt)
    fg_match = np.sum(fg_b & ref_dilate(gt_b, r))
    gt_match = np.sum(gt_b & ref_dilate(fg_b, r))
    n_fg, n_gt = np.sum(fg_b), np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        p, rc = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1, 1
    else:
        p, rc = fg_match / n_fg, gt_match / n_gt
    f = 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)
    return float(j), float(f)


def square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def random_blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A union of a few random rectangles and discs, sometimes touching the image border."""
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0:y0 + rng.integers(1, h), x0:x0 + rng.integers(1, w)] = True
        else:
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(2, min(h, w) // 2))
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    # ragged edges so boundaries are not only straight lines
    m ^= rng.random((h, w)) < 0.02
    return m


# ------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------


def test_both_empty_is_one():
    z = np.zeros((20, 30), np.uint8)
    assert frame_jf(z, z) == (1.0, 1.0)


def test_one_empty_is_zero():
    z = np.zeros((20, 20), np.uint8)
    m = square(20, 20, 5, 10, 5, 10)
    assert frame_jf(m, z) == (0.0, 0.0)  # no prediction boundary: P=1, R=0
    assert frame_jf(z, m) == (0.0, 0.0)  # no ground-truth boundary: P=0, R=1


def test_tolerance_radius():
    assert bound_pix(20, 20) == 1  # 0.008 * 28.28 = 0.23 -> 1
    assert bound_pix(480, 854) == 8  # 0.008 * 979.65 = 7.84 -> 8
    assert bound_pix(720, 1280) == 12  # 0.008 * 1468.6 = 11.75 -> 12
    assert bound_pix(100, 100, bound_th=3) == 3


def test_disk_is_skimage_disk():
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    for r in (2, 5, 8):
        want = [[int(x * x + y * y <= r * r) for x in range(-r, r + 1)] for y in range(-r, r + 1)]
        assert disk(r).tolist() == want
    assert disk(8).sum() == 197


def test_seg2bmap_square_is_the_shifted_perimeter():
    # Square rows/cols 5..9: boundary = perimeter of rows/cols 4..9 (outer top-left ring,
    # inner bottom-right ring), 20 pixels.
    b = seg2bmap(square(20, 20, 5, 10, 5, 10))
    want = np.zeros((20, 20), bool)
    want[4:10, 4:10] = True
    want[5:9, 5:9] = False
    assert b.sum() == 20
    assert np.array_equal(b, want)


def test_seg2bmap_image_edge_rule():
    # 3x3 square in the bottom-right corner of a 6x6 image: the last column compares only
    # downwards, the last row only rightwards, the corner never. Boundary: row 2 cols 2..5 and
    # col 2 rows 3..5 -> 7 pixels, none inside the square.
    b = seg2bmap(square(6, 6, 3, 6, 3, 6))
    want = np.zeros((6, 6), bool)
    want[2, 2:6] = True
    want[3:6, 2] = True
    assert np.array_equal(b, want)


def test_shifted_square_hand_computed():
    # GT square rows/cols 5..9, prediction shifted right by 3; tolerance 1 (a plus-shaped disk).
    # J = 10 / 40. Boundaries: perimeters of [4..9]x[4..9] and [4..9]x[7..12]; 10 of the 20
    # prediction boundary pixels are within the plus of a GT boundary pixel (top/bottom rows:
    # cols 7-10 each; left column: rows 5 and 8), and symmetrically for recall: F = 0.5.
    gt = square(20, 20, 5, 10, 5, 10)
    pred = square(20, 20, 5, 10, 8, 13)
    assert frame_jf(gt, pred) == (0.25, 0.5)
    # Shift by one: every boundary pixel is within tolerance: F = 1, J = 20 / 30.
    j, f = frame_jf(gt, square(20, 20, 5, 10, 6, 11))
    assert (j, f) == (20 / 30, 1.0)


def test_any_nonzero_is_foreground():
    gt = square(20, 20, 5, 10, 5, 10)
    pred = (square(20, 20, 5, 10, 8, 13) // 255 * np.uint8(7))  # values 0/7
    assert frame_jf(gt, pred) == (0.25, 0.5)
    assert frame_jf(gt.astype(bool), pred.astype(np.int32)) == (0.25, 0.5)


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same size"):
        frame_jf(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))


# ------------------------------------------------------------------------------------------
# Against the plain reference
# ------------------------------------------------------------------------------------------


def test_seg2bmap_equals_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 7), (7, 1), (9, 13), (40, 61)]:
        for _ in range(20):
            m = rng.random((h, w)) < 0.5
            assert np.array_equal(seg2bmap(m), ref_seg2bmap(m))


@pytest.mark.parametrize("shape", [(24, 36), (61, 47), (120, 214)])
def test_frame_jf_equals_reference(shape):
    rng = np.random.default_rng(shape[0])
    h, w = shape
    for _ in range(25):
        gt = random_blob(rng, h, w)
        roll = rng.random()
        if roll < 0.15:
            pred = np.zeros_like(gt)
        elif roll < 0.5:  # a perturbed copy: shifted and dilated/eroded a little
            pred = np.roll(gt, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
        else:
            pred = random_blob(rng, h, w)
        got = frame_jf(gt, pred)
        want = ref_jf(gt, pred)
        assert got[0] == pytest.approx(want[0], abs=1e-12)
        assert got[1] == pytest.approx(want[1], abs=1e-12)


def test_frame_jf_border_touching_and_large_tolerance():
    rng = np.random.default_rng(7)
    for _ in range(10):
        gt = np.zeros((30, 40), bool)
        gt[rng.integers(10, 30):, rng.integers(15, 40):] = True  # touches bottom-right corner
        pred = np.zeros((30, 40), bool)
        pred[: rng.integers(1, 25), : rng.integers(1, 30)] = True  # touches top-left corner
        for th in (0.008, 0.1, 4):
            assert frame_jf(gt, pred, th) == pytest.approx(ref_jf(gt, pred, th), abs=1e-12)


def test_score_expression_means_frames_and_none_is_empty():
    gt = [square(20, 20, 5, 10, 5, 10), np.zeros((20, 20), np.uint8), square(20, 20, 0, 4, 0, 4)]
    pred = [square(20, 20, 5, 10, 8, 13), None, None]
    j, f = score_expression(gt, pred)
    assert j == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert f == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert all(math.isnan(v) for v in score_expression([], []))

