"""Multi-scale deformable attention (MSDA), the core op of Deformable DETR.

`Deformable DETR: Deformable Transformers for End-to-End Object Detection
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). Semantics and the module's interface
follow mmcv 2.1.0's ``mmcv/ops/multi_scale_deform_attn.py`` so that state dicts and configs move
between the two; the kernels are this package's own. Only torch is needed (triton for the GPU
kernel); nothing here imports the OpenMMLab packages.

The op is a triple, one file each:

* :mod:`.reference` -- the contract (:func:`check_ms_deform_attn_inputs`) and the pure-PyTorch
  formulations :func:`ms_deform_attn_pytorch` (explicit bilinear gathers, the reference) and
  :func:`ms_deform_attn_grid_sample` (one ``F.grid_sample`` per level, what ONNX export records);
* :mod:`.function` -- the registered torch op ``torch.ops.crossformer_mm.ms_deform_attn`` over
  the kernels (C++ on the CPU, Triton on CUDA: :mod:`crossformer_mm.ops.msda_triton`) and the
  entry point :func:`ms_deform_attn`, which validates and dispatches;
* :mod:`.module` -- :class:`MSDeformAttn`, a drop-in for ``mmcv.ops.MultiScaleDeformableAttention``.
"""
from .function import MSDA_OP, ms_deform_attn, ms_deform_attn_flops, native_kernel_available
from .module import MSDeformAttn
from .reference import (SpatialShapes, check_ms_deform_attn_inputs, ms_deform_attn_grid_sample,
                        ms_deform_attn_pytorch)

__all__ = [
    'MSDA_OP', 'MSDeformAttn', 'SpatialShapes', 'check_ms_deform_attn_inputs', 'ms_deform_attn',
    'ms_deform_attn_flops', 'ms_deform_attn_grid_sample', 'ms_deform_attn_pytorch',
    'native_kernel_available'
]

