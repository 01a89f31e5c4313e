"""Per-frame region similarity J and boundary accuracy F, with the DAVIS definitions.

Definitions (DAVIS ``db_eval_iou`` / ``db_eval_boundary``, no void pixels):

- **J** = |A ∩ B| / |A ∪ B|, and 1 when both masks are empty.
- **F**: boundary maps of prediction and ground truth by :func:`seg2bmap`; a boundary pixel of
  one map is matched when a boundary pixel of the other lies within the tolerance disk of radius
  ``bound_pix = ceil(bound_th * sqrt(h^2 + w^2))`` (``bound_th`` itself when it is >= 1), the
  disk being the pixels with ``x^2 + y^2 <= r^2`` (skimage ``disk``).
  precision = matched prediction boundary / prediction boundary, recall = matched ground-truth
  boundary / ground-truth boundary; no prediction boundary but some ground truth -> P=1, R=0;
  the reverse -> P=0, R=1; neither -> P=R=1; F = 2PR / (P + R), and 0 when P + R = 0.

:func:`frame_jf` computes both at once and fast: every quantity above lives within one pixel of
the union of the two masks, so all work after one full-frame bounding-box pass happens on that
crop (with the image-edge rule of :func:`seg2bmap` preserved), and the disk dilation is OpenCV's.
Results are bit-identical to the full-frame definitions (tests check this against a plain loop).

Masks may be bool or any integer type; every nonzero pixel is foreground.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import cv2
import numpy as np

BOUND_TH = 0.008
"""DAVIS boundary tolerance as a fraction of the image diagonal."""


def bound_pix(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Tolerance radius in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` if >= 1."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be an integer, got {bound_th}")
        return int(bound_th)
    # sqrt of the exact integer sum, as np.linalg.norm((h, w)) computes it
    return int(math.ceil(bound_th * math.sqrt(float(height * height + width * width))))


@lru_cache(maxsize=32)
def disk(radius: int) -> np.ndarray:
    """uint8 (2r+1)x(2r+1) structuring element: 1 where x^2 + y^2 <= r^2 (skimage ``disk``)."""
    r = np.arange(-radius, radius + 1)
    kernel = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS boundary map at the mask's own size (bool HxW).

    A pixel is boundary when it differs from its right, bottom or bottom-right neighbour,
    neighbours outside the image being ignored (so the last row compares only to the right, the
    last column only downwards, and the bottom-right pixel is never boundary) -- exactly
    DAVIS's ``seg2bmap`` with ``width``/``height`` left at the mask's size. Ignoring an outside
    neighbour is the same as comparing to a copy of the pixel itself, hence the edge padding.
    """
    s = np.asarray(seg) != 0
    return _bmap_from_padded(np.pad(s, ((0, 1), (0, 1)), mode="edge"))


def _bmap_from_padded(p: np.ndarray) -> np.ndarray:
    """Boundary map of ``p[:-1, :-1]`` given ``p`` with one extra row and column of neighbours."""
    s = p[:-1, :-1]
    return (s != p[:-1, 1:]) | (s != p[1:, :-1]) | (s != p[1:, 1:])


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J of one frame (1 when both masks are empty)."""
    g, p = _check_pair(gt, pred)
    inter = np.count_nonzero(g & p)
    union = np.count_nonzero(g | p)
    return 1.0 if union == 0 else inter / union


def f_from_counts(n_fg: int, n_gt: int, fg_match: int, gt_match: int) -> float:
    """DAVIS F from boundary pixel counts (prediction = "fg", ground truth = "gt")."""
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = fg_match / float(n_fg)
        recall = gt_match / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def frame_jf(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> tuple[float, float]:
    """(J, F) of one frame; ``gt`` and ``pred`` are HxW masks of the same size."""
    g, p = _as_u8(gt), _as_u8(pred)
    if g.shape != p.shape or g.ndim != 2:
        raise ValueError(f"masks must be 2-D and the same size: ground truth {gt.shape}, prediction {pred.shape}")
    h, w = g.shape
    # The only full-frame work: the bounding box of the union (row/column maxima are
    # vectorised; cv2.boundingRect is not). Everything else happens on the crop.
    union = np.maximum(g, p)
    rows = np.flatnonzero(union.max(axis=1))
    if rows.size == 0:  # both empty: J = 1, both boundaries empty -> F = 1
        return 1.0, 1.0
    cols = np.flatnonzero(union[rows[0]:rows[-1] + 1].max(axis=0))
    # Boundary pixels lie in rows [top-1, bottom] and columns [left-1, right]; seg2bmap also
    # needs the next row/column, taken from the image where it exists, else edge-replicated.
    y0, x0 = max(int(rows[0]) - 1, 0), max(int(cols[0]) - 1, 0)
    y1, x1 = int(rows[-1]) + 1, int(cols[-1]) + 1
    ye, xe = min(y1 + 1, h), min(x1 + 1, w)
    cg = g[y0:ye, x0:xe] != 0
    cp = p[y0:ye, x0:xe] != 0
    if np.array_equal(cg, cp):  # identical masks: J = 1, P = R = 1 (the disk holds its centre)
        return 1.0, 1.0
    inter = np.count_nonzero(cg & cp)
    union = np.count_nonzero(cg | cp)
    j = inter / union
    pad = ((0, int(ye == y1)), (0, int(xe == x1)))
    if pad != ((0, 0), (0, 0)):
        cg = np.pad(cg, pad, mode="edge")
        cp = np.pad(cp, pad, mode="edge")
    bg = _bmap_from_padded(cg)
    bp = _bmap_from_padded(cp)
    n_gt = int(np.count_nonzero(bg))
    n_fg = int(np.count_nonzero(bp))
    fg_match = gt_match = 0
    if n_gt and n_fg:
        # Dilation is only ever read at boundary pixels, which all lie inside the crop, and every
        # boundary pixel that can reach them is inside it too: the crop is exact, no margin needed.
        kernel = disk(bound_pix(h, w, bound_th))
        bg8, bp8 = bg.view(np.uint8), bp.view(np.uint8)
        gt_dil = cv2.dilate(bg8, kernel)
        fg_dil = cv2.dilate(bp8, kernel)
        fg_match = int(np.count_nonzero(bp & (gt_dil != 0)))
        gt_match = int(np.count_nonzero(bg & (fg_dil != 0)))
    return j, f_from_counts(n_fg, n_gt, fg_match, gt_match)


def score_expression(
    gt_masks: Iterable[np.ndarray],
    pred_masks: Iterable[np.ndarray | None],
    bound_th: float = BOUND_TH,
) -> tuple[float, float]:
    """(mean J, mean F) of one expression over paired frames; a ``None`` prediction is an empty
    mask. With no frames at all both are NaN (as DAVIS's ``nanmean`` of nothing)."""
    js: list[float] = []
    fs: list[float] = []
    for gt, pred in zip(gt_masks, pred_masks, strict=True):
        if pred is None:
            pred = np.zeros(np.shape(gt), np.uint8)
        j, f = frame_jf(gt, pred, bound_th)
        js.append(j)
        fs.append(f)
    if not js:
        return math.nan, math.nan
    return float(np.mean(js)), float(np.mean(fs))


def _as_u8(m: np.ndarray) -> np.ndarray:
    """A uint8 view (bool) or the array itself (uint8); other types become 0/1 uint8."""
    m = np.asarray(m)
    if m.dtype == np.uint8:
        return m if m.flags.c_contiguous else np.ascontiguousarray(m)
    if m.dtype == np.bool_:
        return np.ascontiguousarray(m).view(np.uint8)
    return (m != 0).view(np.uint8)


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g, p = np.asarray(gt) != 0, np.asarray(pred) != 0
    if g.shape != p.shape:
        raise ValueError(f"masks must be the same size: ground truth {g.shape}, prediction {p.shape}")
    return g, p
