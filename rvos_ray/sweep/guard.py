"""A guard that makes any model build or forward pass inside a block fail.

Cache trials must never touch a model: that is the whole point of sweeping over cached
probabilities. :func:`forbid_models` enforces it instead of trusting it:

* every registry build or lookup (segmenters, propagators, encoders: ``Registry.build`` /
  ``Registry.get``, which every stage's ``setup`` goes through) raises :class:`ModelCallError`;
* when torch is loaded, ``torch.nn.Module.__call__`` raises too, so even a model built before
  the block cannot run a forward pass inside it;
* modules of model families (``torch``, ``mmdet``, ``mmcv``, ``timm``, ``transformers`` and the
  project's ``rvos_ray.models`` / ``rvos_ray.backends``) first imported inside the block are an
  error at its end: importing one is the first step of building a model.

The guard counts what it refused (``guard.refused``) so a trial can report ``model_calls: 0``.
It patches process-wide attributes, so use it around code that runs alone in its process or
thread pool (a Tune trial, a test), not around concurrent unrelated work.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["ModelCallError", "ModelGuard", "forbid_models", "HEAVY_MODULES"]

#: module name prefixes whose first import inside a guarded block is an error
HEAVY_MODULES = ("torch", "mmdet", "mmcv", "timm", "transformers", "rvos_ray.models", "rvos_ray.backends")

_LOCK = threading.Lock()


class ModelCallError(RuntimeError):
    """A model was built or called where only cached tables may be used."""


@dataclass
class ModelGuard:
    refused: list[str] = field(default_factory=list)

    def refuse(self, what: str) -> None:
        self.refused.append(what)
        raise ModelCallError(f"{what} inside a cache-only sweep trial: trials recompute from the run's "
                             f"cached tables and must not build or run a model")


def _heavy_loaded() -> set[str]:
    return {m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)}


@contextmanager
def forbid_models() -> Iterator[ModelGuard]:
    """Inside the block, building or calling a model raises :class:`ModelCallError`."""
    from rvos_ray import registry

    guard = ModelGuard()
    patches: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, what: str) -> None:
        patches.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))

        def refused(*args, **kwargs):
            guard.refuse(what)

        setattr(owner, name, refused)

    with _LOCK:
        before = _heavy_loaded()
        patch(registry.Registry, "build", "a registry build (Registry.build)")
        patch(registry.Registry, "get", "a registry lookup of a model class (Registry.get)")
        torch = sys.modules.get("torch")
        if torch is not None:
            patch(torch.nn.Module, "__call__", "a torch.nn.Module forward pass")
    try:
        yield guard
    finally:
        with _LOCK:
            for owner, name, old in reversed(patches):
                setattr(owner, name, old)
            new = sorted(_heavy_loaded() - before)
    if new:
        guard.refused.append(f"imports {new[:5]}")
        raise ModelCallError(f"model modules {new[:5]} were imported inside a cache-only sweep trial")
