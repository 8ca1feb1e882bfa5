# Baseline for upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py: the same UPerNet, data and
# recipe with MMSegmentation's ResNetV1c-18 at half width (32 base channels, stage outputs
# 32/64/128/256 like the demo CrossFormer's), random init. Used by
# tools/analysis_tools/compare.py (docs/benchmarks.md).
_base_ = './upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNetV1c',
        depth=18,
        base_channels=32,
        stem_channels=32,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 1, 1),
        strides=(1, 2, 2, 2),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        contract_dilation=True))
