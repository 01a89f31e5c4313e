"""Seeding for randomly initialised models, so every process builds the same weights."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` with Python's, NumPy's and torch's RNGs seeded first, so a randomly
    initialised model (no checkpoint) gets the same weights in every process: the in-process
    executor, each Ray actor, and an actor rebuilt after a restart."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return build()
    torch.manual_seed(seed)
    return build()


__all__ = ["seeded"]
