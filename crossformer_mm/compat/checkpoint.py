"""Checkpoint files: weights-only loading, weights by URL, signed training checkpoints.

torch >= 2.6 loads files ``weights_only=True`` unless told otherwise. The policy here:

* **Weights** (tensors and plain metadata: model-zoo files, converted checkpoints, anything
  downloaded) load ``weights_only=True`` (:func:`load_weights_file`).
* **URLs** (``http(s)://``, and ``torchvision://NAME`` through torchvision's model URLs) are
  downloaded once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``) and load
  weights-only (:func:`load_url_weights`). A download enters the cache only once it is complete and
  loads weights-only, so an interrupted, truncated or refused download leaves nothing there.
* **Training checkpoints** the Runner writes pickle more than tensors (the message hub's
  ``HistoryBuffer``, numpy scalars). They load in full only when their signature verifies: at save
  time ``epoch_3.pth`` gets ``epoch_3.pth.sig`` with the file's size, SHA-256 and an HMAC-SHA256
  of both under the key ``.checkpoint_key`` kept in the same folder (created with mode 0600 by the
  first save). A job requeued on another machine that shares the work dir verifies with the same
  key; a file copied in from elsewhere, with or without a ``.sig``, does not verify
  (:func:`load_local_checkpoint`). See ``docs/compatibility.md`` for the threat model.
* **Saving** streams ``torch.save`` into a temporary file in the target folder while hashing it (no
  in-memory copy), fsyncs, renames it into place and only then writes the signature
  (:func:`write_checkpoint`); a kill at any point leaves either no new file or a complete one.
"""
import contextlib
import hashlib
import hmac
import http.client
import io
import json
import os
import os.path as osp
import pickle
import secrets
import socket
import tempfile
import uuid
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch

KEY_FILE = '.checkpoint_key'
SIG_SUFFIX = '.sig'
TMP_PREFIX = '.tmp_ckpt_'
_CHUNK = 1 << 22

MapLocation = Union[str, torch.device, Callable, dict, None]


class CheckpointLoadError(RuntimeError):
    """A file or URL that cannot be loaded as a checkpoint, with the reason and what to do."""


# --------------------------------------------------------------------------------------------
# Weights-only loading
# --------------------------------------------------------------------------------------------
def _is_torch_file(path: str) -> bool:
    """Whether ``path`` looks like a ``torch.save`` file (zip archive, possibly torn, or legacy
    pickle)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, 'rb') as f:
        head = f.read(4)
    # A torn zip (a truncated copy or download) keeps its local-header magic: reading it names
    # what is wrong ("failed finding central directory").
    return head == b'PK\x03\x04' or head[:1] == b'\x80'  # pickle protocol >= 2 (legacy save)


def _is_weights_only_refusal(err: BaseException) -> bool:
    text = str(err)
    return 'Weights only load failed' in text or 'Unsupported global' in text


def _short(err: BaseException) -> str:
    """The informative line of a torch.load error (the refused global, the bad key, ...)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    for line in lines:
        # A weights-only refusal names what it refused after torch's advice: today's torch
        # "... WeightsUnpickler error: Unsupported global: GLOBAL m.C was not an allowed global
        # by default. Please use ...", torch 2.1 one line ending "... WeightsUnpickler error:
        # Unsupported class m.C" (or another refused opcode).
        if 'WeightsUnpickler error: ' in line or 'Unsupported global' in line:
            refused = line.split('WeightsUnpickler error: ')[-1]
            return refused.split(' was not an allowed global')[0].strip()
    for line in lines:
        if 'failed finding central directory' in line:  # torch explains it at length after this
            return line.split('directory')[0] + 'directory (a truncated or damaged zip archive)'
        if 'invalid load key' in line:
            return line
    return lines[0] if lines else type(err).__name__


def load_weights_file(path: str, map_location: MapLocation = None, source: Optional[str] = None,
                      refused_hint: str = '') -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Args:
        path: A local file.
        map_location: As for :func:`torch.load`.
        source: What to call the file in messages (default ``path``; a URL for downloads).
        refused_hint: What the user can do when the file holds more than weights.

    Raises:
        CheckpointLoadError: the file is not a torch file, is torn, or holds objects beyond what
            weights-only loading allows.
    """
    src = source or path
    if not _is_torch_file(path):
        raise CheckpointLoadError(f'{src} is not a PyTorch checkpoint (neither a zip archive nor a '
                                  'pickle); expected a file written by torch.save')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not _is_weights_only_refusal(err):
            raise CheckpointLoadError(f'{src} is not a readable PyTorch checkpoint '
                                      f'({_short(err)})') from None
        raise CheckpointLoadError(
            f'{src} holds Python objects beyond tensors ({_short(err)}), so weights-only loading '
            f'refuses it and it is not unpickled. {refused_hint}'.strip()) from None
    except Exception as err:  # truncated zip, corrupt pickle stream, ...
        raise CheckpointLoadError(f'{src} is not a readable PyTorch checkpoint ({_short(err)}); '
                                  'expected a complete file written by torch.save') from None


def load_trusted_file(path: str, map_location: MapLocation = None) -> Any:
    """``torch.load(path, weights_only=False)`` for a file the user vouches for, with the
    one-line errors of :func:`load_weights_file` for what is not a complete torch file.

    Raises:
        CheckpointLoadError: the file is missing, not a torch file, or torn.
    """
    if not osp.isfile(path):
        raise CheckpointLoadError(f'{path} does not exist (or is not a file)')
    if not _is_torch_file(path):
        raise CheckpointLoadError(f'{path} is not a PyTorch checkpoint (neither a zip archive nor '
                                  'a pickle); expected a file written by torch.save')
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, corrupt pickle stream, missing class, ...
        raise CheckpointLoadError(f'{path} is not a readable PyTorch checkpoint ({_short(err)}); '
                                  'expected a complete file written by torch.save') from None


# --------------------------------------------------------------------------------------------
# Signed training checkpoints
# --------------------------------------------------------------------------------------------
def _read_key(folder: str) -> Optional[bytes]:
    """The folder's signing key, or None when it is missing or not private to this user."""
    path = osp.join(folder, KEY_FILE)
    try:
        st = os.stat(path)
        with open(path, 'rb') as f:
            key = f.read()
    except FileNotFoundError:
        return None
    # A key other users could have written proves nothing about who signed.
    if st.st_uid != os.getuid() or st.st_mode & 0o022 or len(key) != 32:
        return None
    return key


def folder_key(folder: str, create: bool = False) -> Optional[bytes]:
    """The signing key of ``folder`` (created, 32 random bytes, mode 0600, when ``create``)."""
    key = _read_key(folder)
    if key is not None or not create:
        return key
    if osp.exists(osp.join(folder, KEY_FILE)):
        raise CheckpointLoadError(f'{osp.join(folder, KEY_FILE)} is not a private key of this '
                                  'user (owner, mode 0600, 32 bytes); remove it to create a new '
                                  'one')
    tmp = osp.join(folder, f'{KEY_FILE}.{uuid.uuid4().hex}.tmp')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, osp.join(folder, KEY_FILE))  # atomic, and never replaces a key
        except FileExistsError:
            pass
    finally:
        os.remove(tmp)
    return _read_key(folder)


def _mac(key: bytes, name: str, size: int, digest: str) -> str:
    return hmac.new(key, f'{name}\0{size}\0{digest}'.encode(), hashlib.sha256).hexdigest()


def file_digest(path: str) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f'{path}.{uuid.uuid4().hex}.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sign_checkpoint(path: str, digest: Optional[str] = None) -> str:
    """Write ``path + '.sig'`` under the folder's key (created if needed); return its path.

    ``digest`` is the file's SHA-256 when the caller already computed it while writing.
    """
    folder, name = osp.split(osp.abspath(path))
    key = folder_key(folder, create=True)
    assert key is not None
    size = osp.getsize(path)
    digest = digest or file_digest(path)
    sig = dict(file=name, size=size, sha256=digest, hmac=_mac(key, name, size, digest))
    _write_atomic(path + SIG_SUFFIX, json.dumps(sig).encode())
    return path + SIG_SUFFIX


def signature_problem(path: str) -> Optional[str]:
    """None when ``path``'s signature verifies, else why it does not."""
    folder, name = osp.split(osp.abspath(path))
    try:
        with open(path + SIG_SUFFIX, 'rb') as f:
            sig = json.loads(f.read())
    except FileNotFoundError:
        return 'it has no signature (.sig) from a training run'
    except ValueError:
        return 'its .sig file is unreadable'
    key = _read_key(folder)
    if key is None:
        return f'its folder has no private {KEY_FILE} of this user'
    try:
        size, digest = int(sig['size']), str(sig['sha256'])
        good = hmac.compare_digest(_mac(key, name, size, digest), str(sig['hmac']))
    except (KeyError, TypeError, ValueError):
        return 'its .sig file is malformed'
    if not good or sig.get('file') != name:
        return f'its .sig was not made with the key of {folder}'
    if osp.getsize(path) != size:
        return 'its size differs from the signed size (torn or modified)'
    if file_digest(path) != digest:
        return 'its content differs from the signed digest (modified)'
    return None


#: The tool that writes a weights-only copy of a whole-model checkpoint (detector, segmentor,
#: classifier); a backbone loader names its family's converter instead.
WEIGHTS_ONLY_TOOL = 'tools/model_converters/to_weights_only.py'


def converter_command(converter: Optional[str] = None) -> str:
    """The command that turns a trusted pickle into plain weights: the family's converter
    (``converter='swin_to_mm'``, backbone only) for a backbone loader, otherwise the whole-model
    :data:`WEIGHTS_ONLY_TOOL`."""
    tool = f'tools/model_converters/{converter}.py' if converter else WEIGHTS_ONLY_TOOL
    return f'python {tool} SRC DST --unsafe-pickle'


def local_refusal_hint(path: str, problem: Optional[str], converter: Optional[str] = None) -> str:
    why = f' It is not a verified training checkpoint: {problem}.' if problem else ''
    command = converter_command(converter).replace('SRC', path, 1)
    return (f'{why} To resume from a training checkpoint, use it inside the work dir that wrote it;'
            f' if you trust a file from elsewhere, sign it with `python '
            f'tools/misc/trust_checkpoint.py {path}`, or write a weights-only copy with '
            f'`{command}` and use DST.').strip()


def load_local_checkpoint(filename: str, map_location: MapLocation = None, *,
                          converter: Optional[str] = None) -> Any:
    """Load a local checkpoint: in full if its signature verifies, otherwise weights-only.

    ``converter`` (e.g. ``'swin_to_mm'``) names the converter tool the refusal message suggests.

    Raises:
        FileNotFoundError: ``filename`` does not exist.
        CheckpointLoadError: the file is not a torch checkpoint, or it needs full unpickling and its
            signature does not verify.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist (or is not a file)')
    problem = None
    if osp.exists(filename + SIG_SUFFIX):
        problem = signature_problem(filename)
        if problem is None:
            return torch.load(filename, map_location=map_location, weights_only=False)
    return load_weights_file(filename, map_location,
                             refused_hint=local_refusal_hint(filename, problem, converter))


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through it into ``raw``."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        super().__init__()
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast('B')
        self.sha256.update(view)
        self.raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self.raw.flush()


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_checkpoint(checkpoint: Any, filename: str) -> str:
    """``torch.save`` to ``filename`` atomically and sign it; return the SHA-256.

    The file is streamed into a temporary file of the same folder while hashed, fsynced and renamed
    into place; the signature is written after the rename and stale signatures of removed
    checkpoints in the folder are deleted.
    """
    folder = osp.dirname(osp.abspath(filename))
    os.makedirs(folder, exist_ok=True)
    folder_key(folder, create=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            writer = _HashingWriter(f)
            torch.save(checkpoint, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    digest = writer.sha256.hexdigest()
    sign_checkpoint(filename, digest)
    for name in os.listdir(folder):
        if name.endswith(SIG_SUFFIX) and not osp.exists(osp.join(folder, name[:-len(SIG_SUFFIX)])):
            with contextlib.suppress(FileNotFoundError):
                os.remove(osp.join(folder, name))
    return digest


def checkpoint_is_complete(path: str) -> bool:
    """Whether ``path`` is a whole checkpoint of this work dir: its signature verifies, or, in a
    folder where nothing is signed (no key: saved without the patch), it is a complete zip."""
    if not osp.isfile(path):
        return False
    if osp.exists(path + SIG_SUFFIX) or osp.exists(osp.join(osp.dirname(path), KEY_FILE)):
        return signature_problem(path) is None
    return zipfile.is_zipfile(path)


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: ``last_checkpoint`` if that file is complete,
    else the newest complete ``*.pth`` of the work dir, else None (start from scratch)."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            last = f.read().strip()
        # Written as an absolute path, which another machine may mount elsewhere.
        for path in (last, osp.join(work_dir, osp.basename(last))) if last else ():
            if checkpoint_is_complete(path):
                return path
    if not osp.isdir(work_dir):
        return None
    candidates = [osp.join(work_dir, n) for n in os.listdir(work_dir)
                  if n.endswith('.pth') and not n.startswith(TMP_PREFIX)]
    candidates.sort(key=osp.getmtime, reverse=True)
    return next((p for p in candidates if checkpoint_is_complete(p)), None)


def remove_torn_files(folder: str) -> List[str]:
    """Delete temporary checkpoint files a killed save left in ``folder``; return their names."""
    removed = []
    if osp.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(osp.join(folder, name))
                    removed.append(name)
    return removed


# --------------------------------------------------------------------------------------------
# Weights by URL
# --------------------------------------------------------------------------------------------
def hub_checkpoint_dir() -> str:
    """Where downloads are cached: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/...``)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def url_refusal_hint(converter: Optional[str] = None) -> str:
    return ('Only plain weight files are loaded from URLs. If you trust its source, download it '
            f'yourself and write a weights-only copy with `{converter_command(converter)}`, then '
            'use DST.')


def download_to_cache(url: str, model_dir: Optional[str] = None, progress: bool = False, *,
                      converter: Optional[str] = None) -> str:
    """Download ``url`` into the hub cache (once) and return the cached path.

    The file is written as ``NAME.<random>.partial`` and renamed to ``NAME`` only when complete
    (all of ``Content-Length`` arrived) and loadable weights-only; otherwise it is removed.

    Raises:
        CheckpointLoadError: unreachable address, HTTP error, truncated download, or a file that is
            not a plain weights file.
    """
    name = osp.basename(urlparse(url).path)
    if not name:
        raise CheckpointLoadError(f'{url}: the URL does not end in a file name; expected a URL '
                                  'of a weights file (e.g. https://host/path/model.pth)')
    model_dir = model_dir or hub_checkpoint_dir()
    cached = osp.join(model_dir, name)
    if osp.isfile(cached):
        return cached
    os.makedirs(model_dir, exist_ok=True)
    tmp = f'{cached}.{uuid.uuid4().hex}.partial'
    try:
        try:
            with urlopen(Request(url, headers={'User-Agent': 'crossformer_mm'}),
                         timeout=60) as resp, open(tmp, 'wb') as f:
                expected = resp.headers.get('Content-Length')
                size = 0
                for chunk in iter(lambda: resp.read(_CHUNK), b''):
                    f.write(chunk)
                    size += len(chunk)
                    if progress:
                        print(f'\rdownloading {url}: {size / 2**20:.1f} MiB', end='', flush=True)
                f.flush()
                os.fsync(f.fileno())
        except HTTPError as err:
            raise CheckpointLoadError(f'cannot download {url}: HTTP {err.code} {err.reason}; '
                                      'expected a weights file at that address') from None
        except (URLError, OSError, http.client.HTTPException, socket.timeout) as err:
            reason = getattr(err, 'reason', None) or err
            raise CheckpointLoadError(f'cannot download {url}: {reason}; expected a reachable '
                                      'address serving a weights file') from None
        if progress:
            print()
        if expected is not None and size != int(expected):
            raise CheckpointLoadError(f'download of {url} is incomplete: {size} of {expected} '
                                      'bytes arrived; expected the whole file (nothing was cached, '
                                      'try again)')
        load_weights_file(tmp, 'cpu', source=url, refused_hint=url_refusal_hint(converter))
        os.replace(tmp, cached)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return cached


def load_url_weights(filename: str, map_location: MapLocation = None,
                     model_dir: Optional[str] = None, progress: bool = False, *,
                     converter: Optional[str] = None) -> Any:
    """Load an ``http(s)://`` checkpoint weights-only, downloading it into the hub cache once.

    Same signature as mmengine's ``load_from_http``, which it replaces when that one unpickles
    downloads in full; ``converter`` names the converter tool the refusal message suggests.
    """
    cached = download_to_cache(filename, model_dir=model_dir, progress=progress,
                               converter=converter)
    return load_weights_file(cached, map_location, source=f'{filename} (cached as {cached})',
                             refused_hint=url_refusal_hint(converter))


def is_url(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(('http://', 'https://'))


def load_weights(path: str, map_location: MapLocation = 'cpu',
                 converter: Optional[str] = None) -> Any:
    """A checkpoint for a backbone: a URL (weights-only, cached) or a local file (see
    :func:`load_local_checkpoint`). ``converter`` (e.g. ``'crossformer_to_mm'``) is the
    converter tool a refusal suggests for a trusted pickle."""
    if is_url(path):
        return load_url_weights(path, map_location, converter=converter)
    return load_local_checkpoint(path, map_location, converter=converter)


# --------------------------------------------------------------------------------------------
# Probes: does the installed mmengine / torch pair need the policy above?
# --------------------------------------------------------------------------------------------
class UnsafeProbe:
    """An object weights-only loading refuses; probes check whether a loader unpickles it."""


@contextlib.contextmanager
def _probe_files(**objects: Any) -> Iterator[Tuple[str, Dict[str, str]]]:
    """``torch.save`` each object into a file the loaders under probe can open by path; yield the
    folder and ``{name: path}``. The files are gone on exit.

    On Linux they are anonymous in-memory files (``os.memfd_create``, opened through
    ``/proc/self/fd``), so probing writes nothing to disk; where the platform has no such files
    they are written to a temporary folder, removed on exit.
    """
    if hasattr(os, 'memfd_create') and osp.isdir('/proc/self/fd'):
        fds: Dict[str, int] = {}
        try:
            for name, obj in objects.items():
                fds[name] = os.memfd_create(f'crossformer_mm_probe_{name}')
                with open(fds[name], 'wb', closefd=False) as f:
                    torch.save(obj, f)
            yield '/proc/self/fd', {name: f'/proc/self/fd/{fd}' for name, fd in fds.items()}
        finally:
            for fd in fds.values():
                os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: osp.join(tmp, f'{name}.pth') for name in objects}
        for name, obj in objects.items():
            torch.save(obj, paths[name])
        yield tmp, paths


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        yield


def local_loader_problem(load: Optional[Callable] = None) -> Optional[str]:
    """Why mmengine's local checkpoint loader (or ``load(filename, map_location)``) needs
    replacing, or None.

    It does when it refuses the Runner's own checkpoints (mmengine 0.10.7 calls ``torch.load``
    without ``weights_only``, which torch >= 2.6 makes ``True``), or when it unpickles a file
    holding arbitrary objects (a ``weights_only=False`` load or fallback).
    """
    from mmengine.logging import HistoryBuffer
    if load is None:
        from mmengine.runner.checkpoint import load_from_local as load
    with _probe_files(own={'message_hub': {'loss': HistoryBuffer()}},
                      foreign={'state_dict': {}, 'meta': UnsafeProbe()}) as (_, paths), _quiet():
        own, foreign = paths['own'], paths['foreign']
        try:
            load(own, 'cpu')
        except Exception as err:
            return (f"refuses the Runner's own checkpoints ({type(err).__name__}: "
                    f'{_short(err)})')
        try:
            got = load(foreign, 'cpu')
        except Exception:  # refused: what a safe loader does
            return None
        if isinstance(got, dict) and isinstance(got.get('meta'), UnsafeProbe):
            return 'unpickles local files beyond weights-only'
    return None


def http_loader_problem(load: Optional[Callable] = None) -> Optional[str]:
    """Why mmengine's URL loader (or ``load(url, map_location, model_dir, progress)``) needs
    replacing, or None: it does when it unpickles a downloaded file beyond weights-only
    (``torch.hub.load_state_dict_from_url`` defaults to ``weights_only=False``)."""
    if load is None:
        from mmengine.runner.checkpoint import load_from_http as load
    # The file is its own cache entry (the URL's file name in ``model_dir``), so the loader finds
    # it cached and loads it as it would a finished download, without copying it.
    with _probe_files(probe={'meta': UnsafeProbe()}) as (folder, paths), _quiet():
        try:
            got = load(f'file://{paths["probe"]}', map_location='cpu', model_dir=folder,
                       progress=False)
        except (pickle.UnpicklingError, CheckpointLoadError):
            return None
        except Exception as err:  # the probe could not run: apply the safe loader anyway
            return f'could not be probed ({type(err).__name__}), so downloads go weights-only'
        if isinstance(got, dict) and isinstance(got.get('meta'), UnsafeProbe):
            return 'unpickles downloaded files beyond weights-only'
    return None


__all__ = ['CheckpointLoadError', 'checkpoint_is_complete', 'download_to_cache',
           'find_resume_checkpoint', 'folder_key', 'hub_checkpoint_dir', 'load_local_checkpoint',
           'load_trusted_file', 'load_url_weights', 'load_weights', 'load_weights_file',
           'remove_torn_files', 'sign_checkpoint', 'signature_problem', 'write_checkpoint']
