# The CPU-budget variant of condinst_r18_shapes.py used by bench/segment.py: a half-width
# ResNet-18 (32 base channels), 64-channel FPN/heads and a 128x213 input (2/3 of the synthetic
# frames' side; masks are still returned at the frames' full 192x320). Several times cheaper per
# iteration than the full recipe: a 2000-iteration run fits a shared 2-core CPU (~1.5 s per
# iteration at batch 4 with one torch thread and no loader workers).
_base_ = './condinst_r18_shapes.py'

model = dict(
    backbone=dict(base_channels=32),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2),
    mask_head=dict(mask_feature_head=dict(in_channels=64, feat_channels=32, num_stacked_convs=2)))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=True),
    dict(type='Resize', scale=(224, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(224, 128), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
