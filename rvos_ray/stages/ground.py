"""Grounding stage: every expression of a video against its tracklets, for one group of
variants that share encoders (:func:`encoder_groups`). The group's models are a
:class:`rvos_ray.models.grounder_group.GrounderGroup`, which runs each distinct encoder once per
frame / expression for all of its variants; this module imports no torch (the driver builds the
stage, the actor loads the models in :meth:`GroundStage.setup`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from rvos_ray.registry import ConfigError
from rvos_ray.stages.protocols import Stage
from rvos_ray.types import Resources, VideoWork

METHODS = ("transformer", "similarity")


class GroundStage(Stage):
    """The variants ``variants`` of the ``grounding`` section in one stage, each built seeded
    with ``seed``. ``grounding.method: similarity``: the naive cosine-similarity grounding of
    the ablation (:mod:`rvos_ray.stages.naive_ground`)."""

    stage = "grounding"

    def __init__(self, section: Mapping[str, Any], variants: Sequence[str], seed: int) -> None:
        super().__init__(Resources.of(section), "+".join(variants))
        self.method = str(section.get("method", "transformer"))
        if self.method not in METHODS:
            raise ConfigError(f"grounding.method: {self.method!r} is not one of {list(METHODS)}")
        self.section, self.variants, self.seed = dict(section), list(variants), int(seed)
        self.model: Any = None

    def setup(self) -> None:
        if self.method == "similarity":
            from rvos_ray.stages.naive_ground import SimilarityGrounderGroup as Group
        else:
            from rvos_ray.models.grounder_group import GrounderGroup as Group
        self.model = Group.from_config(self.section, variants=self.variants, seed=self.seed)

    def process(self, work: VideoWork, tracklets: pa.Table) -> tuple[pa.Table, dict[str, dict[str, int]]]:
        """(grounding table, encoder passes of this call: ``{"visual": {encoder: frames},
        "text": {encoder: expressions}}``)."""
        before = self.passes()
        table = self.model.ground(work.video, tracklets, list(work.expressions))
        after = self.passes()
        return table, {kind: {k: d for k, n in after[kind].items() if (d := n - before[kind].get(k, 0))}
                       for kind in after}

    def passes(self) -> dict[str, dict[str, int]]:
        """The encoder work the group has done since it was built."""
        c = self.model.counts
        return {"visual": dict(c.visual_frames), "text": dict(c.text_expressions)}


def encoder_groups(entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """Variant names in groups that should share one stage: two variants are in one group when
    their ``visual`` or their ``text`` encoder configs are equal (and so, transitively, are
    the variants linked through them). In config order. Sharing inside a stage is decided by
    the weights (:meth:`sharing_key`); this only decides which variants meet in one."""
    import json

    names = [str(e.get("name")) for e in entries]
    parent = list(range(len(entries)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    seen: dict[tuple[str, str], int] = {}
    for i, e in enumerate(entries):
        for part in ("visual", "text"):
            key = (part, json.dumps(e.get(part) or {}, sort_keys=True, default=str))
            if key in seen:
                parent[root(i)] = root(seen[key])
            else:
                seen[key] = i
    groups: dict[int, list[str]] = {}
    for i, n in enumerate(names):
        groups.setdefault(root(i), []).append(n)
    return [tuple(g) for g in sorted(groups.values(), key=lambda g: names.index(g[0]))]
