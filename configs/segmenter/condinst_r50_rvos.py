# The paper's CondInst recipe (Liang et al., "Rethinking Cross-modal Interaction from a Top-down
# Perspective for RVOS"): CondInst R-50 FPN pretrained on COCO, finetuned on the training split of
# RVOS-D (Ref-YouTube-VOS) "with the standard training setting" for about 15,000 steps.
# Standard setting = mmdet's CondInst config (SGD lr 0.01, momentum 0.9, wd 1e-4, batch 16 =
# 8 GPUs x 2, multi-scale short side 640-800, flip); its 90k schedule (warmup 1k, steps at
# 60k/80k) is kept in shape and shortened to 15k.
#   rvos-ray finetune-segmenter --config configs/segmenter/condinst_r50_rvos.py \
#       --data-root data/ref-youtube-vos --work-dir runs/segmenter/condinst_r50_rvos
# (on a cluster: jobs/finetune_segmenter.py; single-GPU runs scale lr by batch/16).
_base_ = 'mmdet::condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py'

# COCO-pretrained weights (mmdet model zoo, 39.8 mask AP on COCO val).
load_from = ('https://download.openmmlab.com/mmdetection/v3.0/condinst/'
             'condinst_r50_fpn_ms-poly-90k_coco_instance/'
             'condinst_r50_fpn_ms-poly-90k_coco_instance_20221129_125223-4c186406.pth')

model = dict(backbone=dict(init_cfg=None))  # the whole model comes from load_from

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None, imdecode_backend='pillow'),
    # Our COCO conversion stores masks as RLE: poly2mask decodes them (mmdet drops RLE otherwise).
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, poly2mask=True),
    dict(type='RandomChoiceResize',
         scales=[(1333, 640), (1333, 672), (1333, 704), (1333, 736), (1333, 768), (1333, 800)],
         keep_ratio=True, backend='pillow'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_iter = 15000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iter, val_interval=max_iter)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_iter, by_epoch=False,
         milestones=[10000, 13333], gamma=0.1),
]
auto_scale_lr = dict(enable=True, base_batch_size=16)
