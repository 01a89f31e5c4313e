# Tiny HTC for tests and CPU benchmarks: mmdet's own HTC (R-50 FPN, with the semantic branch,
# like the paper's X-101 variant) with a ResNet-18 backbone, 64-channel FPN/heads, 100 RPN
# proposals and a 128-px test input. Random init unless a checkpoint is given. The three
# cascade stages keep mmdet's box coder stds; lists replace their base lists whole in mmengine
# configs, so each stage is written out.
_base_ = 'mmdet::htc/htc_r50_fpn_1x_coco.py'

_channels = 64


def _bbox_head(stds):
    return dict(
        type='Shared2FCBBoxHead',
        in_channels=_channels,
        fc_out_channels=128,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
        reg_class_agnostic=True,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))


def _mask_head(first):
    return dict(
        type='HTCMaskHead',
        with_conv_res=not first,
        num_convs=2,
        in_channels=_channels,
        conv_out_channels=_channels,
        num_classes=80,
        loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))


model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=_channels),
    rpn_head=dict(in_channels=_channels, feat_channels=_channels),
    roi_head=dict(
        semantic_roi_extractor=dict(out_channels=_channels),
        semantic_head=dict(in_channels=_channels, conv_out_channels=_channels, num_convs=1),
        bbox_roi_extractor=dict(out_channels=_channels),
        bbox_head=[
            _bbox_head([0.1, 0.1, 0.2, 0.2]),
            _bbox_head([0.05, 0.05, 0.1, 0.1]),
            _bbox_head([0.033, 0.033, 0.067, 0.067]),
        ],
        mask_roi_extractor=dict(out_channels=_channels),
        mask_head=[_mask_head(True), _mask_head(False), _mask_head(False)]),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100)))

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
