# The demo job (`bash tools/run_demo.sh`): the 24-epoch demo RetinaNet's recipe on a 14-epoch
# schedule, so that data generation, training, evaluation and pictures fit in 15 minutes on
# 2 CPU cores. The warm-up and the cosine decay keep their shape over the shorter schedule.
_base_ = './retinanet_crossformer-demo_fpn_24e_demo-coco.py'

max_epochs = 14
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, begin=0, end=max_epochs,
         by_epoch=True, convert_to_iter_based=True)
]
