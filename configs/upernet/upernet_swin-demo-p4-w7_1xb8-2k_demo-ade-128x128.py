# Baseline for upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py: the same UPerNet, data and
# recipe with MMSegmentation's SwinTransformer at the demo CrossFormer's widths and depths (embed
# 32, depths 1/1/2/1, heads 1/2/4/8, 4x4 patches, 7x7 windows; stage outputs 32/64/128/256),
# random init. Used by tools/analysis_tools/compare.py (docs/benchmarks.md).
_base_ = './upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=32,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        patch_size=4,
        window_size=7,
        mlp_ratio=4,
        strides=(4, 2, 2, 2),
        qkv_bias=True,
        drop_path_rate=0.1,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=None))
