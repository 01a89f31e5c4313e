"""The runtime's builders: a split's reader and scorer (cached per process), and the models of
the graph's pools (segmenters, the propagator, grounding groups) from their config sections.

Every import is lazy: building an actor imports only what that actor needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def open_dataset(dataset: str, root: str, split: str) -> Any:
    """The split's reader (cached per process: each worker builds it once, from small JSON)."""
    from rvos_ray.data.datasets import open_dataset as open_

    return open_(root, split, dataset)


@lru_cache(maxsize=8)
def scorer(dataset: str, root: str, split: str, protocol: str, strict: bool) -> Any:
    from rvos_ray.evaluation.scorer import Scorer

    return Scorer(open_dataset(dataset, root, split), protocol=protocol, strict=strict)


# --------------------------------------------------------------------------------------------
# Model builders (called once per actor, or once per in-process run)
# --------------------------------------------------------------------------------------------


def build_segmenter(entry: Mapping[str, Any], where: str) -> Any:
    """One segmentation model with its score calibration from a ``segmentation.models`` entry
    (the pooling step pools the models' candidates per keyframe)."""
    from rvos_ray.stages.segment import build_segmenter as build_one

    return build_one(entry, where)


def build_propagator(section: Mapping[str, Any]) -> Any:
    """The ``propagation`` section's backend (``backend`` + its typed ``options``), keeping
    ``avoid.feature_cache_frames`` frames' features when that is set (a backend that cannot
    is a ConfigError)."""
    from rvos_ray.registry import PROPAGATORS, ConfigError

    backend = str(section["backend"])
    frames = int((section.get("avoid") or {}).get("feature_cache_frames") or 0)
    if frames and not hasattr(PROPAGATORS.get(backend), "FEATURE_CACHE"):
        raise ConfigError(f"propagation.avoid.feature_cache_frames: the {backend!r} backend keeps no frame "
                          "features; set it to 0")
    kwargs = {"feature_cache_frames": frames} if frames else {}
    return PROPAGATORS.build(backend, section.get("options") or {}, "propagation.options", **kwargs)


def build_grounder(variants: Sequence[str], grounding: Mapping[str, Any], seed: int) -> Any:
    """One grounding stage holding the variants named ``variants`` of the ``grounding`` section
    (a group of :func:`~rvos_ray.stages.ground.encoder_groups`: its shared encoders run once per
    frame / expression for all of them); each variant is built seeded with ``seed``.
    ``grounding.method: similarity``: the naive cosine-similarity stage of the ablation."""
    from rvos_ray.stages.ground import GroundingStage

    method = str(grounding.get("method", "transformer"))
    if method == "similarity":
        from rvos_ray.stages.naive_ground import SimilarityGroundingStage

        return SimilarityGroundingStage.from_config(grounding, variants=list(variants), seed=seed)
    if method != "transformer":
        from rvos_ray.registry import ConfigError

        raise ConfigError(f"grounding.method: {method!r} is not one of ['transformer', 'similarity']")
    return GroundingStage.from_config(grounding, variants=list(variants), seed=seed)


def grounder_groups(grounding: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The ``grounding`` section's variants in groups that run in one stage (one actor), so
    that each encoder they share runs once (see :func:`~rvos_ray.stages.ground.encoder_groups`)."""
    from rvos_ray.stages.ground import encoder_groups

    return encoder_groups(grounding.get("variants") or [])


def group_name(group: Sequence[str]) -> str:
    """A grounder group's name in events, telemetry tags and actor names: its variants, joined."""
    return "+".join(group)
