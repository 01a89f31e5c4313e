"""Referring expressions for synthetic scenes, each checked to be unambiguous in its video.

Every expression is a structured description with a ``referents(scene)`` test: the set of
objects it could denote, judged from the rendered scene (attributes, motion direction, and
positions on the frames where objects are actually visible). An expression is emitted only
when that set is exactly its target. Templates keep one small vocabulary, so a small text
encoder can learn it:

* attribute  "the small red triangle", "the blue star", "the large circle"
* motion     "the circle moving left", "the red square moving down", "the object moving up"
* spatial    "the leftmost triangle", "the circle to the right of the blue square"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvos_ray.data.synthetic_scene import VISIBLE_ANY, VISIBLE_GOOD, Scene, SceneObject

KINDS: tuple[str, ...] = ("attribute", "spatial", "motion")

# extreme word -> (coordinate, sign): the extreme object has the smallest sign * coordinate
EXTREMES: dict[str, tuple[str, int]] = {
    "leftmost": ("x", 1), "rightmost": ("x", -1), "topmost": ("y", 1), "bottommost": ("y", -1),
}
# relation words -> (coordinate, sign): "o <rel> B" holds when sign * (o - B) > 0
RELATIONS: dict[str, tuple[str, int]] = {
    "to the left of": ("x", -1), "to the right of": ("x", 1), "above": ("y", -1), "below": ("y", 1),
}


@dataclass(frozen=True)
class Phrase:
    """A noun phrase by attributes: "the [size] [colour] shape" (shape None -> "object")."""

    shape: str | None
    color: str | None = None
    size: str | None = None

    @property
    def text(self) -> str:
        return " ".join(["the", *(w for w in (self.size, self.color) if w), self.shape or "object"])

    def matches(self, o: SceneObject) -> bool:
        return ((self.shape is None or o.shape == self.shape)
                and (self.color is None or o.color == self.color)
                and (self.size is None or o.size == self.size))


def attribute_referents(phrase: Phrase, scene: Scene) -> set[int]:
    return {o.obj_id for o in scene.objects if phrase.matches(o)}


def motion_referents(phrase: Phrase, direction: str, scene: Scene) -> set[int]:
    return {o.obj_id for o in scene.objects if phrase.matches(o) and o.direction == direction}


def _coords(scene: Scene, axis: str) -> np.ndarray:
    """T x n centre coordinates."""
    return np.stack([o.xs if axis == "x" else o.ys for o in scene.objects], axis=1)


def extreme_referents(shape: str, extreme: str, scene: Scene) -> tuple[set[int], int]:
    """Objects that are (within a margin of) the extreme one of their shape on some frame where
    at least two of that shape are seen, and the number of frames where the extreme one is
    clearly so and well visible (for judging the target)."""
    axis, sign = EXTREMES[extreme]
    group = [i for i, o in enumerate(scene.objects) if o.shape == shape]
    coord = sign * _coords(scene, axis)[:, group]
    seen = scene.visible(VISIBLE_ANY)[:, group]
    good = scene.visible(VISIBLE_GOOD)[:, group]
    margin = 0.04 * min(scene.height, scene.width)
    out: set[int] = set()
    clear = 0
    for t in range(scene.num_frames):
        if seen[t].sum() < 2:
            continue
        c = np.where(seen[t], coord[t], np.inf)
        near = np.flatnonzero(seen[t] & (c <= c.min() + margin))
        out |= {scene.objects[group[j]].obj_id for j in near}
        if len(near) == 1 and good[t, near[0]]:
            clear += 1
    return out, clear


def relation_referents(shape: str, relation: str, ref: int, scene: Scene) -> tuple[set[int], dict[int, bool]]:
    """Objects of ``shape`` (other than the reference) that stand in ``relation`` to object
    index ``ref`` on some frame where both are seen; and, per such object, whether the relation
    holds clearly (by half their summed radii) on every co-visible frame, two of them well
    visible."""
    axis, sign = RELATIONS[relation]
    coord = _coords(scene, axis)
    seen = scene.visible(VISIBLE_ANY)
    good = scene.visible(VISIBLE_GOOD)
    b = scene.objects[ref]
    out: set[int] = set()
    strict: dict[int, bool] = {}
    for i, o in enumerate(scene.objects):
        if o.shape != shape or i == ref:
            continue
        both = seen[:, i] & seen[:, ref]
        if not both.any():
            continue
        offset = sign * (coord[:, i] - coord[:, ref])
        if (offset[both] > 0).any():
            out.add(o.obj_id)
            margin = 0.5 * (o.radius + b.radius)
            strict[o.obj_id] = bool((offset[both] >= margin).all()) and int((good[:, i] & good[:, ref]).sum()) >= 2
    return out, strict


def _attribute_phrases(o: SceneObject) -> list[Phrase]:
    return [Phrase(o.shape, o.color), Phrase(o.shape, size=o.size), Phrase(o.shape, o.color, o.size)]


def _unique_attribute_phrases(o: SceneObject, scene: Scene) -> list[Phrase]:
    return [p for p in _attribute_phrases(o) if attribute_referents(p, scene) == {o.obj_id}]


def candidates(o: SceneObject, scene: Scene) -> dict[str, list[tuple[str, bool]]]:
    """Every unambiguous expression for ``o`` by kind, as (text, informative): informative when
    its bare category is ambiguous in the scene, so the attribute / motion / relation is needed."""
    shape_ambiguous = len(attribute_referents(Phrase(o.shape), scene)) > 1
    out: dict[str, list[tuple[str, bool]]] = {k: [] for k in KINDS}
    for p in _unique_attribute_phrases(o, scene):
        out["attribute"].append((p.text, shape_ambiguous))
    for p in [Phrase(None), Phrase(o.shape), *_attribute_phrases(o)]:
        if motion_referents(p, o.direction, scene) == {o.obj_id}:
            # the motion is needed when the phrase alone would not pick the object out
            needed = len(attribute_referents(p, scene)) > 1
            out["motion"].append((f"{p.text} moving {o.direction}", needed))
    if shape_ambiguous:
        for word in EXTREMES:
            refs, clear = extreme_referents(o.shape, word, scene)
            if refs == {o.obj_id} and clear >= 2:
                out["spatial"].append((f"the {word} {o.shape}", True))
        for j, b in enumerate(scene.objects):
            if b.obj_id == o.obj_id:
                continue
            ref_phrases = [p for p in [Phrase(b.shape), Phrase(b.shape, b.color), Phrase(b.shape, b.color, b.size)]
                           if attribute_referents(p, scene) == {b.obj_id}]
            if not ref_phrases:
                continue
            for rel in RELATIONS:
                refs, strict = relation_referents(o.shape, rel, j, scene)
                if refs == {o.obj_id} and strict.get(o.obj_id, False):
                    out["spatial"].append((f"the {o.shape} {rel} {ref_phrases[0].text}", True))
    return out


def expressions_for(o: SceneObject, scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """2-3 (text, kind) for one object: one informative expression of each kind that has one
    (in random order), topped up with other unambiguous ones to reach two."""
    cands = candidates(o, scene)
    chosen: list[tuple[str, str]] = []
    for k in rng.permutation(len(KINDS)):
        kind = KINDS[int(k)]
        informative = [t for t, needed in cands[kind] if needed]
        if informative:
            chosen.append((informative[int(rng.integers(len(informative)))], kind))
    # Top up to two: a kind not yet used first, then any other. Attribute and motion options
    # always exist ("the <size> <colour> <shape> [moving <dir>]" is unique by construction).
    have = {k for _, k in chosen}
    fallbacks = [(t, k) for k in ("attribute", "motion") if k not in have for t, _ in cands[k][:1]]
    fallbacks += [(t, k) for k in ("attribute", "motion") for t, _ in cands[k]]
    for item in fallbacks:
        if len(chosen) >= 2:
            break
        if item not in chosen:
            chosen.append(item)
    return chosen
