"""Structured configs: the dataclasses every YAML in ``configs/`` is validated against.

``load_config(path, overrides)`` merges the YAML over these defaults, applies OmegaConf dotlist
overrides (``key=value``), and raises :class:`ConfigError` naming the key and the file for an
unknown key or a wrongly typed value. Backend sections (``segmentation.models[*]``,
``propagation``, ``grounding.variants[*]``) carry ``backend:`` plus that backend's own typed
options, validated against the backend's ``Options`` dataclass by :mod:`rvos_ray.registry`
when the backend is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rvos_ray.registry import ConfigError
from rvos_ray.types import Resources

__all__ = ["ConfigError", "RunConfig", "apply_overrides", "load_config", "to_yaml"]


@dataclass
class DataConfig:
    root: str = "data/shapes"  # dataset root: local path or pyarrow.fs URI (s3://, gs://)
    split: str = "valid"  # train / valid / test
    dataset: str = "refytvos"  # refytvos | davis | mevis
    videos: Any = None  # None (all), a count, or a list of video ids
    strict: bool = False  # a video with broken input (missing frame, bad meta entry) stops the run


@dataclass
class RunSection:
    dir: str = "runs/default"  # run directory: local path or URI
    seed: int = 0
    resume: bool = True  # skip videos whose outputs are complete
    submission_zip: bool = True
    score: bool = True  # per-expression metrics when the split is annotated (infer: false)


@dataclass
class RaySection:
    address: str = ""  # empty: start a local Ray; else an existing cluster ("auto", ray://...)
    num_cpus: Any = None  # local Ray only
    resources: dict[str, float] = field(default_factory=dict)  # local Ray only: custom resources
    dashboard_host: str = "127.0.0.1"
    dashboard: bool = False  # local Ray only: start the dashboard (bound to dashboard_host)
    log_to_driver: bool = True  # print workers' logs on the driver
    max_videos_in_flight: int = 4  # ray.wait backpressure
    max_retries: int = 2  # retries of a CPU task whose worker died (actor calls: while it restarts)
    max_restarts: int = 2  # actor restarts (in place, or on another node after a node loss)
    video_retries: int = 2  # resubmissions of a video's graph after a system failure (lost objects)
    stall_timeout_s: float = 900.0  # no call finished for this long: fail what is pending, with a report
    placement_timeout_s: float = 300.0  # actors not started by then: PlacementError
    autoscaling: bool = False  # cluster grows on demand: skip the up-front feasibility check


@dataclass
class KeyframesConfig:
    k: int = 7  # keyframes sampled uniformly over the video (paper: K=7)


@dataclass
class SegmentationConfig:
    # each entry: {name: ..., backend: mmdet|mask2former, <that backend's options>}
    models: list[Any] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)


@dataclass
class AvoidConfig:
    """Propagation work avoided (rvos_ray/stages/prune.py); all off: the paper."""

    duplicate_iou: Optional[float] = None  # merge same-keyframe candidates above this mask IoU
    covered_iou: Optional[float] = None  # skip candidates an earlier keyframe's tracklet covers
    feature_cache_frames: int = 0  # frames whose backbone features a propagator keeps for the
    # video's later calls (cfbi); 0 = none


@dataclass
class PropagationConfig:
    backend: str = "cfbi"  # cfbi | sam2
    options: dict[str, Any] = field(default_factory=dict)  # the backend's typed options
    candidates_per_call: int = 8  # chunk of candidates one propagation call handles
    avoid: AvoidConfig = field(default_factory=AvoidConfig)
    resources: Resources = field(default_factory=Resources)


@dataclass
class NMSConfig:
    iou_threshold: float = 0.5  # tracklet-IoU above which the lower-scored tracklet is removed
    max_tracklets: int = 10  # P: tracklets kept per video (paper: 10)
    min_score: float = 0.0  # tracklets scoring below are dropped before NMS


@dataclass
class GroundingConfig:
    # each entry: {name: ..., <grounder options: visual/text encoders, checkpoint, ...>}
    variants: list[Any] = field(default_factory=list)
    frame_stride: int = 1  # ground every n-th frame; s_p averages over those
    # transformer: the grounder head (Eq. 6) | similarity: cosine of pooled visual and mean word
    # features (the paper's naive ablation baseline, rvos_ray/stages/naive_ground.py)
    method: str = "transformer"
    resources: Resources = field(default_factory=Resources)


@dataclass
class EnsembleConfig:
    weights: dict[str, float] = field(default_factory=dict)  # per variant; empty = equal
    mode: str = "mean"  # mean | logmean
    temperature: float = 1.0
    frame_stride: int = 1  # s_p averages every n-th grounded frame
    variants: Any = None  # None (all grounded variants) or a list of variant names


@dataclass
class TasksConfig:
    # the stages without models (pooling, NMS, ensemble, writer) run as tasks asking for these
    resources: Resources = field(default_factory=Resources)


@dataclass
class EvaluationConfig:
    protocol: str = "rvos"  # rvos | davis
    strict: bool = False  # a missing prediction frame is an error instead of an empty mask
    workers: int = 0  # scorer processes; 0 = all cores


@dataclass
class GrounderDataConfig:
    kind: str = "refytvos"  # refytvos (Ref-YouTube-VOS layout) | refcoco (REFER layout)
    root: str = ""  # dataset root: local path or URI
    split: str = "train"
    dataset: str = "refcoco"  # refcoco only: folder under root (refcoco | refcoco+ | refcocog)
    split_by: str = "unc"  # refcoco only: reads refs(<split_by>).p (refcocog: umd | google)
    image_dir: str = ""  # refcoco only: COCO train2014 images ('': <root>/images/mscoco/images/train2014)
    tracklets: str = ""  # refytvos only: pipeline tracklets <dir>/<video>.parquet ('': GT objects)
    match_iou: float = 0.5  # refytvos + tracklets: min tracklet-IoU to the referred object
    videos: Any = None  # refytvos only: None (all), a count, or a list of video ids


@dataclass
class GrounderPhaseConfig:
    enabled: bool = True
    data: list[GrounderDataConfig] = field(default_factory=list)  # training sets (concatenated)
    val: list[GrounderDataConfig] = field(default_factory=list)  # held-out sets scored each epoch
    lr: float = 4e-5  # Adam learning rate
    epochs: int = 20


@dataclass
class TrainGrounderConfig:
    variant: str = ""  # grounding.variants entry to train ('': the first)
    out_dir: str = "runs/grounder"  # <out_dir>/<variant>/: weights, metrics, Ray Train checkpoints
    num_workers: int = 1  # Ray Train workers (DDP)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    batch_size: int = 48  # clips per optimizer step, over all workers
    frames_per_clip: int = 1  # frames sampled per clip and step (one loss term each)
    weight_decay: float = 1e-4
    max_candidates: int = 10  # P: candidates kept per image / video
    max_steps_per_epoch: int = 0  # 0: a full pass over the clips
    val_every: int = 1  # score the val sets every n epochs (and after the last)
    checkpoints_to_keep: int = 2
    seed: int = 0
    pretrain: GrounderPhaseConfig = field(
        default_factory=lambda: GrounderPhaseConfig(enabled=False, lr=4e-5, epochs=20))
    finetune: GrounderPhaseConfig = field(
        default_factory=lambda: GrounderPhaseConfig(enabled=True, lr=1e-5, epochs=5))


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    run: RunSection = field(default_factory=RunSection)
    ray: RaySection = field(default_factory=RaySection)
    keyframes: KeyframesConfig = field(default_factory=KeyframesConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    nms: NMSConfig = field(default_factory=NMSConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    train_grounder: TrainGrounderConfig = field(default_factory=TrainGrounderConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated against :class:`RunConfig`."""
    where = str(path) if path else "<defaults>"
    cfg = OmegaConf.structured(RunConfig)
    try:
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        apply_overrides(cfg, overrides)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = getattr(e, "msg", str(e))
        raise ConfigError(f"{where}: key {key!r}: {msg}" if key else f"{where}: {msg}") from e
    for section in ("segmentation.models", "grounding.variants"):
        names = [str(e.get("name", "")) if isinstance(e, DictConfig) else "" for e in OmegaConf.select(cfg, section)]
        if "" in names:
            raise ConfigError(f"{where}: every entry of {section} needs a name (entry {names.index('')})")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{where}: {section} names must be unique (actors, tables and ensemble "
                              f"weights are keyed by them); repeated: {twice}")
    for key in ABSOLUTE_PATHS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
            OmegaConf.update(cfg, key, str(Path(value).absolute()))
    OmegaConf.set_readonly(cfg, True)
    return cfg


#: local paths made absolute when a config is loaded: the run directory's config.yaml is read
#: again by other processes (a sweep's Ray job, a resumed run) whose working directory differs
ABSOLUTE_PATHS = ("data.root", "run.dir")


def apply_overrides(cfg: DictConfig, items: Sequence[str] | None) -> None:
    """``key=value`` overrides, in place, in order. A value is parsed as in a dotlist (YAML
    scalars, lists, dicts); a key may index lists (``segmentation.models.0.checkpoint=...``)."""
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        value = OmegaConf.from_dotlist([f"v={raw}"])["v"]
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if parent and node is None:
            raise ConfigError(f"override {item!r}: no config section {parent!r}")
        if isinstance(node, ListConfig) and not (leaf.isdigit() and int(leaf) < len(node)):
            raise ConfigError(f"override {item!r}: {parent} is a list of {len(node)}; use an index 0..{len(node) - 1}")
        OmegaConf.update(cfg, key, value, merge=True)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
