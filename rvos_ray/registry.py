"""Explicit registries of backends and encoders, built from config sections.

Contract for a registered class: it has a nested dataclass ``Options`` (every typed option of
that backend, with defaults and a comment per field) and a constructor ``cls(options)``.
Entries are "module:attribute" strings so heavy imports (mmdet, transformers) happen only
when that backend is built.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry:
    """Name -> lazily imported class."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        if name in self._targets:
            raise RegistryError(f"{self.kind} {name!r} is registered twice")
        self._targets[name] = target

    def names(self) -> list[str]:
        return sorted(self._targets)

    def get(self, name: str) -> type:
        if name not in self._targets:
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        module, _, attr = self._targets[name].partition(":")
        return getattr(importlib.import_module(module), attr)

    def options(self, name: str, section: Mapping[str, Any], where: str) -> Any:
        """Validate ``section`` (minus its ``backend``/``name`` keys) against the backend's
        ``Options`` dataclass; an unknown key or a wrong type raises naming ``where``."""
        cls = self.get(name)
        return parse_options(cls.Options, section, where)

    def build(self, name: str, section: Mapping[str, Any], where: str, **kwargs: Any) -> Any:
        cls = self.get(name)
        return cls(parse_options(cls.Options, section, where), **kwargs)


_META_KEYS = ("backend", "name", "resources")


def parse_options(options_cls: type, section: Mapping[str, Any], where: str) -> Any:
    """Typed options from a config mapping; errors name the key and ``where`` it came from."""
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"{options_cls!r} is not a dataclass")
    data = OmegaConf.to_container(OmegaConf.create(dict(section)), resolve=True) if section else {}
    known = {f.name for f in dataclasses.fields(options_cls)}
    # section bookkeeping keys are not options unless the backend declares them
    data = {k: v for k, v in data.items() if k in known or k not in _META_KEYS}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of {sorted(known)}")
    schema = OmegaConf.structured(options_cls)
    try:
        merged = OmegaConf.merge(schema, data)
    except (ValidationError, ConfigKeyError) as e:
        raise ConfigError(f"{where}: {e.msg if hasattr(e, 'msg') else e}") from e
    return OmegaConf.to_object(merged)


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and the file or section."""


SEGMENTERS = Registry("segmenter")
PROPAGATORS = Registry("propagator")
VISUAL_ENCODERS = Registry("visual encoder")
TEXT_ENCODERS = Registry("text encoder")

# --- segmentation backends (keyframe instance segmentation) --------------------------------
SEGMENTERS.register("mmdet", "rvos_ray.backends.segment_mmdet:MMDetSegmenter")
SEGMENTERS.register("mask2former", "rvos_ray.backends.segment_mask2former:Mask2FormerSegmenter")

# --- propagation backends (keyframe candidates -> tracklets) --------------------------------
PROPAGATORS.register("cfbi", "rvos_ray.backends.propagate_cfbi:CFBIPropagator")
PROPAGATORS.register("sam2", "rvos_ray.backends.propagate_sam2:Sam2Propagator")
PROPAGATORS.register("none", "rvos_ray.backends.propagate_none:KeyframeOnlyPropagator")  # ablation baseline

# --- encoders (grounding) -------------------------------------------------------------------
VISUAL_ENCODERS.register("timm", "rvos_ray.models.encoders:TimmVisualEncoder")
TEXT_ENCODERS.register("hf", "rvos_ray.models.encoders:HFTextEncoder")
