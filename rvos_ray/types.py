"""Records that flow between stages, and the Arrow schemas of the tables that rest in a run.

Every boundary has exactly one record type, defined here. Third-party outputs (mmdet
``DetDataSample``, Hugging Face model outputs) are converted to these at the backend edge.

Masks travel and rest as COCO RLE: ``counts`` bytes plus the frame's height and width
(see :mod:`rvos_ray.masks`); never as dense arrays in a table or the object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa


class SchemaError(ValueError):
    """A table or record does not match its declared schema; the message names the column."""


# --------------------------------------------------------------------------------------------
# Dataclass records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Video:
    """One video of a split: its frames, by name and by path or URI (local or pyarrow.fs).

    Frames are never held here; a stage that needs pixels reads them itself
    (:func:`rvos_ray.data.io.read_image`), so a Video is cheap to ship to any worker.
    """

    video_id: str
    frame_names: tuple[str, ...]
    frame_paths: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.frame_names) != len(self.frame_paths):
            raise SchemaError(
                f"Video {self.video_id!r}: {len(self.frame_names)} frame names but "
                f"{len(self.frame_paths)} frame paths"
            )

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)


@dataclass(frozen=True)
class Expression:
    """A referring expression. ``obj_ids`` holds one id (Ref-YouTube-VOS) or several (MeViS,
    where the referred mask is the union). ``kind`` is the synthetic benchmark's
    attribute / spatial / motion label, ``None`` for real datasets."""

    video_id: str
    exp_id: str
    text: str
    obj_ids: tuple[int, ...]
    kind: str | None = None


@dataclass(frozen=True)
class VideoWork:
    """One video of the split with its expressions: all a worker needs (no pixels)."""

    video: Video
    expressions: tuple[Expression, ...]

    @property
    def video_id(self) -> str:
        return self.video.video_id


@dataclass(frozen=True)
class Candidates:
    """Instance mask candidates on one keyframe, pooled over segmentation models.

    Index i across ``rles``/``scores``/``labels``/``sources`` is one candidate; ``rles`` are
    COCO RLE ``counts`` at the frame's original ``height`` x ``width``.
    """

    video_id: str
    frame: int
    height: int
    width: int
    rles: tuple[bytes, ...] = ()
    scores: tuple[float, ...] = ()
    labels: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.rles)
        for name in ("scores", "labels", "sources"):
            if len(getattr(self, name)) != n:
                raise SchemaError(
                    f"Candidates({self.video_id!r}, frame {self.frame}): {n} rles but "
                    f"{len(getattr(self, name))} {name}"
                )
        for s in self.scores:
            if not (0.0 <= s <= 1.0) or s != s:
                raise SchemaError(
                    f"Candidates({self.video_id!r}, frame {self.frame}): score {s} not in [0, 1]"
                )

    def __len__(self) -> int:
        return len(self.rles)

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        """Pool candidates of several models on the same keyframe (sources kept)."""
        if not parts:
            raise ValueError("Candidates.concat needs at least one part")
        first = parts[0]
        for p in parts[1:]:
            if (p.video_id, p.frame, p.height, p.width) != (
                first.video_id, first.frame, first.height, first.width
            ):
                raise SchemaError(
                    f"cannot pool candidates of {p.video_id!r} frame {p.frame} ({p.height}x"
                    f"{p.width}) with {first.video_id!r} frame {first.frame} "
                    f"({first.height}x{first.width})"
                )
        return Candidates(
            video_id=first.video_id,
            frame=first.frame,
            height=first.height,
            width=first.width,
            rles=tuple(r for p in parts for r in p.rles),
            scores=tuple(s for p in parts for s in p.scores),
            labels=tuple(lab for p in parts for lab in p.labels),
            sources=tuple(s for p in parts for s in p.sources),
        )


@dataclass(frozen=True)
class Failure:
    """A video that failed after retries; the rest of the split goes on."""

    video_id: str
    stage: str
    error: str
    message: str
    traceback: str = ""  # where it was raised (the worker's traceback under Ray)


@dataclass
class Resources:
    """Resources of one stage's workers: the ``resources`` key of a stage's config section
    (this dataclass is also its schema in :mod:`rvos_ray.config`)."""

    num_cpus: float = 1.0  # CPUs reserved by each worker of the stage
    num_gpus: float = 0.0  # GPUs per worker (fractions share a GPU)
    replicas: int = 1  # actor pool size
    batch_size: int = 1  # items per model call (keyframes, frames, candidates)
    custom: dict[str, float] = field(default_factory=dict)  # Ray custom resources, e.g. {seg: 1}

    @classmethod
    def of(cls, section: Any) -> Resources:
        """The ``resources`` of a stage's config section (a dict or a DictConfig; absent keys
        take these defaults, which are also the config schema's)."""
        r = section.get("resources") or {}
        d = cls()
        return cls(num_cpus=float(r.get("num_cpus", d.num_cpus)), num_gpus=float(r.get("num_gpus", d.num_gpus)),
                   replicas=int(r.get("replicas", d.replicas)), batch_size=int(r.get("batch_size", d.batch_size)),
                   custom={str(k): float(v) for k, v in (r.get("custom") or {}).items()})


# --------------------------------------------------------------------------------------------
# Arrow schemas: one definition per table
# --------------------------------------------------------------------------------------------

TRACKLET_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("tracklet_id", pa.int32()),
        ("keyframe", pa.int32()),
        ("source", pa.dictionary(pa.int32(), pa.string())),
        ("det_score", pa.float32()),
        ("frame", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("rle", pa.binary()),
        ("prob", pa.float32()),
    ]
)
"""One row per (tracklet, frame). ``rle`` is COCO RLE counts; an empty mask is a valid RLE."""

GROUNDING_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("exp_id", pa.string()),
        ("variant", pa.string()),
        ("tracklet_id", pa.int32()),
        ("frame", pa.int32()),
        ("prob", pa.float32()),
    ]
)
"""Per-frame grounding probability s_p^t of each tracklet for each expression and variant."""

PREDICTION_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("exp_id", pa.string()),
        ("tracklet_id", pa.int32()),
        ("score", pa.float32()),
    ]
)
"""The chosen tracklet per expression (its masks come from the tracklet table)."""

METRICS_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("exp_id", pa.string()),
        ("J", pa.float64()),
        ("F", pa.float64()),
        ("J&F", pa.float64()),
        ("n_frames", pa.int32()),
    ]
)
"""Per-expression metrics."""

FAILURE_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("stage", pa.string()),
        ("error", pa.string()),
        ("message", pa.string()),
        ("traceback", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "tracklet": TRACKLET_SCHEMA,
    "grounding": GROUNDING_SCHEMA,
    "prediction": PREDICTION_SCHEMA,
    "metrics": METRICS_SCHEMA,
    "failure": FAILURE_SCHEMA,
}


def validate(table: pa.Table, schema: pa.Schema, name: str = "table") -> pa.Table:
    """Check ``table`` against ``schema``: every column present with the declared type.

    Returns the table with columns in schema order (extra columns are an error too, so a typo
    never travels silently). Raises :class:`SchemaError` naming the column and expected type.
    """
    if not isinstance(table, pa.Table):
        raise SchemaError(f"{name}: expected a pyarrow.Table, got {type(table).__name__}")
    have = set(table.column_names)
    for f in schema:
        if f.name not in have:
            raise SchemaError(f"{name}: missing column {f.name!r} (expected {f.type})")
        got = table.schema.field(f.name).type
        if got != f.type:
            raise SchemaError(f"{name}: column {f.name!r} has type {got}, expected {f.type}")
    extra = have - set(schema.names)
    if extra:
        raise SchemaError(f"{name}: unexpected column(s) {sorted(extra)}; schema has {schema.names}")
    return table.select(schema.names)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def table_from_columns(columns: dict[str, object], schema: pa.Schema, name: str = "table") -> pa.Table:
    """Build a table of ``schema`` from python lists / numpy arrays, casting each column to its
    declared type (a value that cannot be cast raises :class:`SchemaError` naming the column)."""
    arrays = []
    for f in schema:
        if f.name not in columns:
            raise SchemaError(f"{name}: missing column {f.name!r} (expected {f.type})")
        values = columns[f.name]
        try:
            if pa.types.is_dictionary(f.type):
                arr = pa.array(list(values) if not isinstance(values, pa.Array) else values,
                               type=pa.string()).dictionary_encode()
                arr = arr.cast(f.type)
            else:
                if isinstance(values, np.ndarray):
                    arr = pa.array(values).cast(f.type)
                else:
                    arr = pa.array(values, type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise SchemaError(f"{name}: column {f.name!r} cannot be {f.type}: {e}") from e
        arrays.append(arr)
    extra = set(columns) - set(schema.names)
    if extra:
        raise SchemaError(f"{name}: unexpected column(s) {sorted(extra)}; schema has {schema.names}")
    return pa.Table.from_arrays(arrays, schema=schema)
