"""The run directory: everything one run writes, at a local path or a pyarrow.fs URI.

Layout (every file written atomically: temp sibling, then rename)::

    <run>/config.yaml                       the resolved config of the run
    <run>/videos/<vid>/tracklets_all.parquet every propagated tracklet (TRACKLET_SCHEMA)
    <run>/videos/<vid>/tracklets.parquet    the tracklets kept by tracklet-NMS (grounding input)
    <run>/videos/<vid>/grounding.parquet    s_p^t of every variant (GROUNDING_SCHEMA)
    <run>/videos/<vid>/prediction.parquet   the chosen tracklet per expression (PREDICTION_SCHEMA)
    <run>/videos/<vid>/metrics.parquet      per-expression J/F (METRICS_SCHEMA; annotated splits)
    <run>/videos/<vid>/events.jsonl         stage start/end of every item of the video
    <run>/videos/<vid>/done.json            written LAST: the video is finished (resume key)
    <run>/failures/<vid>.json               a video that failed after retries (cause included)
    <run>/submission/Annotations/<vid>/<exp_id>/<frame>.png
    <run>/predictions.parquet  metrics.parquet  failures.parquet   the split, merged at the end
    <run>/submission.zip  summary.json  events.jsonl

The per-video Parquet tables are the cache a sweep over ensemble settings reads
(:meth:`RunDir.read_table`). A video counts as finished only when ``done.json`` exists, so a
crash between two writes leaves it unfinished and a re-run simply redoes it.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from rvos_ray.data import io as fio
from rvos_ray.registry import ConfigError
from rvos_ray.types import (
    FAILURE_SCHEMA,
    GROUNDING_SCHEMA,
    METRICS_SCHEMA,
    PREDICTION_SCHEMA,
    TRACKLET_SCHEMA,
    Failure,
    table_from_columns,
    validate,
)

#: per-video tables of the cache: file stem -> schema
VIDEO_TABLES: dict[str, pa.Schema] = {
    "tracklets_all": TRACKLET_SCHEMA,
    "tracklets": TRACKLET_SCHEMA,
    "grounding": GROUNDING_SCHEMA,
    "prediction": PREDICTION_SCHEMA,
    "metrics": METRICS_SCHEMA,
}

#: config sections and keys that do not change results: a resumed run may differ in these
_RESUME_FREE_SECTIONS = ("ray",)
_RESUME_FREE_KEYS = (("run", "dir"), ("run", "resume"), ("run", "submission_zip"), ("data", "videos"),
                     ("evaluation", "workers"))


def table_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd), ready for an atomic write."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def table_from_bytes(data: bytes, schema: pa.Schema, name: str) -> pa.Table:
    return validate(pq.read_table(io.BytesIO(data)), schema, name)


class RunDir:
    """Paths and atomic reads/writes of one run directory (local path or URI)."""

    def __init__(self, uri: str) -> None:
        if not str(uri).strip():
            raise ConfigError("run.dir is empty; give the run directory (local path or URI)")
        self.uri = str(uri).rstrip("/") if "://" in str(uri) else fio.resolve(uri)[1]

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    def path(self, *parts: str) -> str:
        return fio.join(self.uri, *parts)

    # ---- run-level files --------------------------------------------------------------------

    @property
    def config_path(self) -> str:
        return self.path("config.yaml")

    @property
    def submission_dir(self) -> str:
        return self.path("submission")

    @property
    def submission_zip(self) -> str:
        return self.path("submission.zip")

    def video_path(self, video_id: str, name: str) -> str:
        return self.path("videos", video_id, name)

    def write_config(self, cfg: DictConfig) -> None:
        """Store the resolved config. When one is already there (resume), it must agree with
        ``cfg`` on every result-affecting key; otherwise the finished videos would mix two
        settings, so that is an error naming the keys."""
        text = OmegaConf.to_yaml(cfg, resolve=True)
        if fio.exists(self.config_path):
            old = OmegaConf.create(fio.read_bytes(self.config_path).decode())
            diff = config_differences(old, cfg)
            if diff:
                raise ConfigError(
                    f"{self.config_path}: this run directory was made with a different config "
                    f"(keys {', '.join(diff)}); use a new run.dir, or run.resume=false to redo it"
                )
        fio.write_bytes(self.config_path, text.encode())

    # ---- per-video tables -------------------------------------------------------------------

    def write_table(self, video_id: str, stem: str, table: pa.Table) -> None:
        schema = VIDEO_TABLES[stem]
        table = validate(table, schema, f"{stem} table of {video_id!r}")
        fio.write_bytes(self.video_path(video_id, f"{stem}.parquet"), table_bytes(table))

    def read_table(self, video_id: str, stem: str) -> pa.Table:
        """A cached per-video table (``stem`` in :data:`VIDEO_TABLES`)."""
        path = self.video_path(video_id, f"{stem}.parquet")
        return table_from_bytes(fio.read_bytes(path), VIDEO_TABLES[stem], path)

    def has_table(self, video_id: str, stem: str) -> bool:
        return fio.exists(self.video_path(video_id, f"{stem}.parquet"))

    def write_events(self, video_id: str, events: Iterable[dict]) -> None:
        lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
        fio.write_bytes(self.video_path(video_id, "events.jsonl"), lines.encode())

    def read_events(self, video_id: str) -> list[dict]:
        path = self.video_path(video_id, "events.jsonl")
        if not fio.exists(path):
            return []
        return [json.loads(line) for line in fio.read_bytes(path).decode().splitlines() if line]

    # ---- done / failed ------------------------------------------------------------------------

    def mark_done(self, video_id: str, record: dict[str, Any]) -> None:
        """Written last for a video: from now on a resumed run skips it."""
        record = {"video_id": video_id, "finished_at": time.time(), **record}
        fio.write_bytes(self.video_path(video_id, "done.json"), json.dumps(record, sort_keys=True).encode())
        # A video that failed in an earlier attempt and now succeeded is no longer failed.
        self.clear_failure(video_id)

    def is_done(self, video_id: str) -> bool:
        return fio.exists(self.video_path(video_id, "done.json"))

    def done_record(self, video_id: str) -> dict[str, Any]:
        return json.loads(fio.read_bytes(self.video_path(video_id, "done.json")))

    def done_videos(self) -> set[str]:
        """Ids of every finished video (one directory listing plus one stat per video)."""
        root = self.path("videos")
        if not fio.is_dir(root):
            return set()
        return {v for v in fio.list_dir(root) if self.is_done(v)}

    def write_failure(self, failure: Failure) -> None:
        rec = {"video_id": failure.video_id, "stage": failure.stage, "error": failure.error,
               "message": failure.message, "traceback": failure.traceback, "failed_at": time.time()}
        fio.write_bytes(self.path("failures", f"{failure.video_id}.json"),
                        json.dumps(rec, sort_keys=True).encode())

    def clear_failure(self, video_id: str) -> None:
        path = self.path("failures", f"{video_id}.json")
        if fio.exists(path):
            fs, p = fio.resolve(path)
            fs.delete_file(p)

    def failures(self) -> list[Failure]:
        root = self.path("failures")
        if not fio.is_dir(root):
            return []
        out = []
        for name in fio.list_dir(root):
            if name.endswith(".json") and not name.startswith("."):
                rec = json.loads(fio.read_bytes(fio.join(root, name)))
                out.append(Failure(rec["video_id"], rec["stage"], rec["error"], rec["message"],
                                   rec.get("traceback", "")))
        return out

    # ---- split-level merge ----------------------------------------------------------------------

    def merge(self, stem: str, video_ids: Iterable[str], out_name: str) -> pa.Table:
        """Concatenate a per-video table over ``video_ids`` (those that have it), sorted by
        its key columns, and write it atomically as ``<run>/<out_name>``."""
        schema = VIDEO_TABLES[stem]
        parts = [self.read_table(v, stem) for v in sorted(video_ids) if self.has_table(v, stem)]
        table = pa.concat_tables(parts) if parts else schema.empty_table()
        keys = [k for k in ("video_id", "video", "exp_id", "variant", "tracklet_id", "frame")
                if k in schema.names]
        table = table.sort_by([(k, "ascending") for k in keys])
        fio.write_bytes(self.path(out_name), table_bytes(table))
        return table

    def write_failures_table(self, failures: list[Failure]) -> pa.Table:
        failures = sorted(failures, key=lambda f: f.video_id)  # the schema's columns are Failure's fields
        table = table_from_columns({k: [getattr(f, k) for f in failures] for k in FAILURE_SCHEMA.names},
                                   FAILURE_SCHEMA, "failures")
        fio.write_bytes(self.path("failures.parquet"), table_bytes(table))
        return table

    def read_split_table(self, out_name: str, stem: str) -> pa.Table:
        path = self.path(out_name)
        return table_from_bytes(fio.read_bytes(path), VIDEO_TABLES[stem], path)

    def write_json(self, name: str, obj: Any) -> None:
        fio.write_bytes(self.path(name), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, name: str) -> Any:
        return json.loads(fio.read_bytes(self.path(name)))

    def write_run_events(self, events: Iterable[dict]) -> None:
        """The run's event log: driver events plus every finished video's stage events."""
        lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
        fio.write_bytes(self.path("events.jsonl"), lines.encode())


def config_differences(old: DictConfig, new: DictConfig) -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring the sections and keys
    that do not change results (Ray settings, where the run lives, the video selection, scorer
    workers)."""
    a = OmegaConf.to_container(old, resolve=True)
    b = OmegaConf.to_container(new, resolve=True)
    for d in (a, b):
        for s in _RESUME_FREE_SECTIONS:
            d.pop(s, None)
        for sec, key in _RESUME_FREE_KEYS:
            if isinstance(d.get(sec), dict):
                d[sec].pop(key, None)
    out: list[str] = []
    _diff(a, b, "", out)
    return out


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k), out)
    elif a != b:
        out.append(prefix or "<root>")
