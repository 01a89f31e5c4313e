# Small CondInst trained from scratch on the synthetic shapes benchmark (tests, bench/segment.py,
# the demo): mmdet's own CondInst config with a ResNet-18 backbone (random init: no pretrained
# weights can be fetched here), 128-channel FPN/heads and the shapes' native 192x320 input.
# Trained with:
#   rvos-ray finetune-segmenter --config configs/segmenter/condinst_r18_shapes.py \
#       --data-root data/shapes --work-dir runs/segmenter/condinst_r18_shapes
# From scratch on CPU, AdamW converges far faster than the recipe's SGD at this budget.
# The paper's recipe (COCO-pretrained R-50, ~15k steps) is condinst_r50_rvos.py.
_base_ = 'mmdet::condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py'

model = dict(
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    bbox_head=dict(in_channels=128, feat_channels=128, stacked_convs=2),
    mask_head=dict(
        max_masks_to_train=100,
        mask_feature_head=dict(in_channels=128, feat_channels=64, num_stacked_convs=2)),
    test_cfg=dict(max_per_img=50))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=True),
    dict(type='Resize', scale=(320, 192), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(320, 192), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=4, num_workers=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iter = 2000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iter, val_interval=max_iter)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iter,
         milestones=[int(max_iter * 0.75), int(max_iter * 0.9)], gamma=0.1),
]
