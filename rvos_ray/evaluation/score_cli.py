"""`rvos-ray score`: score a submission folder or zip against a split's ground truth.

    rvos-ray score --data-root ROOT --split valid --predictions sub.zip --out metrics.csv

Predictions in either layout, detected: ``Annotations/<video>/<exp_id>/<frame>.png``
(Ref-YouTube-VOS, Ref-DAVIS) or ``<video>/<exp_id>/<frame>.png`` at the root (MeViS). Writes one
row per expression (``video, exp_id, J, F, J&F, n_frames``; ``.csv`` or ``.parquet`` by the
extension of ``--out``) and prints a summary of what was averaged. Exit code 0 on success, 2 for
bad input (missing data, a listed video without ground truth unless ``--allow-missing-gt``, a
prediction PNG of the wrong size or unreadable, a missing frame under ``--strict``), with one
line naming the file or folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from rvos_ray.data.errors import DataError
from rvos_ray.data.datasets import DATASETS
from rvos_ray.data.submission import SUBMISSION_LAYOUTS
from rvos_ray.evaluation.predictions import (
    LAYOUTS,
    VIDEO_LAYOUT,
    PredictionSource,
    ZipPredictions,
    open_predictions,
)
from rvos_ray.evaluation.scorer import PROTOCOLS, default_workers, score_split, write_metrics

DATASET_NAMES = {"refytvos": "Ref-YouTube-VOS", "davis": "Ref-DAVIS", "mevis": "MeViS"}
_ZIP_LAYOUTS = {"annotations": "Annotations/ at the zip root", "videos": f"{VIDEO_LAYOUT} at the zip root"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rvos-ray score",
        description="Score predictions (folder or zip of Annotations/<video>/<exp_id>/<frame>.png, "
        "or of <video>/<exp_id>/<frame>.png at the root as MeViS submits them; detected) "
        "with the DAVIS J and F definitions; one row per expression.",
    )
    p.add_argument("--data-root", required=True, help="dataset root (local path or pyarrow.fs URI)")
    p.add_argument("--split", default="valid", help="split to score (default: valid)")
    p.add_argument("--predictions", required=True,
                   help="submission folder or .zip holding Annotations/ or the video folders (MeViS)")
    p.add_argument("--out", required=True, help="per-expression metrics file, .csv or .parquet")
    p.add_argument("--protocol", choices=PROTOCOLS, default="rvos",
                   help="rvos: every annotated frame, mean over expressions (default); "
                   "davis: DAVIS-2017 convention, first/last frame excluded, mean over objects")
    p.add_argument("--strict", action="store_true", help="a missing prediction frame is an error")
    p.add_argument("--allow-missing-gt", action="store_true",
                   help="score a split where some listed videos have no ground truth: skip and report "
                   "them (default: an error naming the video's ground-truth folder)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"processes across videos (default: all cores, here {default_workers()})")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="refytvos", help="dataset reader")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out.lower().endswith((".csv", ".parquet")):
        raise DataError(f"--out {args.out}: expected a .csv or .parquet file name")
    if args.workers is not None and args.workers < 1:
        raise DataError(f"--workers {args.workers}: expected a positive number of processes")
    t0 = time.perf_counter()
    source = open_predictions(args.predictions)
    report = score_split(
        args.data_root,
        args.split,
        source,
        protocol=args.protocol,
        strict=args.strict,
        workers=args.workers,
        dataset=args.dataset,
        allow_missing_gt=args.allow_missing_gt,
        # this process has only imported modules and read JSON: forking it is safe and saves
        # the fork server's start
        start_method="fork" if sys.platform.startswith("linux") else "spawn",
    )
    write_metrics(report.table(), args.out)
    seconds = time.perf_counter() - t0
    summary = report.summary()
    print(predictions_line(args.predictions, source, args.dataset))
    print(report.format_summary())
    print(f"wrote {args.out} ({len(report.expressions)} rows) in {seconds:.2f} s")
    if args.json:
        # NaN (no frame to score at all) is not JSON: write null
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
        print(json.dumps({**clean, "seconds": round(seconds, 3)}))
    return 0


def predictions_line(path: str, source: PredictionSource, dataset: str) -> str:
    """The predictions' layout as detected, and for a zip whether ``dataset``'s server takes it."""
    layout = getattr(source, "layout", "")
    line = f"predictions: {path} ({LAYOUTS.get(layout, layout)})"
    want = SUBMISSION_LAYOUTS.get(dataset)
    if isinstance(source, ZipPredictions) and want and want != layout:
        line += (f"\n  note: the {DATASET_NAMES.get(dataset, dataset)} server expects {_ZIP_LAYOUTS[want]}; "
                 f"this zip holds {_ZIP_LAYOUTS[layout]}")
    return line


if __name__ == "__main__":
    sys.exit(main())
