"""Checkpoint loading under torch's weights-only default: plain weights load, the Runner's own
checkpoints resume, untrusted pickles and garbage fail clearly."""
import os

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner import runner as mm_runner

import crossformer_mm  # noqa: F401  (applies the compatibility layer)
from crossformer_mm.compat.checkpoint import (CheckpointLoadError, is_trusted,
                                              load_local_checkpoint, save_checkpoint_atomic,
                                              trust_checkpoint)


@pytest.fixture(autouse=True)
def private_trust_store(tmp_path, monkeypatch):
    monkeypatch.setenv('CFM_TRUST_STORE', str(tmp_path / 'store'))
    monkeypatch.delenv('CFM_TRUSTED_CHECKPOINTS', raising=False)


def runner_like_checkpoint() -> dict:
    buf = HistoryBuffer()
    buf.update(1.5)
    return dict(meta=dict(epoch=1, seed=np.int64(3)), state_dict={'w': torch.ones(2)},
                message_hub=dict(log_scalars={'loss': buf}, arr=np.zeros(3)))


def test_plain_weights_load_weights_only(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'w': torch.arange(3.)}, 'meta': {'epoch': 2}}, path)
    ckpt = mm_checkpoint._load_checkpoint(str(path), map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(3.))
    assert not is_trusted(str(path))


def test_runner_saves_through_the_atomic_trusted_writer():
    assert mm_runner.save_checkpoint is save_checkpoint_atomic
    assert mm_checkpoint.save_checkpoint is save_checkpoint_atomic


def test_runner_checkpoint_is_trusted_and_resumes(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    mm_checkpoint.save_checkpoint(runner_like_checkpoint(), str(path))
    assert is_trusted(str(path))
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.tmp_ckpt_')]
    ckpt = mm_checkpoint._load_checkpoint(str(path), map_location='cpu')
    assert ckpt['message_hub']['log_scalars']['loss'].current() == 1.5
    assert ckpt['meta']['seed'] == 3


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / 'foreign.pth'
    torch.save(runner_like_checkpoint(), path)
    with pytest.raises(CheckpointLoadError, match='trust_checkpoint.py'):
        load_local_checkpoint(str(path))


def test_trust_by_hand_and_by_env(tmp_path, monkeypatch):
    a, b = tmp_path / 'a.pth', tmp_path / 'b.pth'
    torch.save(runner_like_checkpoint(), a)
    torch.save(runner_like_checkpoint(), b)
    trust_checkpoint(str(a))
    assert load_local_checkpoint(str(a))['meta']['epoch'] == 1
    monkeypatch.setenv('CFM_TRUSTED_CHECKPOINTS', str(b))
    assert load_local_checkpoint(str(b))['meta']['epoch'] == 1


def test_modified_trusted_file_is_no_longer_trusted(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    mm_checkpoint.save_checkpoint(runner_like_checkpoint(), str(path))
    ckpt = runner_like_checkpoint()
    ckpt['meta']['epoch'] = 7
    torch.save(ckpt, path)
    with pytest.raises(CheckpointLoadError):
        load_local_checkpoint(str(path))


@pytest.mark.parametrize('content', [b'', b'not a checkpoint at all', b'PK\x03\x04broken'])
def test_garbage_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointLoadError, match='not a'):
        load_local_checkpoint(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_local_checkpoint(str(tmp_path / 'nope.pth'))
