"""Parameters and FLOPs of a detector, segmentor or backbone built from a config.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W] [--cfg-options k=v ...]
        [--by-module DEPTH]

Counts with mmengine's ``FlopAnalyzer`` (fvcore convention: one FLOP per multiply-add, so the
numbers compare with the papers' and MMDetection's ``get_flops``), plus two handles it lacks:

* fused attention, ``aten::scaled_dot_product_attention`` (the package's SDPA path):
  ``batch·L·S·(E + Ev)`` multiply-adds for ``q·kᵀ`` and ``attn·v``, the same as the explicit path's
  two matmuls (:func:`crossformer_mm.models.layers.flops.sdpa_flop_jit`);
* multi-scale deformable attention, the package's registered op ``crossformer_mm::ms_deform_attn``
  (keyed on the op, so any model that calls it is counted, whatever its Python code; on torch
  < 2.4, which has no registered op, on ``MSDeformAttnFunction``, the autograd Function that runs
  it there and that the trace records as ``prim::PythonOp.MSDeformAttnFunction``): per
  query, head channel, level and point, four bilinear-corner multiply-adds and one
  attention-weight multiply-add, ``5·B·Q·C·L·P`` — half of the op's FLOP formula
  (:func:`crossformer_mm.ops.ms_deform_attn_flops`, ``10·B·Q·C·L·P`` counting add and multiply
  separately), which is also registered for ``torch.utils.flop_counter.FlopCounterMode``.
  mmcv's CPU fallback (``grid_sample``) is counted by mmengine's own ``grid_sampler`` handle
  (four corner multiply-adds per output element; its attention-weight product is an elementwise
  op, which the analyzer never counts).

Detectors and segmentors run their ``tensor`` mode (``_forward``), as MMDetection's and
MMSegmentation's tools do: Mask R-CNN-style models count their RoI heads on the RPN's proposals,
segmentors the decode head (not the auxiliary head). Backbones are built without loading
checkpoints. Classification configs (``mmpretrain``) count the backbone only: ``mmpretrain.models``
needs torchvision.
"""
import argparse
import copy
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, ROOT)

from crossformer_mm.ops import MSDA_OP, ms_deform_attn_flops  # noqa: E402
from crossformer_mm.ops.msda import MSDeformAttnFunction  # noqa: E402

#: The node of the op in a trace on torch < 2.4 (an autograd Function, see the docstring).
MSDA_FUNCTION_OP = f'prim::PythonOp.{MSDeformAttnFunction.__name__}'


def _sizes(value: Any) -> List[int]:
    return value.type().sizes()


def msda_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of the MSDA op: ``5·B·Q·heads·head_dims·L·P`` for value
    ``(B, S, heads, head_dims)`` and sampling locations ``(B, Q, heads, L, P, 2)`` (the op's
    FLOP formula halved: fvcore counts one per multiply-add)."""
    return ms_deform_attn_flops(_sizes(inputs[0]), _sizes(inputs[3])) // 2


def add_op_handles(analyzer: Any) -> Any:
    """Register the SDPA and MSDA handles on an mmengine ``FlopAnalyzer``."""
    from crossformer_mm.models.layers.flops import add_sdpa_handle
    add_sdpa_handle(analyzer)
    return analyzer.set_op_handle(MSDA_OP, msda_flop_jit, MSDA_FUNCTION_OP, msda_flop_jit)


def _no_pretrained(node: Any) -> None:
    if isinstance(node, dict):
        init = node.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            node['init_cfg'] = None
        for value in node.values():
            _no_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _no_pretrained(value)


def register_scope(scope: str) -> None:
    """Populate the upstream registries of ``scope`` (mmdet / mmseg)."""
    if scope == 'mmdet':
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    elif scope == 'mmseg':
        from mmseg.utils import register_all_modules
        register_all_modules(init_default_scope=False)


def build_model(cfg: Any, pad_to: Optional[Tuple[int, int]] = None) -> nn.Module:
    """The config's model without checkpoint loading, SyncBN reverted to BN; mmpretrain configs
    give the backbone only. ``pad_to`` overrides a segmentor's ``data_preprocessor.size``."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    scope = cfg.get('default_scope', 'mmdet')
    model_cfg = copy.deepcopy(cfg.model)
    _no_pretrained(model_cfg)
    pre = model_cfg.get('data_preprocessor') or {}
    if pad_to is not None and pre.get('size') is not None:
        pre['size'] = tuple(pad_to)
    if scope == 'mmpretrain':
        # mmpretrain's registry imports mmpretrain.models (torchvision) on lookup; the package's
        # backbones are registered in mmdet's registry too.
        scope, model_cfg = 'mmdet', model_cfg.backbone
    register_scope(scope)
    module = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}[scope]
    models = __import__(module, fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = models.build(model_cfg)
    model = revert_sync_batchnorm(model)
    model.eval()
    return model


def fake_batch(scope: str, shape: Tuple[int, int], batch: int = 1) -> Dict[str, list]:
    """A synthetic preprocessor input of ``batch`` uint8 images of ``shape`` with meta info."""
    h, w = shape
    meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), img_id=0)
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmdet.structures import DetDataSample as Sample
    samples = []
    for _ in range(batch):
        s = Sample()
        s.set_metainfo(meta)
        samples.append(s)
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
              for _ in range(batch)]
    return dict(inputs=images, data_samples=samples)


class TensorForward(nn.Module):
    """``model._forward(inputs, data_samples)`` (``tensor`` mode) as a traceable ``forward``."""

    def __init__(self, model: nn.Module, data_samples: Optional[list]) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor) -> Any:
        if self.data_samples is None:
            return self.model(inputs)
        return self.model._forward(inputs, self.data_samples)


def complexity(cfg: Any, shape: Tuple[int, int], model: Optional[nn.Module] = None,
               depth: int = 1) -> Dict[str, Any]:
    """Params and FLOPs of ``cfg``'s model on one ``shape`` image.

    Returns a dict: ``params`` (all parameters), ``flops`` (multiply-adds), ``flops_by_module``
    (the modules ``depth`` levels below the model: 1 = its children such as ``backbone``,
    2 = ``backbone.layers`` ...), ``unsupported`` (ops the analyzer skipped, with counts),
    ``input_shape`` (after the data preprocessor's padding).
    """
    from mmengine.analysis import FlopAnalyzer
    scope = cfg.get('default_scope', 'mmdet')
    if model is None:
        model = build_model(cfg, pad_to=shape)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        if scope == 'mmpretrain':
            inputs, samples = torch.randn(1, 3, *shape), None
        else:
            data = model.data_preprocessor(fake_batch(scope, shape), False)
            inputs, samples = data['inputs'], data['data_samples']
        wrapper = TensorForward(model, samples).eval()
        analyzer = FlopAnalyzer(wrapper, (inputs, ))
        add_op_handles(analyzer)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        total = analyzer.total()
        by_module = {name[len('model.'):]: n for name, n in analyzer.by_module().items()
                     if name.count('.') == depth and name.startswith('model.')}
        unsupported = dict(analyzer.unsupported_ops())
    return dict(params=params, flops=total, flops_by_module=by_module, unsupported=unsupported,
                input_shape=tuple(inputs.shape[-2:]))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Params and FLOPs of a config\'s model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (one value: square); default 1280x800 for mmdet '
                        '(800 high, 1280 wide, as the papers), 512x512 for mmseg, 224 for '
                        'classification')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    parser.add_argument('--by-module', type=int, default=1, metavar='DEPTH',
                        help='list FLOPs per module DEPTH levels below the model (default 1: '
                        'backbone, neck, heads; 2: their children, ...)')
    args = parser.parse_args(argv)
    if args.by_module < 1:
        parser.error(f'--by-module must be >= 1, got {args.by_module}')
    return args


def default_shape(scope: str) -> Tuple[int, int]:
    return {'mmdet': (800, 1280), 'mmseg': (512, 512)}.get(scope, (224, 224))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import crossformer_mm  # noqa: F401  (registers modules, applies the compatibility layer)
    from crossformer_mm.utils.config import load_config
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    if args.shape is None:
        shape = default_shape(scope)
    elif len(args.shape) == 1:
        shape = (args.shape[0], args.shape[0])
    elif len(args.shape) == 2:
        shape = tuple(args.shape)
    else:
        print('error: --shape takes H or H W', file=sys.stderr)
        return 2
    result = complexity(cfg, shape, depth=args.by_module)
    line = '=' * 60
    print(line)
    print(f'Config:  {args.config}')
    what = ' (backbone only)' if scope == 'mmpretrain' else ''
    print(f'Input:   1x3x{shape[0]}x{shape[1]} (padded to {result["input_shape"][0]}x'
          f'{result["input_shape"][1]}){what}')
    print(f'FLOPs:   {result["flops"] / 1e9:.1f} G (multiply-adds)')
    print(f'Params:  {result["params"] / 1e6:.2f} M ({result["params"]:,})')
    for name, n in result['flops_by_module'].items():
        print(f'  {name:<40s} {n / 1e9:10.2f} G')
    if result['unsupported']:
        skipped = ', '.join(f'{k} x{v}' for k, v in sorted(result['unsupported'].items()))
        print(f'Not counted (no FLOP handle): {skipped}')
    print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
