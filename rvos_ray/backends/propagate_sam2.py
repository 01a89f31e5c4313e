"""SAM 2 propagation backend through Hugging Face transformers (``propagation.backend: sam2``).

Each candidate mask is a mask prompt on its keyframe (one SAM 2 object per candidate, so
candidates stay independent), then the video is streamed forward to the last frame and, from
the keyframe again, backward to the first, in one inference session: the image encoder runs
once per frame for all candidates. Frames are read one at a time; processed frames and
per-frame outputs older than SAM 2's memory window are dropped from the session as it goes, so
memory stays flat in video length.

The model is a Hugging Face id or local directory (``model``), loaded offline-capable with
``Sam2VideoModel`` / ``Sam2VideoProcessor``; ``random_init`` builds a random ``Sam2VideoConfig``
instead (tests, no download). The propagation probability is defined as for every backend (see
:mod:`rvos_ray.stages.propagate`): mean foreground probability (sigmoid of SAM 2's mask
logits) inside the predicted mask, 0 for an empty mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rvos_ray import masks as rle
from rvos_ray.data.errors import DataError
from rvos_ray.data.io import read_image
from rvos_ray.registry import ConfigError
from rvos_ray.stages.propagate import (
    ModelPropagator,
    TrackletBuilder,
    decode_candidates,
    frame_order,
    keyframe_rows,
    masks_and_probabilities,
)
from rvos_ray.types import Candidates, Video


class Sam2Propagator(ModelPropagator):
    """Propagates keyframe candidates with SAM 2 (transformers ``Sam2VideoModel``)."""

    @dataclass
    class Options:
        model: str = "facebook/sam2.1-hiera-tiny"  # HF id or local dir (config, weights, processor)
        # Sam2VideoConfig keyword arguments for a randomly initialised model (no download);
        # when non-empty, ``model`` is ignored
        random_init: dict[str, Any] = field(default_factory=dict)
        threshold: float = 0.5  # foreground probability above which a pixel is in the mask
        device: str = "auto"  # cpu | cuda | cuda:N | auto
        dtype: str = "float32"  # float32 | bfloat16 | float16 (the inference session's dtype)

    def __init__(self, options: Options) -> None:
        import torch
        from transformers import Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor

        self.options = options
        dev = options.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        if options.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"propagation.options.dtype: expected float32, bfloat16 or float16, got {options.dtype!r}")
        self.dtype = getattr(torch, options.dtype)
        if options.random_init:
            from huggingface_hub.errors import StrictDataclassError  # transformers' config checks

            try:
                config = Sam2VideoConfig(**options.random_init)
            except (TypeError, ValueError, StrictDataclassError) as e:
                raise ConfigError(f"propagation.options.random_init: {e}") from e
            self.model = Sam2VideoModel(config)
            self.processor = _processor_for(config.image_size)
        else:
            try:
                self.model = Sam2VideoModel.from_pretrained(options.model)
                self.processor = Sam2VideoProcessor.from_pretrained(options.model)
            except OSError as e:
                raise ConfigError(
                    f"propagation.options.model: cannot load SAM 2 {options.model!r} ({e}); give a local "
                    "directory or a Hugging Face id available in the local cache"
                ) from e
        self.model.to(self.device, dtype=self.dtype).eval()
        cfg = self.model.config
        # outputs further than this from the current frame are never read again
        self.memory_window = max(cfg.num_maskmem, cfg.max_object_pointers_in_encoder) + 1
        self._encoder_passes = 0
        self.model.vision_encoder.register_forward_hook(self._count)

    def _count(self, *_: Any) -> None:
        self._encoder_passes += 1

    @property
    def backbone_forward_passes(self) -> int:
        """Image-encoder forward passes so far (one per frame per propagate call)."""
        return self._encoder_passes

    # ------------------------------------------------------------------------------------------
    def _run(self, video: Video, candidates: Candidates, builder: TrackletBuilder) -> None:
        import torch

        h, w = candidates.height, candidates.width
        kf, k = candidates.frame, len(candidates)
        builder.record(kf, *keyframe_rows(candidates))
        session = self.processor.init_video_session(inference_device=self.device, dtype=self.dtype)
        prompts = [torch.from_numpy(m.astype(bool)) for m in decode_candidates(candidates)]
        self.processor.add_inputs_to_inference_session(session, frame_idx=kf, obj_ids=list(range(k)), input_masks=prompts)
        self.model(session, frame=self._pixels(video, kf, (h, w)), frame_idx=kf)  # conditioning frame
        forward, backward = frame_order(video.num_frames, kf)
        for order, reverse in ((forward, False), (backward, True)):
            # both directions start from the keyframe alone: forget the other direction's outputs
            for obj in session.output_dict_per_obj.values():
                obj["non_cond_frame_outputs"].clear()
            for t in order:
                out = self.model(session, frame=self._pixels(video, t, (h, w)), frame_idx=t, reverse=reverse)
                logits = self.processor.post_process_masks([out.pred_masks.float()], original_sizes=[(h, w)], binarize=False)[0]
                prob = torch.sigmoid(logits[:, 0]).cpu().numpy()
                m, p = masks_and_probabilities(prob, self.options.threshold)
                builder.record(t, rle.encode_many(m), p)
                self._forget(session, t, kf)

    def _pixels(self, video: Video, t: int, frame_hw: tuple[int, int]):
        image = read_image(video.frame_paths[t]).copy()  # writable: the processor wraps it in a tensor
        if image.shape[:2] != frame_hw:
            raise DataError(
                f"{video.frame_paths[t]}: frame is {image.shape[0]}x{image.shape[1]}, the keyframe "
                f"candidates are {frame_hw[0]}x{frame_hw[1]}"
            )
        return self.processor(images=image, return_tensors="pt").pixel_values[0]

    def _forget(self, session, t: int, keyframe: int) -> None:
        """Drop frames and outputs SAM 2 will not read again (memory flat in video length)."""
        for f in [f for f in session.processed_frames if f != t]:
            del session.processed_frames[f]
        for obj in session.output_dict_per_obj.values():
            old = obj["non_cond_frame_outputs"]
            for f in [f for f in old if abs(f - t) > self.memory_window]:
                del old[f]
        for tracked in session.frames_tracked_per_obj.values():
            for f in [f for f in tracked if abs(f - t) > self.memory_window and f != keyframe]:
                del tracked[f]


def _processor_for(image_size: Any):
    """A ``Sam2VideoProcessor`` for a square input of ``image_size`` (random-init models have
    no saved processor)."""
    from transformers import Sam2VideoProcessor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    s = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    size = {"height": s, "width": s}
    return Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size, mask_size={"height": s // 4, "width": s // 4}),
        video_processor=Sam2VideoVideoProcessor(size=size),
    )
