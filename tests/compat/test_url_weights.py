"""Weights by URL, served by a local HTTP server: every backbone's ``init_cfg`` Pretrained URL,
``load_from`` URLs through mmengine, ``torchvision://`` from a prepared cache; malicious pickles,
unreachable addresses, 404s, truncated downloads and checkpoints of another family fail with one
clear line and leave nothing in the cache."""
import http.server
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch
from mmengine.runner import checkpoint as mm_checkpoint

import crossformer_mm  # noqa: F401  (registers the backbones, applies the compatibility layer)
from crossformer_mm.compat.checkpoint import CheckpointLoadError, hub_checkpoint_dir
from crossformer_mm.models.backbones import CFSwinTransformer, CFVisionTransformer, CrossFormer

ROOT = Path(__file__).resolve().parents[2]

BACKBONES = {
    'CrossFormer': lambda **kw: CrossFormer(
        dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)), **kw),
    'CFSwinTransformer': lambda **kw: CFSwinTransformer(
        dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)), **kw),
    'CFVisionTransformer': lambda **kw: CFVisionTransformer(
        dict(embed_dim=64, depth=2, num_heads=4), img_size=64, **kw),
}


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1; ``/truncated/NAME`` announces the whole
    length of ``/NAME`` but sends half. Counts requests per path."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.requests: Counter = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests[self.path] = outer.requests[self.path] + 1
                truncated = self.path.startswith('/truncated/')
                body = outer.files.get(self.path.replace('/truncated', '', 1))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if truncated else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}'

    def add(self, path: str, obj, tmp: Path) -> str:
        file = tmp / path.strip('/').replace('/', '_')
        torch.save(obj, file)
        self.files[path] = file.read_bytes()
        return self.url(path)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join()


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    return home


def cache_files() -> list:
    folder = hub_checkpoint_dir()
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.parametrize('family', sorted(BACKBONES))
def test_pretrained_url_loads_the_same_values_as_the_file_once(family, server, tmp_path):
    torch.manual_seed(0)
    source = BACKBONES[family]()
    weights = {'state_dict': source.state_dict(), 'meta': {'note': 'converted'}}
    url = server.add(f'/zoo/{family.lower()}.pth', weights, tmp_path)
    file = tmp_path / f'zoo_{family.lower()}.pth'  # the same bytes, as a local file
    for checkpoint in (url, str(file), url):
        torch.manual_seed(1)
        model = BACKBONES[family](init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
        model.init_weights()
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (checkpoint, key)
    # Downloaded once into $TORCH_HOME/hub/checkpoints; the second build used the cache.
    assert server.requests[f'/zoo/{family.lower()}.pth'] == 1
    assert cache_files() == [f'{family.lower()}.pth']


class Exploit:
    """Unpickling it would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_malicious_pickle_is_refused_and_never_runs(server, tmp_path):
    marker = tmp_path / 'pwned'
    url = server.add('/evil/crossformer.pth', {'state_dict': {}, 'meta': Exploit(str(marker))},
                     tmp_path)
    model = BACKBONES['CrossFormer'](init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(CheckpointLoadError) as err:
        model.init_weights()
    message = str(err.value)
    assert url in message and 'weights-only' in message and 'crossformer_to_mm.py' in message
    assert '\n' not in message
    with pytest.raises(CheckpointLoadError, match='beyond tensors'):
        mm_checkpoint.CheckpointLoader.load_checkpoint(url, map_location='cpu')
    assert not marker.exists()
    assert cache_files() == []


def test_load_from_url_runner_checkpoint_is_not_unpickled(server, tmp_path):
    """A Runner checkpoint (HistoryBuffer inside) from a URL is refused, not unpickled."""
    from mmengine.logging import HistoryBuffer
    url = server.add('/runs/epoch_12.pth', {'state_dict': {}, 'message_hub': HistoryBuffer()},
                     tmp_path)
    with pytest.raises(CheckpointLoadError, match='HistoryBuffer'):
        mm_checkpoint._load_checkpoint(url, map_location='cpu')


def test_load_from_url_plain_weights_through_mmengine(server, tmp_path):
    url = server.add('/zoo/plain.pth', {'state_dict': {'w': torch.arange(4.)}}, tmp_path)
    ckpt = mm_checkpoint._load_checkpoint(url, map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(4.))


@pytest.mark.parametrize('case', ['unreachable', '404', 'truncated', 'not-a-checkpoint'])
def test_bad_urls_are_one_line_errors_and_leave_no_cache(case, server, tmp_path):
    torch.manual_seed(0)
    good = server.add('/zoo/w.pth', {'state_dict': BACKBONES['CrossFormer']().state_dict()},
                      tmp_path)
    server.files['/zoo/junk.pth'] = b'<html>not found</html>'
    url = {'unreachable': 'http://127.0.0.1:9/zoo/w.pth', '404': server.url('/zoo/missing.pth'),
           'truncated': server.url('/truncated/zoo/w.pth'),
           'not-a-checkpoint': server.url('/zoo/junk.pth')}[case]
    expected = {'unreachable': 'cannot download', '404': 'HTTP 404',
                'truncated': 'incomplete', 'not-a-checkpoint': 'not a PyTorch checkpoint'}[case]
    model = BACKBONES['CrossFormer'](init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(CheckpointLoadError) as err:
        model.init_weights()
    message = str(err.value)
    assert url in message and expected in message and 'expected' in message, message
    assert '\n' not in message
    assert cache_files() == []
    assert good  # the same server still serves the good file


def test_checkpoint_of_another_family_names_url_and_expectation(server, tmp_path):
    torch.manual_seed(0)
    vit = BACKBONES['CFVisionTransformer']()
    url = server.add('/zoo/vit.pth', {'state_dict': vit.state_dict()}, tmp_path)
    model = BACKBONES['CrossFormer'](init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises((ValueError, KeyError)) as err:
        model.init_weights()
    message = str(err.value)
    assert url in message and '\n' not in message, message
    assert 'CrossFormer' in message or 'patch_embed' in message or 'layers.' in message, message


def write_torchvision_resnet50(torch_home: Path) -> Path:
    """A random-weight ResNet-50 state dict under the cache name torchvision's URL expects."""
    from mmdet.models.backbones import ResNet
    url = mm_checkpoint.get_torchvision_models()['resnet50']
    folder = torch_home / 'hub' / 'checkpoints'
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    state = ResNet(depth=50).state_dict()
    path = folder / os.path.basename(url)
    torch.save(state, path)
    return path


def test_torchvision_r50_config_loads_from_the_cache(torch_home):
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    path = write_torchvision_resnet50(torch_home)
    cfg = Config.fromfile(str(ROOT / 'configs/deformable_detr/'
                              'deformable-detr_r50_16xb2-50e_coco.py'))
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.init_cfg == dict(type='Pretrained', checkpoint='torchvision://resnet50')
    backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    state = torch.load(path, weights_only=True)
    own = backbone.state_dict()
    loaded = [k for k in state if k in own and 'num_batches_tracked' not in k]
    assert len(loaded) == len([k for k in own if 'num_batches_tracked' not in k]) > 250
    for key in loaded:
        assert torch.equal(own[key], state[key]), key


def test_torchvision_cache_holding_a_pickle_is_refused(torch_home, tmp_path):
    marker = tmp_path / 'pwned'
    path = write_torchvision_resnet50(torch_home)
    torch.save({'meta': Exploit(str(marker))}, path)
    with pytest.raises(CheckpointLoadError, match='weights-only'):
        mm_checkpoint.CheckpointLoader.load_checkpoint('torchvision://resnet50')
    assert not marker.exists()


# ------------------------------------------------------------------ the shipped configs' URLs
TINY_ARCH = {'CFSwinTransformer': dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
             'CFVisionTransformer': dict(embed_dim=32, depth=12, num_heads=2)}


def shipped_url_backbones() -> Dict[str, tuple]:
    """One shipped config per distinct backbone URL: URL -> (config path, backbone cfg)."""
    from mmengine.config import Config
    found: Dict[str, tuple] = {}
    for path in sorted((ROOT / 'configs').rglob('*.py')):
        if '_base_' in path.parts or 'https://' not in path.read_text():
            continue
        backbone = Config.fromfile(str(path)).model.get('backbone', {})
        init = backbone.get('init_cfg') or {}
        url = init.get('checkpoint', '')
        if init.get('type') == 'Pretrained' and url.startswith('http') and url not in found:
            found[url] = (path.relative_to(ROOT), backbone)
    return found


SHIPPED = shipped_url_backbones()


def test_shipped_configs_name_urls():
    assert len(SHIPPED) >= 3, SHIPPED
    assert {cfg['type'] for _, cfg in SHIPPED.values()} == set(TINY_ARCH)


@pytest.mark.parametrize('url', sorted(SHIPPED), ids=lambda u: u.rsplit('/', 1)[-1])
def test_shipped_config_backbone_loads_its_url(url, server, tmp_path):
    """The config's backbone (shrunk to a tiny arch) loads its init_cfg URL, served locally under
    the same file name, with the values served."""
    from mmdet.registry import MODELS
    _, cfg = SHIPPED[url]
    cfg = dict(cfg, arch=TINY_ARCH[cfg['type']])
    torch.manual_seed(0)
    source = MODELS.build(dict(cfg, init_cfg=None))
    prefix = cfg['init_cfg'].get('prefix') or ''
    served = server.add('/' + url.split('://', 1)[1].split('/', 1)[1],
                        {'state_dict': {prefix + k: v for k, v in source.state_dict().items()}},
                        tmp_path)
    torch.manual_seed(1)
    model = MODELS.build(dict(cfg, init_cfg=dict(cfg['init_cfg'], checkpoint=served)))
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert cache_files() == [url.rsplit('/', 1)[-1]]
