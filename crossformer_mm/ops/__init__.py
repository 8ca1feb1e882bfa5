"""Native ops, registered as torch ops (``torch.ops.crossformer_mm.*``): multi-scale deformable
attention (C++ CPU kernel, Triton GPU kernel, pure-PyTorch formulations).

Only torch is needed to import this package (triton for the GPU kernel); nothing here imports
the rest of the package. Registration into the OpenMMLab registries, and putting mmcv's modules
on these kernels, happen in :mod:`crossformer_mm.models`.
"""
from .msda import (MSDA_OP, MSDeformAttn, check_ms_deform_attn_inputs, ms_deform_attn,
                   ms_deform_attn_flops, ms_deform_attn_grid_sample, ms_deform_attn_pytorch,
                   msda_backend, native_kernel_available)

__all__ = [
    'MSDA_OP', 'MSDeformAttn', 'check_ms_deform_attn_inputs', 'ms_deform_attn',
    'ms_deform_attn_flops', 'ms_deform_attn_grid_sample', 'ms_deform_attn_pytorch',
    'msda_backend', 'native_kernel_available'
]


def __getattr__(name: str):
    if name == 'replace_mmcv_msda':  # moved: the ops do not import the models
        raise AttributeError('crossformer_mm.ops.replace_mmcv_msda has moved: use '
                             'crossformer_mm.models.replace_mmcv_msda (it needs mmcv)')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
