"""Instance segmentation through Hugging Face transformers' Mask2Former.

A maintained alternative to the mmdet backend that needs no compiled ops: the model is
``Mask2FormerForUniversalSegmentation`` with its image processor, loaded from a Hugging Face
model id (e.g. ``facebook/mask2former-swin-large-coco-instance``) or a local directory written
by ``save_pretrained``.

Instance inference follows Mask2Former's own recipe: every (query, class) pair is a candidate
scored by its class probability (no-object column dropped) times the mean foreground
probability inside its mask; the top ``num_queries`` pairs are kept. The masks are taken from
the padded model input, cropped to the region the processor filled with the frame (its
``pixel_mask``) and resized to the frame's original size, so frames of different sizes in one
batch come out aligned. (The processor's ``post_process_instance_segmentation`` assumes square
384-px inputs, so it is not used.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rvos_ray.registry import ConfigError
from rvos_ray.stages.segment import BatchedSegmenter, make_candidates
from rvos_ray.types import Candidates


class Mask2FormerSegmenter(BatchedSegmenter):
    """A :class:`~rvos_ray.stages.protocols.Segmenter` over a transformers Mask2Former."""

    @dataclass
    class Options:
        model: str = "facebook/mask2former-swin-large-coco-instance"  # HF model id or local directory
        score_threshold: float = 0.3  # candidates scoring below are dropped
        max_per_frame: int = 50  # at most this many candidates per keyframe (best first)
        mask_threshold: float = 0.5  # mask probability above which a pixel is foreground
        shortest_edge: int = 0  # resize frames to this short side; 0 = the processor's setting
        longest_edge: int = 0  # cap on the long side; 0 = the processor's setting
        device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
        batch_size: int = 4  # keyframes per forward pass
        fp16: bool = False  # half-precision weights and inputs (CUDA only)

    def __init__(self, options: Mask2FormerSegmenter.Options, source: str = "mask2former") -> None:
        import torch
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        if options.batch_size < 1:
            raise ConfigError(f"segmenter {source!r}: batch_size must be >= 1, got {options.batch_size}")
        if options.fp16 and not options.device.startswith("cuda"):
            raise ConfigError(f"segmenter {source!r}: fp16 needs a CUDA device, got device {options.device!r}")
        self.name = source  # the source name every candidate carries
        self.options = options
        try:
            self.processor = AutoImageProcessor.from_pretrained(options.model)
            model = Mask2FormerForUniversalSegmentation.from_pretrained(options.model)
        except OSError as e:  # transformers raises OSError for a missing id / directory / file
            raise ConfigError(f"segmenter {source!r}: cannot load Mask2Former {options.model!r}: {e}") from e
        size = dict(self.processor.size) if getattr(self.processor, "size", None) else {}
        if options.shortest_edge:
            size["shortest_edge"] = int(options.shortest_edge)
        if options.longest_edge:
            size["longest_edge"] = int(options.longest_edge)
        self.size = size or None
        self.dtype = torch.float16 if options.fp16 else torch.float32
        self.device = torch.device(options.device)
        self.model = model.to(self.device, dtype=self.dtype).eval()

    def segment_batch(self, images: list[np.ndarray], video_id: str, frames: list[int]) -> list[Candidates]:
        o = self.options
        return [make_candidates(video_id, f, im.shape[0], im.shape[1], m, s, lab, self.name, o.score_threshold,
                                o.max_per_frame) for f, im, (m, s, lab) in zip(frames, images, self._predict(images))]

    def _predict(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: (N x H x W bool masks at the image's size, N scores, N labels)."""
        import torch
        import torch.nn.functional as F

        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if self.size:
            kwargs["size"] = self.size
        inputs = self.processor(images=list(images), **kwargs)
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.dtype)
        pixel_mask = inputs["pixel_mask"].to(self.device)
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        class_logits = outputs.class_queries_logits.float()  # B x Q x (C + 1)
        mask_logits = outputs.masks_queries_logits.float()  # B x Q x h x w (a stride of the input)
        padded = pixel_values.shape[-2:]
        results = []
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            probs = class_logits[i].softmax(-1)[:, :-1]  # drop the no-object column
            num_queries, num_classes = probs.shape
            top = probs.flatten().topk(min(num_queries, probs.numel()))
            # The final score is at most the class probability: pairs already below the
            # threshold are dropped before their masks are upsampled (the costly step).
            keep = top.values >= self.options.score_threshold
            values, indices = top.values[keep], top.indices[keep]
            query = torch.div(indices, num_classes, rounding_mode="floor")
            labels = indices % num_classes
            if len(query) == 0:
                results.append((np.zeros((0, height, width), bool), np.zeros(0), np.zeros(0, np.int64)))
                continue
            # Up to the padded input, crop the frame's region, then to the original size.
            valid = pixel_mask[i].nonzero()
            vh, vw = int(valid[:, 0].max()) + 1, int(valid[:, 1].max()) + 1
            logits = F.interpolate(mask_logits[i : i + 1, query], size=padded, mode="bilinear", align_corners=False)
            logits = F.interpolate(logits[..., :vh, :vw], size=(height, width), mode="bilinear", align_corners=False)[0]
            mask_prob = logits.sigmoid()
            masks = mask_prob > self.options.mask_threshold
            # Mask quality: mean foreground probability inside the mask (0 for an empty mask).
            inside = (mask_prob * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)
            scores = values * inside
            results.append((masks.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy()))
        return results
