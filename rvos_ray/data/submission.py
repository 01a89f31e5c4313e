"""Submissions in each benchmark's server format.

The submission folder always holds ``Annotations/<video>/<exp_id>/<frame>.png``: single-channel
PNG, 0 = background, 255 = the referred object. The zip is laid out as the benchmark's server
takes it (:data:`SUBMISSION_LAYOUTS`, by config ``data.dataset``):

- ``refytvos``, ``davis``: ``Annotations/<video>/<exp_id>/<frame>.png`` (``Annotations/`` at the
  zip root);
- ``mevis``: ``<video>/<exp_id>/<frame>.png`` (the video folders at the zip root, as MeViS's own
  inference script zips its prediction folder: ``cd inference && zip -r submission.zip ./*``).

Every file is written atomically (temp + rename), so a crashed run never leaves half a PNG or
half a zip.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from PIL import Image

from rvos_ray import masks
from rvos_ray.data import io as dio
from rvos_ray.data.errors import DataError
from rvos_ray.types import PREDICTION_SCHEMA, TRACKLET_SCHEMA, Expression, Video, validate

ANNOTATIONS = "Annotations"
#: config ``data.dataset`` -> layout of its submission zip: "annotations" (``Annotations/`` at the
#: root) or "videos" (the video folders at the root)
SUBMISSION_LAYOUTS = {"refytvos": "annotations", "davis": "annotations", "mevis": "videos"}
# Fixed timestamp in the zip so the same predictions give the same zip bytes.
_ZIP_DATE = (2021, 1, 1, 0, 0, 0)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """HxW mask (bool or 0/1 or 0/255) -> single-channel ('L') PNG of 0/255."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be HxW, got shape {mask.shape}")
    im = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)  # masks compress well even at level 1
    return buf.getvalue()


def mask_path(out_dir: str, video_id: str, exp_id: str, frame: str) -> str:
    return dio.join(str(out_dir), ANNOTATIONS, video_id, str(exp_id), frame + ".png")


def write_submission(out_dir: str, masks_iter: Iterable[tuple[str, str, str, np.ndarray]]) -> int:
    """Write ``(video_id, exp_id, frame_name, HxW mask)`` items as submission PNGs under
    ``out_dir/Annotations``; returns how many were written."""
    n = 0
    for video_id, exp_id, frame, mask in masks_iter:
        dio.write_bytes(mask_path(out_dir, video_id, exp_id, frame), encode_mask_png(mask))
        n += 1
    return n


def write_predictions(out_dir: str, tracklets: pa.Table, predictions: pa.Table, video: Video,
                      expressions: Iterable[Expression] | None = None) -> int:
    """Write one video's submission PNGs from its tracklet and prediction tables.

    For every prediction row of ``video`` (one per expression), the chosen tracklet's mask on
    each of the video's frames; a frame where that tracklet has no row, or a tracklet id absent
    from the table, gives an empty mask. With ``expressions``, an expression without a
    prediction row gets empty masks too, so the submission is complete. Returns the number of
    PNGs written.
    """
    tracklets = validate(tracklets, TRACKLET_SCHEMA, "tracklet table")
    predictions = validate(predictions, PREDICTION_SCHEMA, "prediction table")
    vid = video.video_id
    trk = tracklets.filter(pc.equal(tracklets["video_id"], vid))
    pred = predictions.filter(pc.equal(predictions["video_id"], vid))
    height, width = _frame_size(trk, video)

    # tracklet id -> {frame index -> RLE counts}
    by_tracklet: dict[int, dict[int, bytes]] = {}
    for tid, frame, rle in zip(trk["tracklet_id"].to_pylist(), trk["frame"].to_pylist(),
                               trk["rle"].to_pylist()):
        by_tracklet.setdefault(tid, {})[frame] = rle

    chosen: dict[str, int | None] = {}
    for exp_id, tid in zip(pred["exp_id"].to_pylist(), pred["tracklet_id"].to_pylist()):
        if exp_id in chosen:
            raise DataError(f"prediction table: expression {exp_id!r} of video {vid!r} has several rows")
        chosen[exp_id] = tid
    for e in expressions or ():
        chosen.setdefault(e.exp_id, None)

    empty_png = encode_mask_png(np.zeros((height, width), dtype=np.uint8))
    n = 0
    for exp_id, tid in chosen.items():
        frames = by_tracklet.get(tid, {}) if tid is not None else {}
        for t, name in enumerate(video.frame_names):
            rle = frames.get(t)
            data = empty_png if rle is None else encode_mask_png(masks.decode(rle, height, width))
            dio.write_bytes(mask_path(out_dir, vid, exp_id, name), data)
            n += 1
    return n


def _frame_size(trk: pa.Table, video: Video) -> tuple[int, int]:
    if trk.num_rows:
        sizes = set(zip(trk["height"].to_pylist(), trk["width"].to_pylist()))
        if len(sizes) != 1:
            raise DataError(f"tracklet table: video {video.video_id!r} has masks of several sizes {sorted(sizes)}")
        return sizes.pop()
    if not video.frame_paths:
        raise DataError(f"video {video.video_id!r} has no frames")
    h, w = dio.read_image(video.frame_paths[0]).shape[:2]  # no tracklets: the frame gives the size
    return int(h), int(w)


def submission_layout(dataset: str) -> str:
    """The zip layout the server of ``dataset`` (config ``data.dataset``) takes."""
    try:
        return SUBMISSION_LAYOUTS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r} (data.dataset); expected one of "
                        f"{', '.join(sorted(SUBMISSION_LAYOUTS))}") from None


def zip_submission(sub_dir: str, zip_path: str, dataset: str = "refytvos") -> int:
    """Zip ``sub_dir/Annotations`` into ``zip_path`` in ``dataset``'s layout
    (:data:`SUBMISSION_LAYOUTS`: ``Annotations/`` at the zip root, or for MeViS the video
    folders at the root); written to a temp file and renamed into place. Returns the number of
    PNGs zipped."""
    prefix = ANNOTATIONS + "/" if submission_layout(dataset) == "annotations" else ""
    fs, root = dio.resolve(sub_dir)
    ann = f"{root.rstrip('/')}/{ANNOTATIONS}"
    if fs.get_file_info(ann).type != pafs.FileType.Directory:
        raise DataError(f"{dio.join(str(sub_dir), ANNOTATIONS)}: submission folder does not exist")
    infos = fs.get_file_info(pafs.FileSelector(ann, recursive=True))
    files = sorted(i.path for i in infos
                   if i.type == pafs.FileType.File and i.path.endswith(".png")
                   and not i.base_name.startswith(".tmp-"))
    zfs, zpath = dio.resolve(zip_path)
    parent = zpath.rsplit("/", 1)[0]
    zfs.create_dir(parent, recursive=True)
    fd, tmp = tempfile.mkstemp(suffix=".zip", dir=parent if isinstance(zfs, pafs.LocalFileSystem) else None)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                info = zipfile.ZipInfo(prefix + path[len(ann) + 1:], date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with fs.open_input_stream(path) as f:
                    zf.writestr(info, f.read())
        if isinstance(zfs, pafs.LocalFileSystem):
            os.replace(tmp, zpath)
        else:
            with open(tmp, "rb") as f:
                dio.write_bytes(zip_path, f.read())
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(files)
