"""Multi-scale deformable attention (MSDA), the core op of Deformable DETR.

`Deformable DETR: Deformable Transformers for End-to-End Object Detection
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). Semantics and the module's interface
follow mmcv 2.1.0's ``mmcv/ops/multi_scale_deform_attn.py`` so that state dicts and configs move
between the two; the kernels are this package's own. Only torch is needed (triton for the GPU
kernel); nothing here imports the OpenMMLab packages.

The op is a triple, with the choice of kernel apart:

* :mod:`.reference` -- the contract (:func:`check_ms_deform_attn_inputs`) and the pure-PyTorch
  formulations :func:`ms_deform_attn_pytorch` (explicit bilinear gathers, the reference) and
  :func:`ms_deform_attn_grid_sample` (one ``F.grid_sample`` per level, what ONNX export records);
* :mod:`.function` -- the registered torch op ``torch.ops.crossformer_mm.ms_deform_attn`` (its
  fake implementation, registered backward and FLOP formulas), the ``torch.autograd.Function``
  that replaces it on torch < 2.4, and the entry point :func:`ms_deform_attn`;
* :mod:`.backends` -- which kernel serves a device (:func:`msda_backend`: the C++ kernel on the
  CPU, Triton on CUDA (:mod:`crossformer_mm.ops.msda_triton`), else mmcv's CUDA kernel or the
  PyTorch formulation) and the forward and backward of each;
* :mod:`.module` -- :class:`MSDeformAttn`, a drop-in for ``mmcv.ops.MultiScaleDeformableAttention``.
"""
from .backends import msda_backend, native_kernel_available
from .function import MSDA_OP, MSDeformAttnFunction, ms_deform_attn, ms_deform_attn_flops
from .module import MSDeformAttn
from .reference import (SpatialShapes, check_ms_deform_attn_inputs, ms_deform_attn_grid_sample,
                        ms_deform_attn_pytorch)

__all__ = [
    'MSDA_OP', 'MSDeformAttn', 'MSDeformAttnFunction', 'SpatialShapes',
    'check_ms_deform_attn_inputs', 'ms_deform_attn', 'ms_deform_attn_flops',
    'ms_deform_attn_grid_sample', 'ms_deform_attn_pytorch', 'msda_backend',
    'native_kernel_available'
]
