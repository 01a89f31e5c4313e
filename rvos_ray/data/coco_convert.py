"""Ref-YouTube-VOS layout -> COCO instance annotations (for training image segmenters).

One COCO image per annotated frame (``file_name`` relative to ``<split>/JPEGImages``), one
annotation per object present in the frame's palette PNG, its category from the split's
``meta.json``, its mask as a COCO RLE (pycocotools; ``counts`` as a string so the file is
JSON), ``area`` and ``bbox`` computed from that RLE. Category ids are 1..N over the sorted
category names of the split, so the same split always gives the same ids.

Command: ``rvos-ray to-coco --root DIR --split train --out instances_train.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from rvos_ray import masks
from rvos_ray.data import io as dio
from rvos_ray.data.errors import DataError
from rvos_ray.data.refytvos import ANNOTATION_EXT, FRAME_EXT, RefYTVOS


def to_coco(
    root: str,
    split: str = "train",
    videos: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The COCO instances dict of one split (``videos`` restricts it to those ids)."""
    reader = RefYTVOS(root, split)
    ids = reader.video_ids() if videos is None else list(videos)
    cats_of = reader.categories()
    meta_uri = dio.join(reader.split_dir, "meta.json")
    names = sorted({c for vid in ids for c in cats_of.get(vid, {}).values()})
    cat_id = {name: i + 1 for i, name in enumerate(names)}

    images: list[dict] = []
    annotations: list[dict] = []
    for vid in ids:
        vid_cats = cats_of.get(vid, {})
        for frame in reader.annotated_frames(vid):
            labels = reader.label_map(vid, frame)
            height, width = labels.shape
            image_id = len(images) + 1
            images.append(
                dict(
                    id=image_id,
                    file_name=f"{vid}/{frame}{FRAME_EXT}",
                    height=int(height),
                    width=int(width),
                    video_id=vid,
                    frame_name=frame,
                )
            )
            for obj in np.unique(labels):
                if obj == 0:
                    continue
                if int(obj) not in vid_cats:
                    raise DataError(
                        f"{reader.annotation_path(vid, frame)}: object id {int(obj)} has no "
                        f"category in {meta_uri} (videos.{vid}.objects)"
                    )
                counts = masks.encode((labels == obj).astype(np.uint8))
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=image_id,
                        category_id=cat_id[vid_cats[int(obj)]],
                        segmentation=dict(size=[int(height), int(width)], counts=counts.decode("ascii")),
                        area=float(masks.areas([counts], height, width)[0]),
                        bbox=[float(v) for v in masks.boxes_xywh([counts], height, width)[0]],
                        iscrowd=0,
                        obj_id=int(obj),
                    )
                )
    return dict(
        info=dict(description=f"{root} {split} converted by rvos-ray to-coco"),
        images=images,
        annotations=annotations,
        categories=[dict(id=cat_id[n], name=n, supercategory="object") for n in names],
    )


def image_dir(root: str, split: str) -> str:
    """The folder COCO ``file_name``s are relative to."""
    return dio.join(RefYTVOS(root, split).split_dir, "JPEGImages")


def write_coco(root: str, split: str, out: str, videos: Sequence[str] | None = None) -> dict[str, Any]:
    """Convert and write atomically; returns the dict."""
    coco = to_coco(root, split, videos)
    dio.write_bytes(out, json.dumps(coco).encode("utf-8"))
    return coco


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rvos-ray to-coco",
        description="Convert a Ref-YouTube-VOS-layout split to COCO instance annotations "
        f"(one image per annotated frame; masks from the {ANNOTATION_EXT} palettes as RLE).",
    )
    p.add_argument("--root", required=True, help="dataset root (local path or URI)")
    p.add_argument("--split", default="train", help="split to convert (default: train)")
    p.add_argument("--out", required=True, help="output JSON path (local path or URI)")
    args = p.parse_args(argv)
    coco = write_coco(args.root, args.split, args.out)
    print(
        f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{len(coco['categories'])} categories; images under {image_dir(args.root, args.split)}"
    )
    return 0
