"""Compatibility layer: patches the installed mmengine only where it has a problem we can detect.

Importing ``crossformer_mm`` runs :func:`apply_all`, which probes the installed mmengine / torch
pair by behaviour (not by name or version) and applies only the patches whose problem it finds.
The probes hand mmengine's loaders in-memory files, so importing writes nothing to disk (see
:mod:`.checkpoint`):

``checkpoint_files``
    mmengine's local checkpoint loader either refuses the Runner's own checkpoints (mmengine
    0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 defaults it to ``True`` and
    refuses ``HistoryBuffer``; upstream issue open-mmlab/mmengine#1655) or unpickles any local file
    (the upstream fix, open-mmlab/mmengine#1670, unreleased, passes ``weights_only=False``; the
    OneDL fork falls back to it when weights-only loading fails). Patch: the local scheme loads
    weights-only, and in full only a checkpoint whose signature verifies; ``save_checkpoint`` writes
    atomically and signs (see :mod:`.checkpoint`).
``checkpoint_urls``
    mmengine's ``load_from_http`` (also used for ``torchvision://`` and ``open-mmlab://``) hands the
    download to ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to
    ``False``: a downloaded file is unpickled in full. Patch: downloads go to the hub cache,
    are checked, and load weights-only.

``config_packages``
    mmengine's ``Config`` resolves ``mmseg::`` / ``mmdet::`` base configs through the pip
    distribution named in ``mmengine.config.utils.MODULE2PACKAGE`` (``'mmseg'`` ->
    ``'mmsegmentation'``). Where the module is installed under another distribution (the OneDL fork
    ``onedl-mmsegmentation``), onedl-mmengine 0.10.12 reports "mmsegmentation is not installed"
    for every ``mmseg::`` config. Patch: that table entry names the distribution that provides the
    installed module.

The checkpoint patches go through mmengine's public names: ``CheckpointLoader.register_scheme(...,
force=True)`` and the module functions ``save_checkpoint`` / ``load_from_http``. CPU-only
distributed runs need no patch (see :mod:`.dist`). :func:`active_patches` says what was applied.
"""
from typing import Dict, Optional

from . import checkpoint, dist

_ACTIVE: Dict[str, str] = {}
_PROBED = False
_original_save_checkpoint = None


def _save_checkpoint(checkpoint_: dict, filename: str, file_client_args: Optional[dict] = None,
                     backend_args: Optional[dict] = None) -> None:
    """mmengine's ``save_checkpoint``: local paths atomic and signed, others unchanged."""
    if file_client_args is None and backend_args is None and '://' not in filename:
        checkpoint.write_checkpoint(checkpoint_, filename)
    else:
        _original_save_checkpoint(checkpoint_, filename, file_client_args=file_client_args,
                                  backend_args=backend_args)


def _patch_checkpoint_files() -> None:
    global _original_save_checkpoint
    from mmengine.runner import checkpoint as mm_ckpt
    from mmengine.runner import runner as mm_runner
    mm_ckpt.CheckpointLoader.register_scheme(prefixes='', loader=checkpoint.load_local_checkpoint,
                                             force=True)
    _original_save_checkpoint = mm_ckpt.save_checkpoint
    # The Runner calls the name it imported from mmengine.runner.checkpoint.
    mm_ckpt.save_checkpoint = _save_checkpoint
    mm_runner.save_checkpoint = _save_checkpoint


def _patch_checkpoint_urls() -> None:
    from mmengine.runner import checkpoint as mm_ckpt
    mm_ckpt.CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                             loader=checkpoint.load_url_weights, force=True)
    # load_from_torchvision / load_from_openmmlab / load_from_mmcls call this name.
    mm_ckpt.load_from_http = checkpoint.load_url_weights


def _config_package_fixes() -> Dict[str, str]:
    """Scopes whose pip distribution in mmengine's table is missing while another distribution
    provides the module: scope -> the installed distribution."""
    from importlib import metadata

    from mmengine.config import utils as cfg_utils
    table = getattr(cfg_utils, 'MODULE2PACKAGE', None)
    if not isinstance(table, dict):
        return {}
    providers = metadata.packages_distributions()
    fixes = {}
    for scope in ('mmdet', 'mmseg', 'mmpretrain'):
        dist = table.get(scope)
        installed = providers.get(scope, [])
        if dist is None or not installed:
            continue
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            fixes[scope] = installed[0]
    return fixes


def apply_all() -> Dict[str, str]:
    """Probe the stack once and apply the patches it needs; return :func:`active_patches`."""
    global _PROBED
    if not _PROBED:
        _PROBED = True
        problem = checkpoint.local_loader_problem()
        if problem:
            _patch_checkpoint_files()
            _ACTIVE['checkpoint_files'] = f'mmengine local loader {problem}'
        problem = checkpoint.http_loader_problem()
        if problem:
            _patch_checkpoint_urls()
            _ACTIVE['checkpoint_urls'] = f'mmengine load_from_http {problem}'
        fixes = _config_package_fixes()
        if fixes:
            from mmengine.config import utils as cfg_utils
            cfg_utils.MODULE2PACKAGE.update(fixes)
            _ACTIVE['config_packages'] = ('mmengine Config looks up ' + ', '.join(
                f'{scope}:: configs in a missing distribution (installed: {dist})'
                for scope, dist in fixes.items()))
    return active_patches()


def active_patches() -> Dict[str, str]:
    """The patches applied to the installed stack: name -> the problem the probe found."""
    return dict(_ACTIVE)


apply_all()

__all__ = ['active_patches', 'apply_all', 'checkpoint', 'dist']
