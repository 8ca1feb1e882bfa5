"""Native ops: multi-scale deformable attention (C++ CPU kernel, Triton GPU kernel, reference)."""
from .msda import (MSDeformAttn, MSDeformAttnFunction, check_ms_deform_attn_inputs,
                   ms_deform_attn, ms_deform_attn_pytorch, native_kernel_available,
                   replace_mmcv_msda)

__all__ = [
    'MSDeformAttn', 'MSDeformAttnFunction', 'check_ms_deform_attn_inputs', 'ms_deform_attn',
    'ms_deform_attn_pytorch', 'native_kernel_available', 'replace_mmcv_msda'
]
