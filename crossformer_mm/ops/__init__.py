"""Native ops: multi-scale deformable attention (C++ CPU kernel, Triton GPU kernel, reference) and
softmax attention within token groups (C++ CPU inference kernel)."""
from .group_attention import (group_attention, group_attention_available,
                              group_attention_reference)
from .msda import (MSDeformAttn, MSDeformAttnFunction, check_ms_deform_attn_inputs,
                   ms_deform_attn, ms_deform_attn_pytorch, native_kernel_available,
                   replace_mmcv_msda)

__all__ = [
    'MSDeformAttn', 'MSDeformAttnFunction', 'check_ms_deform_attn_inputs', 'ms_deform_attn',
    'ms_deform_attn_pytorch', 'native_kernel_available', 'replace_mmcv_msda', 'group_attention',
    'group_attention_available', 'group_attention_reference'
]
