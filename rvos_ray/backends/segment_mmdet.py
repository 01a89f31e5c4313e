"""Instance segmentation through MMDetection (HTC, CondInst, any mmdet instance model).

The only module of the package that imports mmdet at inference. It builds the detector from
an mmdet config (one shipped inside the mmdet package, e.g.
``htc/htc_x101-64x4d-dconv-c3-c5_fpn_ms-400-1400-16xb1-20e_coco.py``, or a user file that may
``_base_``-inherit ``mmdet::...`` configs), loads an OpenMMLab checkpoint from a path, a
pyarrow.fs URI or an http(s) URL, runs the config's own test pipeline on batches of keyframes,
and converts mmdet's ``DetDataSample.pred_instances`` to :class:`rvos_ray.types.Candidates`
right here, at the boundary.
"""

from __future__ import annotations

import io as _io
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rvos_ray.data import io
from rvos_ray.data.errors import DataError
from rvos_ray.registry import ConfigError
from rvos_ray.stages.segment import BatchedSegmenter, make_candidates
from rvos_ray.types import Candidates

log = logging.getLogger(__name__)

_LOAD_ANNOTATION_TYPES = {"LoadAnnotations", "mmdet.LoadAnnotations", "LoadPanopticAnnotations"}
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LOAD_IMAGE_TYPES = {"LoadImageFromFile", "mmdet.LoadImageFromFile", "mmcv.LoadImageFromFile"}


def mmdet_config_dir() -> str:
    """The configs shipped inside the installed mmdet package (``<mmdet>/.mim/configs``)."""
    import mmdet

    return os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")


def resolve_config(config: str) -> str:
    """A local config file for ``config``: an existing path, a path relative to the rvos-ray
    checkout (``configs/segmenter/condinst_tiny.py``), or a path relative to mmdet's packaged
    configs (``htc/htc_r50_fpn_1x_coco.py``; an ``mmdet::`` prefix is accepted)."""
    if not config:
        raise ConfigError("mmdet segmenter: option 'config' is empty; give an mmdet config path")
    if os.path.isfile(config):
        return config
    in_repo = os.path.join(_REPO, config)  # configs/segmenter/*.py from any working directory
    if not os.path.isabs(config) and os.path.isfile(in_repo):
        return in_repo
    rel = config.split("::", 1)[1] if config.startswith("mmdet::") else config
    packaged = os.path.join(mmdet_config_dir(), rel)
    if os.path.isfile(packaged):
        return packaged
    raise ConfigError(
        f"mmdet segmenter: config {config!r} is neither a file nor a config shipped with mmdet "
        f"(looked in {mmdet_config_dir()})"
    )


def load_config(config: str, cfg_options: dict[str, Any] | None = None):
    """The mmengine ``Config`` of ``config`` with ``cfg_options`` (dotted keys) merged in."""
    from mmengine.config import Config

    cfg = Config.fromfile(resolve_config(config))
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    return cfg


def read_checkpoint(source: str) -> dict:
    """A checkpoint dict from a local path, a pyarrow.fs URI (s3://, gs://) or an http(s) URL.

    URLs are downloaded once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where
    OpenMMLab tools cache them too). Loading is ``weights_only``: tensors and plain containers
    only, never arbitrary pickled objects.
    """
    import torch

    if source.startswith(("http://", "https://")):
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        os.makedirs(cache, exist_ok=True)
        local = os.path.join(cache, os.path.basename(source.split("?", 1)[0]))
        if not os.path.isfile(local):
            log.info("downloading %s to %s", source, local)
            torch.hub.download_url_to_file(source, local, progress=False)
        return torch.load(local, map_location="cpu", weights_only=True)
    if not io.exists(source):
        raise DataError(f"mmdet segmenter: checkpoint {source} does not exist")
    data = io.read_bytes(source)
    try:
        return torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError variants for bad files
        raise DataError(f"mmdet segmenter: cannot load checkpoint {source}: {e}") from e


def _check_state(expected: dict, state: dict, checkpoint: str, config: str) -> None:
    """A checkpoint must cover every weight of the model with the right shape: a partial load
    would silently leave random weights. Extra keys (training-only buffers) are tolerated."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or wrong:
        detail = (f"{len(missing)} weights missing (first: {missing[:3]})" if missing else "") + (
            f"{'; ' if missing else ''}{len(wrong)} of another shape (first: {wrong[:2]})" if wrong else ""
        )
        raise DataError(f"mmdet segmenter: checkpoint {checkpoint} does not fit config {config}: {detail}")


def _set_test_thresholds(model_cfg: Any, score_threshold: float, mask_threshold: float, max_per_frame: int) -> None:
    """Write our thresholds into the model's test_cfg so it does not drop candidates first.

    Two-stage models (HTC, Mask R-CNN) keep them under ``test_cfg.rcnn``; single-stage ones
    (CondInst, SOLO) at the top. The RPN's ``max_per_img`` (proposal count) is left alone.
    """
    test_cfg = model_cfg.get("test_cfg")
    if not test_cfg:
        return
    target = test_cfg.get("rcnn") or test_cfg
    if "score_thr" in target:
        target["score_thr"] = float(score_threshold)
    if "max_per_img" in target:
        target["max_per_img"] = int(max_per_frame)
    for key in ("mask_thr", "mask_thr_binary"):
        if key in target:
            target[key] = float(mask_threshold)


class MMDetSegmenter(BatchedSegmenter):
    """A :class:`~rvos_ray.stages.protocols.Segmenter` over an mmdet instance model."""

    @dataclass
    class Options:
        config: str = ""  # mmdet config: a file, or a path inside mmdet's packaged configs
        checkpoint: str = ""  # path, URI or URL of the weights; "" = random init (tests only)
        cfg_options: dict[str, Any] = field(default_factory=dict)  # dotted-key config overrides
        score_threshold: float = 0.3  # candidates scoring below are dropped
        max_per_frame: int = 50  # at most this many candidates per keyframe (best first)
        mask_threshold: float = 0.5  # mask probability above which a pixel is foreground
        device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
        batch_size: int = 4  # keyframes per forward pass
        fp16: bool = False  # autocast to half precision (CUDA only)

    def __init__(self, options: MMDetSegmenter.Options, source: str = "mmdet") -> None:
        import torch
        from mmcv.transforms import Compose
        from mmengine.model.utils import revert_sync_batchnorm
        from mmengine.registry import init_default_scope
        from mmengine.runner import load_state_dict

        from mmdet.registry import MODELS
        from mmdet.utils import get_test_pipeline_cfg

        if options.batch_size < 1:
            raise ConfigError(f"segmenter {source!r}: batch_size must be >= 1, got {options.batch_size}")
        if options.fp16 and not options.device.startswith("cuda"):
            raise ConfigError(f"segmenter {source!r}: fp16 needs a CUDA device, got device {options.device!r}")
        self.name = source  # the source name every candidate carries
        self.options = options
        cfg = load_config(options.config, options.cfg_options)
        init_default_scope(cfg.get("default_scope", "mmdet"))
        _set_test_thresholds(cfg.model, options.score_threshold, options.mask_threshold, options.max_per_frame)
        # Weights come from our checkpoint (or stay random); never fetch backbone inits.
        if "backbone" in cfg.model and "init_cfg" in cfg.model.backbone:
            cfg.model.backbone.init_cfg = None
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
        if options.checkpoint:
            ckpt = read_checkpoint(options.checkpoint)
            state = ckpt.get("state_dict", ckpt)
            state = {k.removeprefix("module."): v for k, v in state.items()}
            _check_state(model.state_dict(), state, options.checkpoint, options.config)
            load_state_dict(model, state, strict=False, logger="current")
        else:
            log.warning("segmenter %r: no checkpoint given, the model is randomly initialised", source)
        self.device = torch.device(options.device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg

        # The config's test pipeline, fed decoded frames instead of files and without the
        # ground-truth loading step that evaluation configs carry.
        steps = [dict(s) for s in get_test_pipeline_cfg(cfg)]
        steps = [s for s in steps if s["type"] not in _LOAD_ANNOTATION_TYPES]
        if not steps or steps[0]["type"] not in _LOAD_IMAGE_TYPES | {"mmdet.LoadImageFromNDArray"}:
            raise ConfigError(
                f"segmenter {source!r}: the test pipeline of {options.config!r} must start with "
                f"LoadImageFromFile, got {steps[0]['type'] if steps else 'nothing'}"
            )
        steps[0]["type"] = "mmdet.LoadImageFromNDArray"
        self.pipeline = Compose(steps)

    def segment_batch(self, images: list[np.ndarray], video_id: str, frames: list[int]) -> list[Candidates]:
        return [self._to_candidates(video_id, f, im.shape[:2], sample)
                for f, im, sample in zip(frames, images, self._predict(images))]

    def _predict(self, images: list[np.ndarray]) -> list[Any]:
        import torch

        # mmdet configs expect BGR (their data_preprocessor flips to RGB); frames are RGB.
        data = [self.pipeline(dict(img=np.ascontiguousarray(im[..., ::-1]), img_id=i)) for i, im in enumerate(images)]
        batch = dict(inputs=[d["inputs"] for d in data], data_samples=[d["data_samples"] for d in data])
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.options.fp16
        ):
            return self.model.test_step(batch)

    def _to_candidates(self, video_id: str, frame: int, size: tuple[int, int], sample: Any) -> Candidates:
        import torch
        import torch.nn.functional as F

        height, width = int(size[0]), int(size[1])
        inst = sample.pred_instances
        scores = inst.scores.detach().float().cpu().numpy()
        labels = inst.labels.detach().cpu().numpy()
        if "masks" not in inst:
            raise ConfigError(f"segmenter {self.name!r}: {self.options.config!r} predicts no masks (not an instance model)")
        m = inst.masks
        if not isinstance(m, torch.Tensor):  # BitmapMasks from older heads
            m = torch.as_tensor(np.asarray(m.masks if hasattr(m, "masks") else m))
        if m.dtype != torch.bool:
            m = m.float() >= self.options.mask_threshold
        if m.shape[-2:] != (height, width) and len(m):
            # mmdet rescales to ori_shape; guard against heads that stop at the padded input.
            m = F.interpolate(m[None].float(), size=(height, width), mode="nearest")[0].bool()
        masks = m.reshape(len(m), height, width).cpu().numpy()
        return make_candidates(
            video_id, frame, height, width, masks, scores, labels, self.name,
            self.options.score_threshold, self.options.max_per_frame,
        )
