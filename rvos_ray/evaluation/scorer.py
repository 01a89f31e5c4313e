"""Score predictions against a split's ground truth: per-expression J, F, J&F.

Protocols (per-frame J and F are :mod:`rvos_ray.evaluation.metrics`, DAVIS definitions):

- ``"rvos"`` (default, Ref-YouTube-VOS / MeViS practice): an expression is scored on every
  annotated frame of its video; its ground truth is the union mask of its ``obj_ids``. The
  expression's J and F are the means over those frames; the split's J and F are the means over
  expressions; J&F = (J + F) / 2.
- ``"davis"`` (DAVIS-2017 semi-supervised convention, as Ref-DAVIS17 is reported): the first and
  the last annotated frame of each video are excluded; each expression is scored on the rest as
  above (one row per expression in the table); the split figures aggregate **per object**:
  expressions of the same video that refer to the same object(s) are averaged into one object
  score, and J and F are the means over objects (DAVIS's per-object means over all sequences).

Every listed video of an annotated split needs ground truth: one without (no annotated frame,
e.g. its ``Annotations/<video>/`` folder is missing) is an error naming the folder, unless
``allow_missing_gt=True``, which leaves it out and reports it as skipped. The summary says what
was averaged: videos and expressions scored of those listed, and what was left out.

A prediction frame that is missing counts as an empty mask and is counted (``strict=True``
makes it an error). A prediction whose size differs from the ground truth is an error naming the
file and the expected size. Work is spread over videos (cut into runs of frames when there are
few): :func:`score_split` uses a process pool (file-based predictions); :meth:`Scorer.score`
uses threads (in-memory predictions). Expression means are taken over the per-frame values in
frame order whatever the split into units, so every run gives the same numbers.

Nothing here imports torch or ray, so ``rvos-ray score`` starts fast.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from rvos_ray.data import io as dio
from rvos_ray.data.datasets import open_dataset
from rvos_ray.data.errors import DataError
from rvos_ray.evaluation.metrics import BOUND_TH, frame_jf
from rvos_ray.evaluation.predictions import LAYOUT, PredictionSource, open_predictions
from rvos_ray.types import METRICS_SCHEMA, table_from_columns

PROTOCOLS = ("rvos", "davis")

# Readers whose label_map holds every object (palette PNG): read it once per frame and derive
# all expressions' masks from it, instead of decoding the same PNG once per expression.
_LABEL_MAP_DATASETS = ("refytvos", "davis")
MAX_MISSING_LISTED = 20
MAX_SKIPPED_SHOWN = 10  # skipped videos named in messages and the printed summary
MIN_CHUNK_FRAMES = 5  # frames per unit of work at least: a unit re-reads the video's meta


def eval_frames(protocol: str, annotated: Sequence[str]) -> list[str]:
    """The frames a protocol scores, from a video's annotated frames (in order)."""
    if protocol == "rvos":
        return list(annotated)
    if protocol == "davis":
        return list(annotated[1:-1])
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


@dataclass(frozen=True)
class ExpressionScore:
    """One expression's means over its scored frames (NaN when it has none)."""

    video: str
    exp_id: str
    obj_ids: tuple[int, ...]
    J: float
    F: float
    n_frames: int
    n_missing: int = 0

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2


def metrics_table(rows: Sequence[ExpressionScore], name: str = "metrics") -> pa.Table:
    """Per-expression scores as a metrics table (:data:`rvos_ray.types.METRICS_SCHEMA`)."""
    return table_from_columns({"video": [r.video for r in rows], "exp_id": [r.exp_id for r in rows],
                               "J": [r.J for r in rows], "F": [r.F for r in rows], "J&F": [r.JF for r in rows],
                               "n_frames": [r.n_frames for r in rows]}, METRICS_SCHEMA, name)


@dataclass
class VideoScore:
    video: str
    expressions: list[ExpressionScore]
    n_annotated: int
    n_missing: int = 0
    missing: list[str] = field(default_factory=list)  # first few names, for the report


@dataclass
class ScoreReport:
    """The scores of a split: per-expression rows plus what the summary needs.

    ``n_videos`` and ``expressions`` cover the videos scored; ``n_videos_listed`` and
    ``n_expressions_listed`` the videos asked for (default: the same), of which
    ``skipped_videos`` (no ground truth, allowed) were left out."""

    protocol: str
    expressions: list[ExpressionScore]
    n_videos: int
    n_annotated_frames: int
    n_missing: int
    missing: list[str]
    n_videos_listed: int | None = None
    n_expressions_listed: int | None = None
    skipped_videos: list[str] = field(default_factory=list)

    def table(self) -> pa.Table:
        """The per-expression metrics table (:data:`rvos_ray.types.METRICS_SCHEMA`)."""
        return metrics_table(self.expressions)

    def summary(self) -> dict[str, Any]:
        """Split figures: J, F, J&F (means over expressions, or over objects for "davis") and
        counts: videos and expressions scored (``n_videos``, ``n_expressions``: rows of the
        table) and listed, expressions in the means (``n_expressions_scored``), and the videos
        skipped for want of ground truth."""
        scored = [r for r in self.expressions if r.n_frames > 0]
        if self.protocol == "davis":
            groups: dict[tuple[str, tuple[int, ...]], list[ExpressionScore]] = {}
            for r in scored:
                groups.setdefault((r.video, tuple(sorted(r.obj_ids))), []).append(r)
            units = [(float(np.mean([r.J for r in g])), float(np.mean([r.F for r in g]))) for g in groups.values()]
        else:
            units = [(r.J, r.F) for r in scored]
        j = float(np.mean([u[0] for u in units])) if units else math.nan
        f = float(np.mean([u[1] for u in units])) if units else math.nan
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "J": j,
            "F": f,
            "J&F": (j + f) / 2,
            "n_videos": self.n_videos,
            "n_videos_listed": self.n_videos if self.n_videos_listed is None else self.n_videos_listed,
            "n_expressions": len(self.expressions),
            "n_expressions_listed": (len(self.expressions) if self.n_expressions_listed is None
                                     else self.n_expressions_listed),
            "n_expressions_scored": len(scored),
            "n_expressions_without_frames": len(self.expressions) - len(scored),
            "skipped_videos": list(self.skipped_videos),
            "n_frames": sum(r.n_frames for r in self.expressions),
            "n_annotated_frames": self.n_annotated_frames,
            "n_missing": self.n_missing,
        }
        if self.protocol == "davis":
            out["n_objects"] = len(units)
        return out

    def format_summary(self) -> str:
        s = self.summary()
        listed = f"{s['n_expressions_scored']} of {_count(s['n_expressions_listed'], 'listed expression')}"
        over = f"{_count(s['n_objects'], 'object')}, from {listed}" if self.protocol == "davis" else listed
        lines = [
            f"protocol {self.protocol}: scored {s['n_videos']} of {_count(s['n_videos_listed'], 'listed video')}, "
            f"{s['n_expressions']} of {_count(s['n_expressions_listed'], 'listed expression')}: "
            f"{s['n_frames']} expression-frames ({s['n_annotated_frames']} annotated frames)",
        ]
        if self.skipped_videos:
            n_exp = s["n_expressions_listed"] - s["n_expressions"]
            lines.append(f"skipped (no ground truth, --allow-missing-gt): {_count(len(self.skipped_videos), 'video')}, "
                         f"{_count(n_exp, 'expression')}: {_names(self.skipped_videos)}")
        lines.append(f"missing prediction frames: {s['n_missing']} of {s['n_frames']} (scored as empty masks)")
        if self.missing:
            shown = self.missing[:5]
            more = self.n_missing - len(shown)
            lines.append("  e.g. " + "\n       ".join(shown) + (f"\n       ... and {more} more" if more > 0 else ""))
        if s["n_expressions_without_frames"]:
            lines.append(f"expressions with no frame to score (left out of the means): {s['n_expressions_without_frames']}")
        lines.append(f"J {s['J']:.4f}   F {s['F']:.4f}   J&F {s['J&F']:.4f}   (mean over {over})")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_SKIPPED_SHOWN])
    return shown + (f" and {len(names) - MAX_SKIPPED_SHOWN} more" if len(names) > MAX_SKIPPED_SHOWN else "")


class Scorer:
    """Scores predictions against a dataset reader's ground truth.

    ``reader`` is a dataset reader (``expressions``, ``annotated_frames``, ``object_mask``; see
    :mod:`rvos_ray.data.refytvos`); ``predictions`` anything with ``read(video, exp_id, frame)``
    and ``name(...)`` (:mod:`rvos_ray.evaluation.predictions`, e.g. ``MemoryPredictions`` for
    masks held by the pipeline).
    """

    def __init__(self, reader, protocol: str = "rvos", strict: bool = False, bound_th: float = BOUND_TH):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        self.reader = reader
        self.protocol = protocol
        self.strict = strict
        self.bound_th = bound_th
        self._use_label_map = getattr(reader, "dataset", None) in _LABEL_MAP_DATASETS and hasattr(reader, "label_map")

    def frames(self, video: str) -> list[str]:
        """The frames of ``video`` this scorer's protocol scores."""
        return eval_frames(self.protocol, self.reader.annotated_frames(video))

    def score_video(self, video: str, predictions: PredictionSource) -> VideoScore:
        """All expressions of one video."""
        return _merge(video, [self.score_frames(video, self.frames(video), predictions)])

    def score_frames(self, video: str, frames: Sequence[str], predictions: PredictionSource) -> _Part:
        """Per-frame J and F of every expression of ``video`` on ``frames`` (a unit of work)."""
        reader = self.reader
        exps = reader.expressions(video)
        for e in exps:
            if not e.obj_ids:
                raise DataError(
                    f"{getattr(reader, 'meta_path', 'meta_expressions.json')}: expression {e.exp_id!r} of video "
                    f"{video!r} has no obj_id; scoring needs the ground-truth object of every expression"
                )
        part = _Part(video, [(e.exp_id, tuple(e.obj_ids)) for e in exps], len(frames))
        empty: np.ndarray | None = None
        for frame in frames:
            label_map = reader.label_map(video, frame) if self._use_label_map else None
            for k, e in enumerate(exps):
                gt = self._gt(label_map, video, frame, e.obj_ids)
                pred = predictions.read(video, e.exp_id, frame)
                if pred is None:
                    name = predictions.name(video, e.exp_id, frame)
                    if self.strict:
                        raise DataError(
                            f"{name}: prediction frame is missing (strict mode: every annotated frame of "
                            f"every expression needs a mask, {LAYOUT})"
                        )
                    part.missing_per_exp[k] += 1
                    if len(part.missing_names) < MAX_MISSING_LISTED:
                        part.missing_names.append(name)
                    if empty is None or empty.shape != gt.shape:
                        empty = np.zeros(gt.shape, np.uint8)
                    pred = empty
                elif pred.shape != gt.shape:
                    raise DataError(
                        f"{predictions.name(video, e.exp_id, frame)}: prediction is {_size(pred.shape)}, "
                        f"expected {_size(gt.shape)} (width x height) as the ground truth of video "
                        f"{video!r} frame {frame!r}"
                    )
                j, f = frame_jf(gt, pred, self.bound_th)
                part.js[k].append(j)
                part.fs[k].append(f)
        return part

    def _gt(self, label_map: np.ndarray | None, video: str, frame: str, obj_ids: tuple[int, ...]) -> np.ndarray:
        if label_map is None:
            return self.reader.object_mask(video, frame, obj_ids)
        if len(obj_ids) == 1:
            return (label_map == obj_ids[0]).view(np.uint8)
        return np.isin(label_map, obj_ids).view(np.uint8)

    def score(self, predictions: PredictionSource, videos: Sequence[str] | None = None, workers: int = 1,
              allow_missing_gt: bool = False) -> ScoreReport:
        """Score ``videos`` (default: all of the reader's) in this process, on ``workers`` threads
        (OpenCV and numpy release the GIL in the heavy parts). A listed video without ground
        truth is an error unless ``allow_missing_gt`` (then it is skipped and reported)."""
        listed = list(self.reader.video_ids() if videos is None else videos)
        videos, skipped = videos_with_ground_truth(self.reader, listed, allow_missing_gt)
        units = _units(self, videos, workers)
        if workers <= 1 or len(units) <= 1:
            parts = [self.score_frames(v, fr, predictions) for v, fr in units]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = _gather([pool.submit(self.score_frames, v, fr, predictions) for v, fr in units])
        return _report(self.protocol, videos, parts, self.reader, listed, skipped)


def videos_with_ground_truth(reader, videos: Sequence[str], allow_missing_gt: bool = False
                             ) -> tuple[list[str], list[str]]:
    """(videos with ground truth, videos without) of ``videos``, in order.

    A split where none has any is a :class:`DataError` (it cannot be scored); so is one where
    some lack it, naming the first ones' ground-truth folders, unless ``allow_missing_gt``."""
    if not videos:
        raise DataError(f"{_split_name(reader)}: no videos to score")
    have = [v for v in videos if reader.annotated_frames(v)]
    if not have:
        raise DataError(
            f"{_split_name(reader)} has no ground-truth annotations ({_gt_layout(reader)}); it cannot be scored"
        )
    with_gt = set(have)
    missing = [v for v in videos if v not in with_gt]
    if missing and not allow_missing_gt:
        first = missing[0]
        where = getattr(reader, "meta_path", "the split's meta_expressions.json")
        raise DataError(
            f"{_missing_gt(reader, first)}; {len(missing)} of {len(videos)} listed videos of "
            f"{_split_name(reader)} (listed in {where}) have no ground truth: {_names(missing)}. "
            f"Every listed video of an annotated split needs its ground truth; pass --allow-missing-gt "
            f"(allow_missing_gt=True) to score the others and report these as skipped"
        )
    return have, missing


def _split_name(reader) -> str:
    return f"split {getattr(reader, 'split', '?')!r} of {getattr(reader, 'root', '?')}"


def _gt_layout(reader) -> str:
    if hasattr(reader, "annotation_dir"):
        return "<split>/Annotations/<video>/<frame>.png"
    return f"{getattr(reader, 'mask_dict_path', 'ground truth')} is missing"


def _missing_gt(reader, video: str) -> str:
    """Where ``video``'s ground truth should be, and what is wrong with it."""
    if hasattr(reader, "annotation_dir"):
        folder = reader.annotation_dir(video)
        what = "holds no .png annotation" if dio.is_dir(folder) else "does not exist"
        return f"{folder}: ground-truth folder of video {video!r} {what}"
    return f"video {video!r} has no ground truth"


@dataclass
class _Part:
    """Per-frame J and F of one video's expressions on some of its frames."""

    video: str
    exps: list[tuple[str, tuple[int, ...]]]
    n_frames: int
    js: list[list[float]] = field(default_factory=list)
    fs: list[list[float]] = field(default_factory=list)
    missing_per_exp: list[int] = field(default_factory=list)
    missing_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.exps)
        self.js = self.js or [[] for _ in range(n)]
        self.fs = self.fs or [[] for _ in range(n)]
        self.missing_per_exp = self.missing_per_exp or [0] * n


def _merge(video: str, parts: list[_Part]) -> VideoScore:
    """One video's expression scores from its parts (in frame order, so the means are the same
    numbers a single pass gives)."""
    exps = parts[0].exps
    rows = []
    for k, (exp_id, obj_ids) in enumerate(exps):
        js = [j for p in parts for j in p.js[k]]
        fs = [f for p in parts for f in p.fs[k]]
        rows.append(ExpressionScore(
            video=video,
            exp_id=exp_id,
            obj_ids=obj_ids,
            J=float(np.mean(js)) if js else math.nan,
            F=float(np.mean(fs)) if fs else math.nan,
            n_frames=len(js),
            n_missing=sum(p.missing_per_exp[k] for p in parts),
        ))
    return VideoScore(
        video,
        rows,
        n_annotated=sum(p.n_frames for p in parts),
        n_missing=sum(sum(p.missing_per_exp) for p in parts),
        missing=[n for p in parts for n in p.missing_names][:MAX_MISSING_LISTED],
    )


def _units(scorer: Scorer, videos: Sequence[str], workers: int) -> list[tuple[str, list[str]]]:
    """(video, frames) units of work: whole videos, cut into runs of frames when there are too
    few videos to keep every worker busy to the end (a long video would otherwise finish last)."""
    frames = {v: scorer.frames(v) for v in videos}
    total = sum(len(f) for f in frames.values())
    chunk = max(MIN_CHUNK_FRAMES, math.ceil(total / (8 * max(1, workers))))
    units = []
    for v in videos:
        fr = frames[v]
        if not fr:
            units.append((v, []))
        units += [(v, fr[i:i + chunk]) for i in range(0, len(fr), chunk)]
    return units


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def score_split(
    data_root: str,
    split: str,
    predictions: str | PredictionSource,
    protocol: str = "rvos",
    strict: bool = False,
    workers: int | None = None,
    dataset: str = "refytvos",
    videos: Sequence[str] | None = None,
    bound_th: float = BOUND_TH,
    start_method: str = "forkserver",
    allow_missing_gt: bool = False,
) -> ScoreReport:
    """Score a submission folder or zip (either layout, :mod:`.predictions`; or a source opened
    by :func:`open_predictions`) against a split, across ``workers`` processes. A listed video
    without ground truth is an error naming its folder unless ``allow_missing_gt`` (then it is
    skipped and reported).

    ``start_method``: how worker processes start. "forkserver" (default) is safe from any
    caller: workers fork from a clean server that preloaded this module, never from a parent
    that may hold threads (pyarrow, OpenCV, a pipeline's own). "fork" skips the server's start
    (about 0.3 s of imports) and is what ``rvos-ray score`` uses: its parent has only imported
    modules and read JSON when the pool starts.
    """
    reader = open_dataset(data_root, split, dataset)
    listed = list(reader.video_ids() if videos is None else videos)
    videos, skipped = videos_with_ground_truth(reader, listed, allow_missing_gt)
    source = open_predictions(predictions) if isinstance(predictions, (str, os.PathLike)) else predictions
    scorer = Scorer(reader, protocol=protocol, strict=strict, bound_th=bound_th)
    workers = default_workers() if workers is None else max(1, int(workers))
    units = _units(scorer, videos, workers)
    workers = min(workers, len(units))
    if workers <= 1:
        parts = [scorer.score_frames(v, fr, source) for v, fr in units]
        return _report(protocol, videos, parts, reader, listed, skipped)
    # The scorer and source reach each worker once, through the initializer.
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(scorer, source)) as pool:
        parts = _gather([pool.submit(_score_in_worker, v, fr) for v, fr in units])
    return _report(protocol, videos, parts, reader, listed, skipped)


_WORKER: tuple[Scorer, PredictionSource] | None = None


def _init_worker(scorer: Scorer, source: PredictionSource) -> None:
    global _WORKER
    cv2.setNumThreads(1)  # parallelism is across videos; one thread each avoids oversubscription
    _WORKER = (scorer, source)


def _score_in_worker(video: str, frames: list[str]) -> _Part:
    assert _WORKER is not None, "worker not initialised"
    scorer, source = _WORKER
    return scorer.score_frames(video, frames, source)


def _gather(futures: list) -> list:
    """Results in submission order; the first error cancels what has not started and is raised."""
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def _report(protocol: str, videos: Sequence[str], parts: list[_Part], reader=None,
            listed: Sequence[str] | None = None, skipped: Sequence[str] = ()) -> ScoreReport:
    by_video: dict[str, list[_Part]] = {}
    for p in parts:
        by_video.setdefault(p.video, []).append(p)
    results = [_merge(v, by_video[v]) for v in videos]
    missing: list[str] = []
    for r in results:
        missing.extend(r.missing[: MAX_MISSING_LISTED - len(missing)])
    return ScoreReport(
        protocol=protocol,
        expressions=[e for r in results for e in r.expressions],
        n_videos=len(results),
        n_annotated_frames=sum(r.n_annotated for r in results),
        n_missing=sum(r.n_missing for r in results),
        missing=missing,
        n_videos_listed=len(videos) if listed is None else len(listed),
        n_expressions_listed=(sum(len(r.expressions) for r in results)
                              + sum(len(reader.expressions(v)) for v in skipped)),
        skipped_videos=list(skipped),
    )


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(shape)


def write_metrics(table: pa.Table, path: str) -> None:
    """Write the metrics table to ``.csv`` or ``.parquet`` (by extension), atomically."""
    from rvos_ray.data import io as dio

    lower = str(path).lower()
    sink = pa.BufferOutputStream()
    if lower.endswith(".csv"):
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sink)
    elif lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    else:
        raise DataError(f"output {path}: expected a .csv or .parquet file name")
    dio.write_bytes(str(path), sink.getvalue().to_pybytes())
