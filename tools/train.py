"""Train a detector, a segmentor or a classifier (the MM command-line interface).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG NUM_PROCS [args...]

The config's ``default_scope`` (``mmdet``, ``mmseg`` or ``mmpretrain``) selects the task; importing
``crossformer_mm`` registers the package's modules and applies its compatibility layer.
"""
import argparse
import os

from mmengine.config import DictAction

import crossformer_mm  # noqa: F401  (registers modules, applies the compatibility layer)
from crossformer_mm.compat.checkpoint import find_resume_checkpoint, remove_torn_files
from crossformer_mm.compat.dist import prepare_cpu_distributed
from crossformer_mm.compat.resume import ValidateResumedStepHook
from crossformer_mm.utils.cli import (build_runner, finish_distributed, prepare_config,
                                      user_errors_as_messages)
from crossformer_mm.utils.config import check_checkpoint_path
from crossformer_mm.utils.gpu_check import ALLOW_CPU_ENV, refuse_cpu_on_gpu_node


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale the LR by batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or (no value) from the latest one in the work dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs (e.g. train_cfg.max_epochs=2)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument(
        '--cpu', action='store_true',
        help=f'run on the CPU even on a node with GPUs (the GPUs are hidden; same as '
        f'{ALLOW_CPU_ENV}=1). Without it, a node whose GPUs torch cannot use is refused')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


@user_errors_as_messages
def main() -> None:
    args = parse_args()
    refuse_cpu_on_gpu_node(args.cpu)  # before anything initialises CUDA
    cfg = prepare_config(args.config, args.work_dir, args.cfg_options, args.launcher,
                         data_keys=('train_dataloader', 'val_dataloader'))
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise RuntimeError(
                '--auto-scale-lr needs `auto_scale_lr.base_batch_size` in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        # The newest complete checkpoint: never a torn file left by a killed save.
        found = find_resume_checkpoint(cfg.work_dir)
        cfg.resume = found is not None
        cfg.load_from = found or cfg.get('load_from')
        if os.environ.get('RANK', '0') == '0':
            remove_torn_files(cfg.work_dir)
            if found is None:
                print(f'--resume: no complete checkpoint in {cfg.work_dir}; training from the '
                      'start')
    elif args.resume is not None:
        check_checkpoint_path(args.resume, '--resume checkpoint')
        cfg.resume, cfg.load_from = True, args.resume
    check_checkpoint_path(cfg.get('load_from'), 'load_from checkpoint')

    prepare_cpu_distributed(cfg)
    runner = build_runner(cfg)
    if cfg.get('resume'):
        runner.register_hook(ValidateResumedStepHook())
    runner.train()
    finish_distributed()


if __name__ == '__main__':
    main()
