# Baseline for configs/demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py: the same RetinaNet,
# data and recipe with MMDetection's ResNet instead of the small CrossFormer — ResNet-18 layout at
# half width (32 base channels, stage outputs 32/64/128/256 like the demo CrossFormer's), random
# init. Used by tools/analysis_tools/compare.py (docs/benchmarks.md).
_base_ = '../demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        base_channels=32,
        stem_channels=32,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None))
