# The demo's segmenter: mmdet's own CondInst config (via configs/segmenter/condinst_r18_shapes.py,
# the segmentation helper's synthetic-shapes recipe: AdamW, 192x320 input, random init) with a
# quarter-width ResNet-18 (16 base channels) and 64-channel FPN/heads, so the checkpoint is small
# enough to ship inside the package (rvos_ray/assets/demo/). Trained by `make demo-models`:
#   rvos-ray finetune-segmenter --config configs/demo_models/condinst_demo.py \
#       --data-root data/demo-train --work-dir runs/demo-models/segmenter-600 --max-iters 600 --seed 0 --threads 1 --num-workers 0
# then 3000 more iterations from those weights (--load-from .../segmenter-600/segmenter.pth --seed 1).
_base_ = '../segmenter/condinst_r18_shapes.py'

model = dict(
    backbone=dict(base_channels=16),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2),
    mask_head=dict(mask_feature_head=dict(in_channels=64, feat_channels=32, num_stacked_convs=2)))

# 144x240 input (3/4 of the synthetic frames' side): a quarter fewer pixels than the recipe's
# 192x320, for training on a shared 2-core CPU and a demo that runs in minutes; masks are
# returned at the frames' full resolution.
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=True),
    dict(type='Resize', scale=(240, 144), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(240, 144), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
