"""Checkpoint files under torch's weights-only default: plain weights load weights-only, the
Runner's own checkpoints are written atomically and signed and load in full wherever the work dir
is, and copied, modified, torn or garbage files are refused with a clear message."""
import fractions
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from crossformer_mm.compat.checkpoint import (KEY_FILE, SIG_SUFFIX, TMP_PREFIX,
                                              CheckpointLoadError, _short, find_resume_checkpoint,
                                              load_local_checkpoint, load_trusted_file,
                                              signature_problem, write_checkpoint)

#: torch 2.1's refusal of a class weights-only loading does not allow (one line).
TORCH_2_1_REFUSAL = ('Weights only load failed. Re-running `torch.load` with `weights_only` set '
                     'to `False` will likely succeed, but it can result in arbitrary code '
                     'execution.Do it only if you get the file from a trusted source. '
                     'WeightsUnpickler error: Unsupported class fractions.Fraction')
#: What the one-line messages keep of it: this wording, or today's.
REFUSED_FRACTION = ('Unsupported class fractions.Fraction',
                    'Unsupported global: GLOBAL fractions.Fraction')

def runner_like_checkpoint(epoch: int = 1) -> dict:
    buf = HistoryBuffer()
    buf.update(1.5)
    return dict(meta=dict(epoch=epoch, seed=np.int64(3)), state_dict={'w': torch.ones(2) * epoch},
                message_hub=dict(log_scalars={'loss': buf}, arr=np.zeros(3)))


def test_plain_weights_load_weights_only(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'w': torch.arange(3.)}, 'meta': {'epoch': 2}}, path)
    ckpt = load_local_checkpoint(str(path), 'cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(3.))


def test_runner_checkpoint_is_signed_and_resumes(tmp_path):
    path = tmp_path / 'work' / 'epoch_1.pth'
    write_checkpoint(runner_like_checkpoint(), str(path))
    assert (tmp_path / 'work' / ('epoch_1.pth' + SIG_SUFFIX)).is_file()
    key = tmp_path / 'work' / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    assert not [p for p in os.listdir(path.parent) if p.startswith(TMP_PREFIX)]
    assert signature_problem(str(path)) is None
    ckpt = load_local_checkpoint(str(path), 'cpu')
    assert ckpt['message_hub']['log_scalars']['loss'].current() == 1.5
    assert ckpt['meta']['seed'] == 3


def test_signature_travels_with_the_work_dir_not_the_home(tmp_path, monkeypatch):
    """Another machine sees the work dir on shared storage, with its own home and caches."""
    work = tmp_path / 'work'
    write_checkpoint(runner_like_checkpoint(), str(work / 'epoch_1.pth'))
    moved = tmp_path / 'mounted_elsewhere'
    shutil.copytree(work, moved)
    monkeypatch.setenv('HOME', str(tmp_path / 'other_home'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'other_home' / '.cache'))
    assert load_local_checkpoint(str(moved / 'epoch_1.pth'))['meta']['epoch'] == 1


def test_foreign_pickle_is_refused(tmp_path):
    path = tmp_path / 'foreign.pth'
    torch.save(runner_like_checkpoint(), path)
    with pytest.raises(CheckpointLoadError, match='trust_checkpoint.py') as err:
        load_local_checkpoint(str(path))
    message = str(err.value)
    assert 'Unsupported global: GLOBAL' in message or 'Unsupported class' in message, message
    assert '\n' not in message and 'Weights only load failed' not in message
    # What it offers works for a whole model: a weights-only copy of everything, not a backbone
    # converter (a detector tested with only its backbone's weights scores ~0 AP).
    assert f'tools/model_converters/to_weights_only.py {path} DST --unsafe-pickle' in str(err.value)
    assert '_to_mm' not in str(err.value)
    # A backbone loader names its family's converter instead.
    with pytest.raises(CheckpointLoadError, match=r'swin_to_mm\.py .* --unsafe-pickle'):
        load_local_checkpoint(str(path), converter='swin_to_mm')


def test_refusal_names_what_was_refused(tmp_path):
    """This torch's own refusal, and torch 2.1's wording, come down to the refused class."""
    path = tmp_path / 'fraction.pth'
    torch.save({'ratio': fractions.Fraction(1, 3)}, path)
    with pytest.raises(pickle.UnpicklingError) as err:
        torch.load(path, weights_only=True)
    assert _short(err.value) in REFUSED_FRACTION, str(err.value)
    assert _short(pickle.UnpicklingError(TORCH_2_1_REFUSAL)) == REFUSED_FRACTION[0]
    with pytest.raises(CheckpointLoadError) as err:
        load_local_checkpoint(str(path))
    assert any(f'({refused})' in str(err.value) for refused in REFUSED_FRACTION), str(err.value)


def test_truncated_checkpoint_is_named_in_one_line(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    for load in (load_local_checkpoint, load_trusted_file):
        with pytest.raises(CheckpointLoadError) as err:
            load(str(path))
        message = str(err.value)
        assert 'not a readable PyTorch checkpoint' in message and 'truncated' in message
        assert '\n' not in message and len(message) < 300


def test_copied_file_with_its_signature_is_refused(tmp_path):
    """A checkpoint and .sig from another work dir do not verify with this folder's key."""
    a, b = tmp_path / 'a', tmp_path / 'b'
    write_checkpoint(runner_like_checkpoint(), str(a / 'epoch_1.pth'))
    write_checkpoint(runner_like_checkpoint(2), str(b / 'epoch_2.pth'))
    shutil.copy(a / 'epoch_1.pth', b / 'epoch_1.pth')
    shutil.copy(a / ('epoch_1.pth' + SIG_SUFFIX), b / ('epoch_1.pth' + SIG_SUFFIX))
    assert 'key' in signature_problem(str(b / 'epoch_1.pth'))
    with pytest.raises(CheckpointLoadError, match='not a verified training checkpoint'):
        load_local_checkpoint(str(b / 'epoch_1.pth'))


def test_modified_signed_file_is_refused(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    write_checkpoint(runner_like_checkpoint(), str(path))
    sig = (tmp_path / ('epoch_1.pth' + SIG_SUFFIX)).read_bytes()
    torch.save(runner_like_checkpoint(7), path)
    (tmp_path / ('epoch_1.pth' + SIG_SUFFIX)).write_bytes(sig)
    assert signature_problem(str(path)) is not None
    with pytest.raises(CheckpointLoadError):
        load_local_checkpoint(str(path))


def test_key_writable_by_others_is_not_trusted(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    write_checkpoint(runner_like_checkpoint(), str(path))
    os.chmod(tmp_path / KEY_FILE, 0o666)
    assert 'private' in signature_problem(str(path))


def test_sign_by_hand(tmp_path):
    from crossformer_mm.compat.checkpoint import sign_checkpoint
    path = tmp_path / 'copied.pth'
    torch.save(runner_like_checkpoint(), path)
    sign_checkpoint(str(path))
    assert load_local_checkpoint(str(path))['meta']['epoch'] == 1


def test_save_streams_without_a_memory_copy(tmp_path, monkeypatch):
    """torch.save writes into the file (through a hashing stream), never into a BytesIO."""
    import io
    seen = []
    real = torch.save

    def spy(obj, f, *args, **kwargs):
        seen.append(type(f))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', spy)
    write_checkpoint(runner_like_checkpoint(), str(tmp_path / 'epoch_1.pth'))
    assert seen and not any(issubclass(t, io.BytesIO) for t in seen)


def test_failed_save_leaves_nothing(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle')

    with pytest.raises(RuntimeError, match='cannot pickle'):
        write_checkpoint({'x': Unpicklable()}, str(tmp_path / 'epoch_1.pth'))
    assert sorted(os.listdir(tmp_path)) == [KEY_FILE]


def test_resume_point_skips_torn_and_unsigned_files(tmp_path):
    work = tmp_path
    write_checkpoint(runner_like_checkpoint(1), str(work / 'epoch_1.pth'))
    write_checkpoint(runner_like_checkpoint(2), str(work / 'epoch_2.pth'))
    (work / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_2.pth')
    # A torn write of the next checkpoint stays a temporary file: never a candidate.
    (work / (TMP_PREFIX + 'abc')).write_bytes(b'PK\x03\x04 torn')
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_2.pth')
    # last_checkpoint half written, or naming a file that is damaged: the newest good one wins.
    (work / 'last_checkpoint').write_text(str(work)[:5])
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_2.pth')
    with open(work / 'epoch_2.pth', 'r+b') as f:
        f.truncate(100)
    (work / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    # Absolute path from a machine that mounts the work dir elsewhere.
    (work / 'last_checkpoint').write_text('/elsewhere/work/epoch_1.pth')
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    assert find_resume_checkpoint(str(tmp_path / 'empty')) is None


@pytest.mark.parametrize('content', [b'', b'not a checkpoint at all', b'PK\x03\x04broken'])
def test_garbage_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointLoadError, match='not a'):
        load_local_checkpoint(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_local_checkpoint(str(tmp_path / 'nope.pth'))
