"""Checkpoint loading and saving under torch >= 2.6.

torch 2.6 made ``torch.load`` weights-only by default. mmengine 0.10.7 calls ``torch.load`` without
``weights_only``, and the Runner's own training checkpoints pickle more than tensors (the message
hub's ``HistoryBuffer``, numpy arrays and scalars, ``getattr`` for statistics methods), so
``tools/test.py``, ``--resume`` and ``load_from`` all fail with "Unsupported global".

Allow-listing those globals would make weights-only loading pointless (``getattr`` alone reaches any
attribute), and switching protection off globally would unpickle any downloaded file. Instead:

* every local file is first loaded with ``weights_only=True`` — model-zoo weights, converted
  checkpoints and anything a user downloads load exactly as torch intends;
* checkpoints written by the Runner on this machine are *trusted*: when mmengine saves one, it is
  written atomically (temporary file + rename, so a killed run never leaves a torn checkpoint) and
  its SHA-256 is recorded in a trust store; a file that fails weights-only loading is loaded in full
  only if its digest is in the store (or its path is listed in ``CFM_TRUSTED_CHECKPOINTS``);
* anything else gets a clear error saying what to do.

The trust store is a folder of empty files named by digest (safe under concurrent writers), by
default ``~/.cache/crossformer_mm/trusted_checkpoints``; set ``CFM_TRUST_STORE`` to a shared folder
for multi-node runs. ``python tools/misc/trust_checkpoint.py FILE`` trusts a file by hand.
"""
import hashlib
import io
import os
import os.path as osp
import pickle
import tempfile
import zipfile
from typing import Any, Callable, Optional, Union

import torch

_PATCHED = False
_original_save_checkpoint: Optional[Callable] = None


def trust_store_dir() -> str:
    """The folder holding the digests of trusted checkpoints."""
    default = osp.join(os.environ.get('XDG_CACHE_HOME', osp.expanduser('~/.cache')), 'crossformer_mm',
                       'trusted_checkpoints')
    return os.environ.get('CFM_TRUST_STORE', default)


def file_digest(path: str) -> str:
    """SHA-256 of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 23), b''):
            h.update(chunk)
    return h.hexdigest()


def trust_checkpoint(path: str) -> str:
    """Record ``path``'s digest in the trust store and return it."""
    digest = file_digest(path)
    store = trust_store_dir()
    os.makedirs(store, exist_ok=True)
    open(osp.join(store, digest), 'a').close()
    return digest


def is_trusted(path: str) -> bool:
    """Whether ``path`` may be unpickled in full: listed by the user or written by our Runner."""
    listed = os.environ.get('CFM_TRUSTED_CHECKPOINTS', '')
    real = osp.realpath(path)
    if any(p and osp.realpath(osp.expanduser(p)) == real for p in listed.split(os.pathsep)):
        return True
    return osp.exists(osp.join(trust_store_dir(), file_digest(path)))


class CheckpointLoadError(RuntimeError):
    """A file that cannot be loaded as a checkpoint, with the reason and what to do."""


def load_local_checkpoint(filename: str, map_location: Union[str, torch.device, None] = None) -> Any:
    """Load a local checkpoint: weights-only first, in full only for trusted files.

    Raises:
        FileNotFoundError: ``filename`` does not exist.
        CheckpointLoadError: the file is not a torch checkpoint, or it needs full unpickling and is
            not trusted.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist (or is not a file)')
    if not _is_torch_file(filename):
        raise CheckpointLoadError(f'{filename!r} is not a PyTorch checkpoint (neither a zip '
                                  'archive nor a pickle)')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler refuses a global it does not allow.
        if 'Unsupported global' not in str(err) and 'weights_only' not in str(err):
            raise CheckpointLoadError(
                f'{filename!r} is not a readable PyTorch checkpoint ({_short(err)})') from None
        if not is_trusted(filename):
            raise CheckpointLoadError(
                f'{filename!r} holds Python objects beyond tensors ({_short(err)}) and was not '
                'written by a training run on this machine, so it is not unpickled. If you trust '
                'it, run `python tools/misc/trust_checkpoint.py FILE` or list it in '
                'CFM_TRUSTED_CHECKPOINTS (paths separated by ":").') from None
    except Exception as err:  # truncated zip, corrupt pickle stream, ...
        raise CheckpointLoadError(
            f'{filename!r} is not a readable PyTorch checkpoint ({_short(err)})') from None
    return torch.load(filename, map_location=map_location, weights_only=False)


def _is_torch_file(path: str) -> bool:
    """Whether ``path`` looks like a torch.save file (zip archive or legacy pickle)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, 'rb') as f:
        return f.read(1) == b'\x80'  # pickle protocol >= 2 marker used by legacy torch.save


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    for line in text:
        if 'Unsupported global' in line or 'invalid load key' in line:
            return line.strip()
    return text[0].strip() if text else type(err).__name__


def save_checkpoint_atomic(checkpoint: dict, filename: str, *args: Any, **kwargs: Any) -> None:
    """mmengine's ``save_checkpoint``, atomic and trusted for local paths."""
    assert _original_save_checkpoint is not None
    if '://' in filename or args or kwargs.get('backend_args') or kwargs.get('file_client_args'):
        _original_save_checkpoint(checkpoint, filename, *args, **kwargs)
        return
    folder = osp.dirname(osp.abspath(filename))
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_ckpt_', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    trust_checkpoint(filename)


def apply() -> None:
    """Route mmengine's local checkpoint loading and saving through this module (idempotent)."""
    global _PATCHED, _original_save_checkpoint
    if _PATCHED:
        return
    from mmengine.runner import checkpoint as mm_ckpt
    from mmengine.runner import runner as mm_runner

    # Local paths have the empty prefix in mmengine's scheme table.
    mm_ckpt.CheckpointLoader._schemes[''] = load_local_checkpoint
    mm_ckpt.load_from_local = load_local_checkpoint
    _original_save_checkpoint = mm_ckpt.save_checkpoint
    mm_ckpt.save_checkpoint = save_checkpoint_atomic
    mm_runner.save_checkpoint = save_checkpoint_atomic
    _PATCHED = True
