"""The contracts: :class:`Stage`, which the runtime runs, and the protocols backends implement.
No Ray, no model imports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from rvos_ray.types import Candidates, Resources, Video


class Stage:
    """One step of the per-video graph (:mod:`rvos_ray.runtime.graph`), free of Ray.

    Built from its config section (its options parsed there, once), it declares its workers'
    :attr:`resources`, loads its models in :meth:`setup` (once per worker: an actor, or the
    in-process run; the executor seeds it with ``run.seed``) and maps records to records in
    :meth:`process`. The executor times and reports every ``process`` call
    (:func:`rvos_ray.runtime.graph.execute`). A stage without models (pooling, NMS, ensemble,
    writer) runs as a task with the ``tasks`` section's resources; one with models runs on
    ``resources.replicas`` actors of its own. A backend's own typed options are parsed in
    :meth:`setup`, where its module (and its heavy imports) is loaded."""

    stage: ClassVar[str] = ""  # its name in events, failures and the summary (pipeline.STAGES)

    def __init__(self, resources: Resources | None = None, name: str = "") -> None:
        self.resources = Resources() if resources is None else resources
        self.name = name  # which one, when a stage has several (a segmentation model, a grounder group)

    @property
    def key(self) -> tuple[str, ...]:
        """The stage object's key in the graph's calls: (stage,) or (stage, name)."""
        return (self.stage, self.name) if self.name else (self.stage,)

    @property
    def has_models(self) -> bool:
        return type(self).setup is not Stage.setup

    def setup(self) -> None:
        """Load the stage's models (a stage without models has nothing to load)."""

    def process(self, *inputs: Any) -> Any:
        """The stage on one call's inputs (records of :mod:`rvos_ray.types`): its outputs, a
        tuple when it has several."""
        raise NotImplementedError


@runtime_checkable
class Segmenter(Protocol):
    """Instance segmentation on keyframes."""

    name: str

    def segment(self, video: Video, frames: Sequence[int]) -> list[Candidates]:
        """One :class:`Candidates` per requested frame, masks at the frame's original size.
        Frames are read by the segmenter itself (batched over ``frames``)."""
        ...


@runtime_checkable
class Propagator(Protocol):
    """Propagates keyframe candidates forward and backward through the whole video."""

    def propagate(
        self, video: Video, candidates: Candidates, tracklet_ids: Sequence[int]
    ) -> pa.Table:
        """A tracklet table (``TRACKLET_SCHEMA``): one row per (candidate, frame) for every frame
        of the video; ``tracklet_ids[i]`` names candidate i's tracklet."""
        ...
