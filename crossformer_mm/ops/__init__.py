"""Native ops, registered as torch ops (``torch.ops.crossformer_mm.*``): multi-scale deformable
attention (C++ CPU kernel, Triton GPU kernel, pure-PyTorch formulations).

Only torch is needed to import this package (triton for the GPU kernel); registration into the
OpenMMLab registries happens in :mod:`crossformer_mm.models`.
"""
from .msda import (MSDA_OP, MSDeformAttn, check_ms_deform_attn_inputs, ms_deform_attn,
                   ms_deform_attn_flops, ms_deform_attn_grid_sample, ms_deform_attn_pytorch,
                   native_kernel_available, replace_mmcv_msda)

__all__ = [
    'MSDA_OP', 'MSDeformAttn', 'check_ms_deform_attn_inputs', 'ms_deform_attn',
    'ms_deform_attn_flops', 'ms_deform_attn_grid_sample', 'ms_deform_attn_pytorch',
    'native_kernel_available', 'replace_mmcv_msda'
]
