"""CFSwinTransformer: parity with MMDetection's SwinTransformer, checkpoint layouts, options."""
import importlib.util
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import Tensor

from crossformer_mm.models.backbones.swin import (CFSwinTransformer, convert_swin_checkpoint,
                                                  unfold_to_official_order)
from crossformer_mm.models.layers import relative_position_index

REPO = Path(__file__).resolve().parents[3]
TINY = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def capture_logger() -> logging.Logger:
    logger = logging.getLogger(f'test_swin_{id(object())}')
    logger.handlers = [ListHandler()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / 'tools/model_converters' /
                                                  f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights of a realistic scale (unit-ish norms, larger position tables)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.2 * noise)
            elif 'relative_position_bias_table' in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.05 * noise)


def build_mmdet_swin(window_size: int = 7, **kwargs) -> torch.nn.Module:
    from mmdet.models.backbones.swin import SwinTransformer
    model = SwinTransformer(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                            window_size=window_size, drop_path_rate=0.0, **kwargs)
    randomize(model)
    model.eval()  # mmdet's SwinTransformer.train() returns None
    return model


def build_ours(**kwargs) -> CFSwinTransformer:
    kwargs.setdefault('drop_path_rate', 0.0)
    return CFSwinTransformer(TINY, **kwargs).eval()


def max_diff(a: List[Tensor], b: List[Tensor]) -> float:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope='module')
def mmdet_swin() -> torch.nn.Module:
    return build_mmdet_swin()


# ------------------------------------------------------------------------------------------
# Parity with MMDetection
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(1, 3, 97, 131), (2, 3, 224, 224)])
@pytest.mark.parametrize('fused', [True, False])
def test_parity_with_mmdet(mmdet_swin: torch.nn.Module, shape, fused: bool) -> None:
    ours = build_ours(fused_attn=fused)
    missing, unexpected = ours.load_pretrained(mmdet_swin.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = mmdet_swin(x)
        out = ours(x)
    assert [o.shape[-2:] for o in out] == [r.shape[-2:] for r in ref]
    assert max(r.abs().max().item() for r in ref) > 0.5  # a non-trivial function
    assert max_diff(list(out), list(ref)) <= 1e-4


def test_parity_detects_wrong_merge_order(mmdet_swin: torch.nn.Module) -> None:
    """Loading MMDetection weights without the unfold-order permutation must not match."""
    mm_sd = mmdet_swin.state_dict()
    sd = convert_swin_checkpoint(mm_sd)
    for k in list(sd):
        if '.downsample.' in k:  # MMDetection's tensor, without the converter's permutation
            sd[k] = mm_sd[k.replace('layers.', 'stages.', 1)]
    ours = build_ours()
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(list(ours(x))[1:], list(mmdet_swin(x))[1:]) > 1e-2


def test_unfold_permutation_maps_unfold_features_to_the_official_concatenation() -> None:
    """A merging weight over ``nn.Unfold`` features, permuted, gives the same result over the
    official concatenation ``[x(0::2, 0::2), x(1::2, 0::2), x(0::2, 1::2), x(1::2, 1::2)]``."""
    c = 5
    x = torch.randn(1, c, 4, 6)
    unfold = torch.nn.functional.unfold(x, 2, stride=2)[0].t()  # (L, 4C), c·4 + dh·2 + dw
    x_hw = x[0].permute(1, 2, 0)
    official = torch.cat([x_hw[0::2, 0::2], x_hw[1::2, 0::2], x_hw[0::2, 1::2],
                          x_hw[1::2, 1::2]], dim=-1).reshape(-1, 4 * c)
    assert torch.equal(unfold_to_official_order(unfold), official)  # columns permuted
    w = torch.randn(6, 4 * c)
    torch.testing.assert_close(official @ unfold_to_official_order(w).t(), unfold @ w.t())
    n = torch.randn(4 * c)  # a norm's weight: the same permutation of its channels
    assert torch.equal(unfold_to_official_order(n), unfold_to_official_order(n[None])[0])


def official_state_dict(ours: CFSwinTransformer) -> 'OrderedDict[str, Tensor]':
    """Our weights written in the official microsoft/Swin-Transformer layout (with its buffers)."""
    sd: 'OrderedDict[str, Tensor]' = OrderedDict()
    for k, v in ours.state_dict().items():
        if k.startswith(('norm0.', 'norm1.', 'norm2.')):
            continue  # the official model has one final norm
        k = k.replace('patch_embed.projs.0.', 'patch_embed.proj.')
        k = k.replace('.attn.rel_pos.relative_position_bias_table',
                      '.attn.relative_position_bias_table')
        k = re.sub(r'^norm3\.', 'norm.', k)
        sd[k] = v
        if k.endswith('relative_position_bias_table'):
            sd[k.replace('_bias_table', '_index')] = relative_position_index(7).clone()
        if k.endswith('blocks.1.norm1.weight'):
            sd[k.replace('norm1.weight', 'attn_mask')] = torch.zeros(4, 49, 49)
    return sd


def test_official_layout_matches_mmdet_converter() -> None:
    """An official checkpoint gives the same model here as through mmdet's ``swin_converter``."""
    from mmdet.models.backbones.swin import swin_converter
    src = build_ours(out_indices=(0, 1, 2, 3))
    randomize(src, seed=3)
    official = official_state_dict(src)
    official['head.weight'] = torch.randn(10, 256)
    ref = build_mmdet_swin()
    mm_sd = {k[len('backbone.'):]: v for k, v in swin_converter(official).items()}
    ref.load_state_dict({k: v for k, v in mm_sd.items() if k in ref.state_dict()}, strict=False)
    ours = build_ours()
    missing, unexpected = ours.load_pretrained({'model': official})
    assert missing == [f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')]
    assert unexpected == ['head.weight']
    for i in range(3):  # the official checkpoint has only the final norm
        getattr(ours, f'norm{i}').load_state_dict(getattr(ref, f'norm{i}').state_dict())
    ref.norm3.load_state_dict(ours.norm3.state_dict())
    x = torch.randn(1, 3, 90, 75)
    with torch.no_grad():
        assert max_diff(list(ours(x)), list(ref(x))) <= 1e-4


def test_timm_layout_equals_official() -> None:
    src = build_ours()
    randomize(src, seed=4)
    official = official_state_dict(src)
    timm: Dict[str, Tensor] = OrderedDict()
    for k, v in official.items():
        m = re.match(r'layers\.(\d+)\.downsample\.(.*)', k)
        timm[f'layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}' if m else k] = v
    a, b = convert_swin_checkpoint(official), convert_swin_checkpoint(timm)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_whole_detector_checkpoint_and_prefix(mmdet_swin: torch.nn.Module) -> None:
    wrapped = {'state_dict': {f'backbone.{k}': v for k, v in mmdet_swin.state_dict().items()},
               'meta': {}}
    wrapped['state_dict']['neck.conv.weight'] = torch.zeros(1)
    ours = build_ours()
    missing, unexpected = ours.load_pretrained(wrapped, strict=True)
    assert not missing and not unexpected
    ours2 = build_ours()
    ours2.load_pretrained(wrapped, strict=True, prefix='backbone.')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(list(ours(x)), list(ours2(x))) == 0


# ------------------------------------------------------------------------------------------
# Loading: resizing, errors, init_cfg
# ------------------------------------------------------------------------------------------
def test_window_size_resize_logged(mmdet_swin: torch.nn.Module) -> None:
    ours = build_ours(window_size=12)
    logger = capture_logger()
    ours.load_pretrained(mmdet_swin.state_dict(), strict=True, logger=logger)
    msgs = logger.handlers[0].messages
    assert any('resizing layers.0.blocks.0.attn.rel_pos.relative_position_bias_table' in m
               and '(169, 1)' in m and '(529, 1)' in m for m in msgs)
    # Smooth resize: the 13x13 grid of offsets is interpolated bicubically to 23x23 (what
    # mmdet's SwinTransformer does with a pretrained table of another window size), so the
    # zero offset keeps its bias and every entry is a bicubic blend of its neighbours.
    t = ours.layers[0].blocks[0].attn.rel_pos.relative_position_bias_table.detach()
    assert t.shape == (23 * 23, 1)
    src = mmdet_swin.state_dict()['stages.0.blocks.0.attn.w_msa.relative_position_bias_table']
    grid = torch.nn.functional.interpolate(src.t().reshape(1, 1, 13, 13), size=(23, 23),
                                           mode='bicubic', align_corners=False)
    torch.testing.assert_close(t, grid.reshape(1, -1).t(), rtol=1e-5, atol=1e-6)
    assert abs(float(t[11 * 23 + 11, 0] - src[6 * 13 + 6, 0])) <= 1e-5 * float(src.abs().max())
    out = ours(torch.randn(1, 3, 100, 100))
    assert out[0].shape == (1, 32, 25, 25)


def test_mismatched_checkpoint_names_first_key() -> None:
    other = CFSwinTransformer(dict(embed_dim=48, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)))
    with pytest.raises(ValueError, match=r"patch_embed\.projs\.0\.weight.*\(48, 3, 4, 4\)"):
        build_ours().load_pretrained(other.state_dict())
    deeper = CFSwinTransformer(dict(embed_dim=32, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8)))
    with pytest.raises(ValueError, match=r"layers\.2\.blocks\.2\..*not in the model"):
        build_ours().load_pretrained(deeper.state_dict())
    with pytest.raises(ValueError, match='not a Swin checkpoint'):
        convert_swin_checkpoint({'blocks.0.attn.qkv.weight': torch.zeros(1)})


def test_missing_and_unexpected_keys_logged(mmdet_swin: torch.nn.Module) -> None:
    sd = dict(mmdet_swin.state_dict())
    del sd['norm2.weight']
    sd['extra.thing'] = torch.zeros(1)
    logger = capture_logger()
    missing, unexpected = build_ours().load_pretrained(sd, logger=logger)
    assert missing == ['norm2.weight'] and unexpected == ['extra.thing']
    msgs = logger.handlers[0].messages
    assert any('missing key' in m and 'norm2.weight' in m for m in msgs)
    assert any('unexpected key' in m and 'extra.thing' in m for m in msgs)
    with pytest.raises(KeyError, match='1 missing keys'):
        build_ours().load_pretrained(sd, strict=True, logger=logger)


def test_init_cfg_pretrained_on_converted_file(tmp_path, mmdet_swin: torch.nn.Module) -> None:
    from mmdet.registry import MODELS
    convert_main = load_tool('swin_to_mm').main
    src, dst = tmp_path / 'mmdet_swin.pth', tmp_path / 'converted.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in mmdet_swin.state_dict().items()}},
               src)
    assert convert_main([str(src), str(dst)]) == 0
    model = MODELS.build(dict(type='CFSwinTransformer', arch=TINY, drop_path_rate=0.0,
                              init_cfg=dict(type='Pretrained', checkpoint=str(dst))))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert max_diff(list(model(x)), list(mmdet_swin(x))) <= 1e-4


def test_converter_cli_rejects_non_swin(tmp_path) -> None:
    convert_main = load_tool('swin_to_mm').main
    src = tmp_path / 'bad.pth'
    torch.save({'model': {'fc.weight': torch.zeros(2, 2)}}, src)
    assert convert_main([str(src), str(tmp_path / 'out.pth')]) == 1


# ------------------------------------------------------------------------------------------
# Options and errors
# ------------------------------------------------------------------------------------------
def test_registered_everywhere() -> None:
    from crossformer_mm.registry import ALL_MODEL_REGISTRIES
    for registry in ALL_MODEL_REGISTRIES:
        assert registry.module_dict['CFSwinTransformer'] is CFSwinTransformer
    from mmdet.registry import MODELS
    assert MODELS.module_dict['SwinTransformer'] is not CFSwinTransformer


def test_unknown_arch_lists_valid() -> None:
    with pytest.raises(ValueError, match=r"unknown arch 'huge'.*'base'.*'large'.*'small'.*'tiny'"):
        CFSwinTransformer('huge')
    with pytest.raises(ValueError, match='unknown'):
        CFSwinTransformer(dict(embed_dim=32, depths=(2,), num_heads=(1,), window=7))


def test_arch_table_parameter_counts() -> None:
    # Backbone parameters (no head, norm0..3): Swin-T 27.52M as in MMDetection's Swin-T.
    model = CFSwinTransformer('t')
    n = sum(p.numel() for p in model.parameters())
    assert 27.4e6 < n < 27.6e6
    assert model.num_features == [96, 192, 384, 768]


def test_bad_inputs() -> None:
    model = build_ours()
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='in_channels=3 but the input has 1 channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='out_indices'):
        build_ours(out_indices=(4,))
    with pytest.raises(ValueError, match='frozen_stages'):
        build_ours(frozen_stages=7)


def test_out_indices_and_head() -> None:
    model = build_ours(out_indices=(1, 3), num_classes=5)
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')
    out = model(torch.randn(2, 3, 70, 70))
    assert [o.shape for o in out] == [(2, 64, 9, 9), (2, 256, 3, 3)]
    assert model.forward_head(out).shape == (2, 5)


def test_frozen_stages_and_norm_eval() -> None:
    model = build_ours(frozen_stages=2, norm_eval=True)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('patch_embed.', 'layers.0.', 'layers.1.', 'norm0.', 'norm1.'))
        assert p.requires_grad != frozen, name
    assert not model.layers[1].training and model.layers[2].training


def test_drop_path_schedule_and_with_cp() -> None:
    model = build_ours(drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for layer in model.layers for b in layer.blocks
             if hasattr(b.drop_path, 'drop_prob')]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 8)[1:].tolist())
    a, b = build_ours(), build_ours(with_cp=True)
    b.load_state_dict(a.state_dict())
    a.train()
    b.train()
    x = torch.randn(1, 3, 40, 40)
    sum(o.sum() for o in a(x)).backward()
    sum(o.sum() for o in b(x)).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), n


def test_init_weights_random() -> None:
    model = build_ours()
    model.init_weights()
    t = model.layers[0].blocks[0].attn.rel_pos.relative_position_bias_table
    assert 0.005 < t.std().item() < 0.05
    assert torch.all(model.norm0.weight == 1)
