"""Scenes of the synthetic benchmark: moving coloured shapes over a textured background.

A scene is sampled from a seeded ``numpy.random.Generator`` (so it is a pure function of the
seed) and rendered frame by frame: objects are drawn back to front in depth order, so the
label map holds each object's visible, un-occluded part. Objects move along a dominant axis
(left / right / up / down) and may enter or leave the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 205, 35),
    "purple": (150, 60, 190),
}
# Diameter as a fraction of the frame's short side: small ones stay >= 12% of it so a model
# at 48-96 px still sees them; large ones are ~1.8x bigger so "small"/"large" is clear.
SIZES: dict[str, float] = {"small": 0.15, "large": 0.27}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

VISIBLE_ANY = 0.10  # fraction of an object's full area from which it counts as seen at all
VISIBLE_GOOD = 0.40  # ... from which its position is judged reliably


@dataclass(frozen=True)
class SceneObject:
    """One object: attributes, motion, depth, and its centre on every frame (may be off-frame)."""

    obj_id: int
    shape: str
    color: str
    size: str
    radius: float
    direction: str
    depth: int  # draw order: larger is nearer (drawn later)
    xs: np.ndarray  # centre x per frame, float
    ys: np.ndarray  # centre y per frame, float


@dataclass
class Scene:
    height: int
    width: int
    num_frames: int
    objects: list[SceneObject]
    background: np.ndarray  # HxWx3 uint8
    sprites: list[tuple[np.ndarray, np.ndarray]]  # per object: (bool mask, RGB) of (2R+1)^2
    visible_area: np.ndarray | None = None  # T x n pixel counts, filled by render()

    @property
    def full_area(self) -> np.ndarray:
        return np.array([m.sum() for m, _ in self.sprites], dtype=np.int64)

    def visible(self, fraction: float) -> np.ndarray:
        """T x n bool: object shows at least ``fraction`` of its full area on the frame."""
        assert self.visible_area is not None, "render() the scene first"
        return self.visible_area >= fraction * self.full_area[None, :]

    def render(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """All frames (HxWx3 uint8) and label maps (HxW uint8, pixel = obj_id)."""
        frames, labels = [], []
        order = sorted(range(len(self.objects)), key=lambda i: self.objects[i].depth)
        n = len(self.objects)
        areas = np.zeros((self.num_frames, n), dtype=np.int64)
        for t in range(self.num_frames):
            img = self.background.copy()
            lab = np.zeros((self.height, self.width), dtype=np.uint8)
            for i in order:
                o = self.objects[i]
                mask, rgb = self.sprites[i]
                _paste(img, lab, mask, rgb, o.obj_id, o.xs[t], o.ys[t])
            counts = np.bincount(lab.ravel(), minlength=n + 1)
            areas[t] = [counts[o.obj_id] for o in self.objects]
            frames.append(img)
            labels.append(lab)
        self.visible_area = areas
        return frames, labels


def _paste(img: np.ndarray, lab: np.ndarray, mask: np.ndarray, rgb: np.ndarray, oid: int,
           cx: float, cy: float) -> None:
    """Draw a sprite centred at (cx, cy), clipped to the frame; nearer objects come later."""
    h, w = lab.shape
    r = mask.shape[0] // 2
    x0, y0 = int(round(cx)) - r, int(round(cy)) - r
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + mask.shape[1], w), min(y0 + mask.shape[0], h)
    if xa >= xb or ya >= yb:
        return
    m = mask[ya - y0:yb - y0, xa - x0:xb - x0]
    img[ya:yb, xa:xb][m] = rgb[ya - y0:yb - y0, xa - x0:xb - x0][m]
    lab[ya:yb, xa:xb][m] = oid


def shape_mask(shape: str, radius: float) -> np.ndarray:
    """Boolean (2R+1)x(2R+1) mask of a shape of the given radius, centred."""
    big_r = int(math.ceil(radius)) + 1
    n = 2 * big_r + 1
    c = big_r
    if shape == "circle":
        yy, xx = np.mgrid[:n, :n]
        return (xx - c) ** 2 + (yy - c) ** 2 <= radius**2
    im = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(im)
    if shape == "square":
        h = radius * 0.82  # about the circle's area
        pts = [(c - h, c - h), (c + h, c - h), (c + h, c + h), (c - h, c + h)]
    elif shape == "triangle":
        # equilateral, pointing up, a little larger than inscribed so its area is comparable
        rr = radius * 1.1
        pts = [(c + rr * math.cos(a), c - rr * math.sin(a) + 0.2 * radius)
               for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
        pts = [(min(max(x, 0), n - 1), min(max(y, 0), n - 1)) for x, y in pts]
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = radius if k % 2 == 0 else radius * 0.48
            a = math.pi / 2 + k * math.pi / 5
            pts.append((c + rr * math.cos(a), c - rr * math.sin(a)))
    elif shape == "cross":
        a, b = radius, radius * 0.36
        pts = [(c - b, c - a), (c + b, c - a), (c + b, c - b), (c + a, c - b), (c + a, c + b),
               (c + b, c + b), (c + b, c + a), (c - b, c + a), (c - b, c + b), (c - a, c + b),
               (c - a, c - b), (c - b, c - b)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    draw.polygon(pts, fill=255)
    return np.asarray(im) > 0


def _sprite(shape: str, color: str, radius: float) -> tuple[np.ndarray, np.ndarray]:
    mask = shape_mask(shape, radius)
    n = mask.shape[0]
    # A soft top-to-bottom shading keeps the colour's identity but looks less flat.
    shade = np.linspace(1.12, 0.82, n, dtype=np.float32)[:, None, None]
    rgb = np.clip(np.asarray(COLORS[color], np.float32)[None, None, :] * shade, 0, 255)
    rgb = np.broadcast_to(rgb, (n, n, 3)).astype(np.uint8)
    return mask, rgb


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A greyish colour: backgrounds stay desaturated so saturated objects stand out."""
    grey = rng.uniform(70, 190)
    return np.clip(grey + rng.uniform(-22, 22, size=3), 0, 255).astype(np.float32)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A seeded texture: smooth noise, stripes, a gradient or a checkerboard, plus grain."""
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    if kind == 0:  # smooth noise: a small random grid upsampled
        gh, gw = int(rng.integers(3, 8)), int(rng.integers(4, 12))
        grid = Image.fromarray(rng.uniform(0, 1, size=(gh, gw)).astype(np.float32))
        s = np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    elif kind == 1:  # stripes at a random angle
        th, period = rng.uniform(0, math.pi), rng.uniform(14, 44)
        s = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(th) + yy * math.sin(th)) / period)
    elif kind == 2:  # linear gradient
        th = rng.uniform(0, 2 * math.pi)
        p = xx * math.cos(th) + yy * math.sin(th)
        s = (p - p.min()) / max(float(p.max() - p.min()), 1.0)
    else:  # checkerboard
        cell = rng.uniform(16, 40)
        s = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    s = np.clip(s, 0, 1)[..., None]
    c1, c2 = _muted(rng), _muted(rng)
    img = c1 * (1 - s) + c2 * s + rng.normal(0, 5, size=(height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _trajectory(rng: np.random.Generator, direction: str, r: float, height: int, width: int,
                num_frames: int, lane: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centres along a dominant axis: 'inside' the frame, 'enter' from off-frame, or 'leave'.

    ``lane`` (fractions of the cross axis) keeps the object in a band across its motion, so
    objects in separate lanes keep their order (which spatial expressions rely on).
    """
    horizontal = direction in ("left", "right")
    length, cross = (width, height) if horizontal else (height, width)
    lo, hi = r, length - r  # along-axis range where the object is fully inside
    mode = rng.choice(3, p=[0.5, 0.25, 0.25])
    if mode == 0:
        travel = rng.uniform(0.3, 0.6) * (hi - lo)
        u0 = rng.uniform(lo, hi - travel)
        u1 = u0 + travel
    elif mode == 1:  # enter: starts fully outside, behind its direction of motion
        u0 = -r - rng.uniform(0, 0.1 * length)
        u1 = rng.uniform(lo + 0.3 * (hi - lo), hi)
    else:  # leave: ends fully outside
        u0 = rng.uniform(lo, lo + 0.6 * (hi - lo))
        u1 = length + r + rng.uniform(0, 0.1 * length)
    v_lo, v_hi = r, cross - r
    if lane is not None:
        v_lo, v_hi = max(v_lo, lane[0] * cross), min(v_hi, lane[1] * cross)
        if v_lo > v_hi:  # band narrower than the object: keep to its centre
            v_lo = v_hi = float(np.clip(0.5 * (lane[0] + lane[1]) * cross, r, cross - r))
    v0 = rng.uniform(v_lo, v_hi)
    drift = rng.uniform(-0.2, 0.2) * abs(u1 - u0)  # the dominant axis stays >= 5x the other
    v1 = float(np.clip(v0 + drift, v_lo, v_hi))
    t = np.linspace(0.0, 1.0, num_frames)
    wobble = rng.uniform(0, 2.5) * np.sin(2 * math.pi * (t * rng.uniform(0.5, 2) + rng.uniform()))
    u = u0 + (u1 - u0) * t
    v = v0 + (v1 - v0) * t + wobble
    if direction in ("left", "up"):
        u = length - u
    return (u, v) if horizontal else (v, u)


def sample_scene(rng: np.random.Generator, height: int, width: int, num_frames: int) -> Scene:
    """3-5 objects with unique (shape, colour, size); one shape repeats 2-3 times so that
    same-category distractors are the norm."""
    n = int(rng.integers(3, 6))
    main = SHAPES[int(rng.integers(len(SHAPES)))]
    m = int(rng.integers(2, min(3, n) + 1))
    shapes = [main] * m + [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n - m)]
    shapes = [shapes[i] for i in rng.permutation(n)]
    used: set[tuple[str, str, str]] = set()
    depth = rng.permutation(n)
    short = min(height, width)
    # Often the same-shape objects move along one axis in separate lanes, so their order
    # across the motion ("the topmost triangle") holds for the whole video.
    lanes: dict[int, tuple[float, float]] = {}
    lane_axis = None
    if rng.random() < 0.6:
        lane_axis = ("left", "right") if rng.random() < 0.5 else ("up", "down")
        members = [i for i, s in enumerate(shapes) if s == main]
        for k, i in zip(rng.permutation(len(members)), members):
            width_k = 1.0 / len(members)
            centre = (k + 0.5) * width_k
            lanes[i] = (centre - 0.22 * width_k, centre + 0.22 * width_k)
    colors, sizes = list(COLORS), list(SIZES)
    objects, sprites = [], []
    for i, shape in enumerate(shapes):
        while True:
            color = colors[int(rng.integers(len(colors)))]
            size = sizes[int(rng.integers(len(sizes)))]
            if (shape, color, size) not in used:
                used.add((shape, color, size))
                break
        radius = 0.5 * SIZES[size] * short * rng.uniform(0.95, 1.05)
        if i in lanes and lane_axis is not None:
            direction = lane_axis[int(rng.integers(2))]
        else:
            direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        xs, ys = _trajectory(rng, direction, radius, height, width, num_frames, lanes.get(i))
        objects.append(SceneObject(i + 1, shape, color, size, radius, direction, int(depth[i]), xs, ys))
        sprites.append(_sprite(shape, color, radius))
    return Scene(height, width, num_frames, objects, background(rng, height, width), sprites)
