"""The package's multi-scale deformable attention in the OpenMMLab registries and models.

:mod:`crossformer_mm.ops` needs torch alone; this module ties it to the MM stack:

* :class:`~crossformer_mm.ops.MSDeformAttn` is registered in the mmdet, mmseg and mmpretrain model
  registries under its own name (mmcv owns ``MultiScaleDeformableAttention``);
* :func:`replace_mmcv_msda` (also ``crossformer_mm.models.replace_mmcv_msda``) puts every mmcv
  ``MultiScaleDeformableAttention`` of a built model on the package's kernels, in place;
* :class:`MSDAKernelHook` does the same from a config, for any mmdet / mmseg model (DINO,
  Mask2Former, Co-DETR, mmdet's own Deformable DETR...)::

      custom_hooks = [dict(type='MSDAKernelHook')]

This is the package's one way of putting mmcv's deformable attention on its kernels; the
package's own Deformable DETR does the same switch at build time
(:func:`crossformer_mm.models.detectors.detr_layers.swap_attention`). The switch changes the class
of each module to :class:`MMCVMSDeformAttnOnKernels`, a subclass of mmcv's class whose
``forward`` is :meth:`MSDeformAttn.forward <crossformer_mm.ops.MSDeformAttn.forward>`:
parameters (the same objects, so an optimizer or DDP wrapper built before keeps working),
buffers, hooks, state-dict keys, ``init_weights`` and ``isinstance`` checks are all unchanged;
only the attention is computed by the package's op (C++ on the CPU, Triton on CUDA) instead of
mmcv's (CUDA kernel, or the ``grid_sample`` fallback on the CPU).
"""
from typing import Optional

from mmcv.ops import MultiScaleDeformableAttention
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from crossformer_mm.ops import MSDeformAttn
from crossformer_mm.registry import register_model

__all__ = ['MMCVMSDeformAttnOnKernels', 'MSDAKernelHook', 'replace_mmcv_msda']

register_model()(MSDeformAttn)


class MMCVMSDeformAttnOnKernels(MultiScaleDeformableAttention):
    """mmcv's ``MultiScaleDeformableAttention`` computed with :func:`crossformer_mm.ops.
    ms_deform_attn` (the same forward as :class:`~crossformer_mm.ops.MSDeformAttn`).

    Never built directly: :func:`replace_mmcv_msda` (and the detectors'
    :func:`~crossformer_mm.models.detectors.detr_layers.swap_attention`) switch existing mmcv
    modules to it.
    ``deterministic`` (class default None: follow ``torch.use_deterministic_algorithms``) is
    passed to the op.
    """

    deterministic: Optional[bool] = None
    forward = MSDeformAttn.forward
    _check_forward_inputs = MSDeformAttn._check_forward_inputs


def replace_mmcv_msda(model: nn.Module, deterministic: Optional[bool] = None) -> int:
    """Switches, in place, every mmcv ``MultiScaleDeformableAttention`` inside ``model`` (exact
    class; subclasses with their own forward are left alone) to the package's kernels.

    Args:
        model: Any module, e.g. a built mmdet detector or mmseg segmentor.
        deterministic: Set on the switched modules (see :func:`crossformer_mm.ops.
            ms_deform_attn`).

    Returns:
        The number of modules switched.
    """
    count = 0
    for module in model.modules():
        if type(module) in (MultiScaleDeformableAttention, MMCVMSDeformAttnOnKernels):
            module.__class__ = MMCVMSDeformAttnOnKernels
            module.deterministic = deterministic
            count += 1
    return count


@HOOKS.register_module()
class MSDAKernelHook(Hook):
    """Puts every mmcv ``MultiScaleDeformableAttention`` of the runner's model on the package's
    kernels before training / testing starts (before the weights are initialised or loaded, so
    initialisation, checkpoints and outputs are those of the unswitched model).

    Args:
        deterministic: Passed to the op (None: follow ``torch.use_deterministic_algorithms``).
        strict: Raise if the model has no such module (the hook would do nothing).
    """

    priority = 'VERY_HIGH'

    def __init__(self, deterministic: Optional[bool] = None, strict: bool = True) -> None:
        self.deterministic = deterministic
        self.strict = strict

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        count = replace_mmcv_msda(model, self.deterministic)
        if count == 0 and self.strict:
            raise RuntimeError(f'MSDAKernelHook: {type(model).__name__} has no mmcv '
                               'MultiScaleDeformableAttention to switch; remove the hook from '
                               'custom_hooks (or pass strict=False)')
        runner.logger.info(f'MSDAKernelHook: {count} MultiScaleDeformableAttention modules on '
                           'the crossformer_mm kernels')
