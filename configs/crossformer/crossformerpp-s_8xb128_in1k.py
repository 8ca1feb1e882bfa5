# CrossFormer++ (group sizes 4/4/14/7, intervals 4/2/1/1, adaptive cooling layers, main-branch
# long-distance grouping — all part of the arch entry).
_base_ = './crossformer-t_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='pp-small', drop_path_rate=0.2),
    head=dict(in_channels=512))
