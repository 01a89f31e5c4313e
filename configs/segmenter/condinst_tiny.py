# Tiny CondInst for tests and CPU benchmarks: mmdet's own CondInst (R-50 FPN) config with a
# ResNet-18 backbone, 64-channel FPN/heads and a 128-px test input. Random init unless a
# checkpoint is given. Inherits everything else (losses, assigners, test_cfg) from mmdet.
_base_ = 'mmdet::condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py'

model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2),
    mask_head=dict(
        mask_feature_head=dict(in_channels=64, feat_channels=32, num_stacked_convs=2)))

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
