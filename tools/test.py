"""Test (and evaluate) a detector, a segmentor or a classifier from a checkpoint.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show-dir DIR] [--tta]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [args...]

One entry for every task: the config's ``default_scope`` (``mmdet``, ``mmseg`` or ``mmpretrain``)
decides how ``--out``, ``--show-dir`` and ``--tta`` are applied, following each toolbox's own
``tools/test.py``.
"""
import argparse
import os
import os.path as osp
from copy import deepcopy

from mmengine.config import ConfigDict, DictAction

import crossformer_mm  # noqa: F401  (registers modules, applies the compatibility layer)
from crossformer_mm.compat.dist import prepare_cpu_distributed
from crossformer_mm.utils.cli import (build_runner, finish_distributed, prepare_config,
                                      user_errors_as_messages)
from crossformer_mm.utils.config import ConfigError, check_checkpoint_path
from crossformer_mm.utils.gpu_check import ALLOW_CPU_ENV, refuse_cpu_on_gpu_node


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector, segmentor or classifier')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument(
        '--out', help='detection / classification: dump predictions to this .pkl file; '
        'segmentation: write prediction maps into this folder')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir', help='save painted predictions into this folder (relative to the '
        'timestamped folder in the work dir; for classifiers, to the work dir)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs')
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


def enable_visualization(cfg, args: argparse.Namespace, scope: str) -> None:
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise ConfigError('--show/--show-dir need a `visualization` entry in default_hooks')
    hook = hooks['visualization']
    # mmpretrain's VisualizationHook is switched by `enable`, draws every `interval`-th sample
    # (default 5000) and saves into `out_dir`
    hook['enable' if scope == 'mmpretrain' else 'draw'] = True
    if scope == 'mmpretrain':
        hook['interval'] = 1
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmseg':
            cfg.visualizer['save_dir'] = args.show_dir
        elif scope == 'mmpretrain':
            hook['out_dir'] = osp.join(cfg.work_dir, args.show_dir)
        else:
            hook['test_out_dir'] = args.show_dir


def enable_detection_tta(cfg) -> None:
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='DetTTAModel',
                             tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                          max_per_img=100))
    if 'tta_pipeline' not in cfg:
        data = cfg.test_dataloader.dataset
        while 'dataset' in data:
            data = data['dataset']
        cfg.tta_pipeline = deepcopy(data.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                        [dict(type='PackDetInputs',
                              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                         'scale_factor', 'flip', 'flip_direction'))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


@user_errors_as_messages
def main() -> None:
    args = parse_args()
    refuse_cpu_on_gpu_node(args.cpu)  # before anything initialises CUDA
    check_checkpoint_path(args.checkpoint)
    cfg = prepare_config(args.config, args.work_dir, args.cfg_options, args.launcher,
                         data_keys=('test_dataloader',))
    scope = cfg.get('default_scope', 'mmdet')
    if scope not in ('mmdet', 'mmseg', 'mmpretrain'):
        raise ConfigError(f'tools/test.py handles detection (mmdet), segmentation (mmseg) and '
                          f'classification (mmpretrain) configs; this config has '
                          f'default_scope={scope!r}')
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        enable_visualization(cfg, args, scope)
    if args.tta:
        if scope == 'mmdet':
            enable_detection_tta(cfg)
        else:
            if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
                raise ConfigError('--tta needs `tta_model` and `tta_pipeline` in the config')
            cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
            cfg.tta_model.module = cfg.model
            cfg.model = cfg.tta_model
    if args.out is not None and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    prepare_cpu_distributed(cfg)
    runner = build_runner(cfg)
    if args.out is not None and scope in ('mmdet', 'mmpretrain'):
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ConfigError(f'--out must name a .pkl file, got {args.out!r}')
        if scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults as DumpResults
        else:
            from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    if metrics is not None and runner.rank == 0:
        print('metrics: ' + ', '.join(f'{k}={v}' for k, v in metrics.items()
                                      if isinstance(v, (int, float))))
        print(f'work dir: {osp.abspath(runner.work_dir)}')
    finish_distributed()


if __name__ == '__main__':
    main()
