"""Overlay thumbnails of prediction vs ground truth for the run report.

For one expression: the annotated frame where the predicted mask agrees least with the ground
truth (lowest IoU), drawn small with the ground truth in green, the prediction in red (their
overlap reads yellow) and both outlines, as a PNG data URI the HTML page embeds.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rvos_ray import masks as rle
from rvos_ray.data import io as fio

GT_COLOR = np.array([0, 200, 0], np.float32)  # RGB
PRED_COLOR = np.array([230, 30, 30], np.float32)


@dataclass(frozen=True)
class Thumbnail:
    frame: str  # frame name
    iou: float  # of prediction and ground truth on that frame
    data_uri: str  # data:image/png;base64,...


def overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with ``gt`` (green) and ``pred`` (red) blended in and outlined."""
    out = image.astype(np.float32)
    g, p = gt.astype(bool), pred.astype(bool)
    out[g] = (1 - alpha) * out[g] + alpha * GT_COLOR
    out[p] = (1 - alpha) * out[p] + alpha * PRED_COLOR
    out = out.clip(0, 255).astype(np.uint8)
    for m, c in ((g, GT_COLOR), (p, PRED_COLOR)):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(x) for x in c), 1)
    return out


def png_data_uri(rgb: np.ndarray, max_width: int = 200) -> str:
    h, w = rgb.shape[:2]
    if w > max_width:
        rgb = cv2.resize(rgb, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def predicted_masks(tracklets: pa.Table, tracklet_id: int) -> dict[int, tuple[bytes, int, int]]:
    """frame index -> (RLE, height, width) of one tracklet."""
    t = tracklets.filter(pc.equal(tracklets.column("tracklet_id"), tracklet_id))
    return {f: (r, h, w) for f, r, h, w in zip(t.column("frame").to_pylist(), t.column("rle").to_pylist(),
                                                 t.column("height").to_pylist(), t.column("width").to_pylist())}


def worst_frame_thumbnail(reader, video_id: str, obj_ids: Sequence[int], tracklets: pa.Table,
                          tracklet_id: int, max_width: int = 200) -> Thumbnail | None:
    """The annotated frame with the lowest IoU between the chosen tracklet and the referred
    object(s), as an overlay thumbnail; None when the video has no annotated frame."""
    video = reader.video(video_id)
    index = {n: i for i, n in enumerate(video.frame_names)}
    pred = predicted_masks(tracklets, tracklet_id) if tracklet_id >= 0 else {}
    worst: tuple[float, str, np.ndarray, np.ndarray] | None = None
    for name in reader.annotated_frames(video_id):
        if name not in index:
            continue
        gt = reader.object_mask(video_id, name, tuple(obj_ids))
        r = pred.get(index[name])
        p = rle.decode(r[0], r[1], r[2]) if r is not None else np.zeros_like(gt)
        score = iou(gt, p)
        if worst is None or score < worst[0]:
            worst = (score, name, gt, p)
    if worst is None:
        return None
    score, name, gt, p = worst
    image = fio.read_image(video.frame_paths[index[name]])
    if image.shape[:2] != gt.shape:
        image = cv2.resize(image, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_AREA)
    return Thumbnail(name, score, png_data_uri(overlay(image, gt, p), max_width))
