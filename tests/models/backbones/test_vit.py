"""CFVisionTransformer: parity with MMSegmentation's VisionTransformer, layouts, ViTDet options."""
import importlib.util
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, List

import pytest
import torch
from torch import Tensor

from crossformer_mm.models.backbones.vit import (CFVisionTransformer, convert_vit_checkpoint,
                                                 vit_checkpoint_layout)
from crossformer_mm.models.layers import decomposed_rel_pos_bias

REPO = Path(__file__).resolve().parents[3]
TINY = dict(embed_dim=64, depth=4, num_heads=4)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def capture_logger() -> logging.Logger:
    logger = logging.getLogger(f'test_vit_{id(object())}')
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
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ('ln' in name or 'norm' in name) and name.endswith('weight'):
                p.copy_(1 + 0.2 * noise)
            elif name in ('pos_embed', 'cls_token') or 'rel_pos' in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.1 * noise)


def build_mmseg_vit(**kwargs) -> torch.nn.Module:
    from mmseg.models.backbones.vit import VisionTransformer
    cfg = dict(img_size=64, patch_size=16, embed_dims=64, num_layers=4, num_heads=4,
               out_indices=(1, 3), with_cls_token=True, final_norm=True,
               interpolate_mode='bicubic')
    cfg.update(kwargs)
    model = VisionTransformer(**cfg)
    randomize(model)
    model.eval()
    return model


def build_ours(**kwargs) -> CFVisionTransformer:
    cfg = dict(img_size=64, patch_size=16, out_indices=(1, 3))
    cfg.update(kwargs)
    return CFVisionTransformer(TINY, **cfg).eval()


def max_diff(a, b) -> float:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope='module')
def mmseg_vit() -> torch.nn.Module:
    return build_mmseg_vit()


# ------------------------------------------------------------------------------------------
# Parity with MMSegmentation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(2, 3, 64, 64), (2, 3, 80, 112), (1, 3, 70, 90)])
@pytest.mark.parametrize('fused', [True, False])
def test_parity_with_mmseg(mmseg_vit: torch.nn.Module, shape, fused: bool) -> None:
    ours = build_ours(fused_attn=fused)
    missing, unexpected = ours.load_pretrained(mmseg_vit.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = mmseg_vit(x)
        out = ours(x)
    assert max(r.abs().max().item() for r in ref) > 0.5
    assert max_diff(out, ref) <= 1e-4


def test_parity_without_cls_token() -> None:
    ref = build_mmseg_vit(with_cls_token=False, final_norm=False, out_indices=(0, 2, 3))
    ours = build_ours(with_cls_token=False, final_norm=False, out_indices=(0, 2, 3))
    logger = capture_logger()
    missing, unexpected = ours.load_pretrained(ref.state_dict(), logger=logger)
    assert not missing and unexpected == ['cls_token']  # mmseg always holds one
    assert any('prefix row' in m for m in logger.handlers[0].messages)
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        assert max_diff(ours(x), ref(x)) <= 1e-4


def test_position_interpolation_is_exercised(mmseg_vit: torch.nn.Module) -> None:
    """At 80x112 a model that skipped the resize (or resized differently) would not match."""
    ours = build_ours(interpolate_mode='bilinear')
    ours.load_pretrained(mmseg_vit.state_dict(), strict=True)
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        assert max_diff(ours(x), mmseg_vit(x)) > 1e-3


# ------------------------------------------------------------------------------------------
# Checkpoint layouts
# ------------------------------------------------------------------------------------------
def timm_state_dict(model: CFVisionTransformer) -> 'OrderedDict[str, Tensor]':
    return OrderedDict((k.replace('patch_embed.projs.0.', 'patch_embed.proj.'), v)
                       for k, v in model.state_dict().items())


def test_timm_layout_with_other_grid_resized_and_logged() -> None:
    src = CFVisionTransformer(TINY, img_size=224, patch_size=16, num_classes=7,
                              out_type='cls_token')
    randomize(src)
    sd = timm_state_dict(src)
    sd['dist_token'] = torch.zeros(1, 1, 64)
    assert vit_checkpoint_layout(sd) == 'timm'
    ours = build_ours(num_classes=7, out_type='cls_token')
    logger = capture_logger()
    missing, unexpected = ours.load_pretrained({'model': sd}, logger=logger)
    assert not missing and unexpected == ['dist_token']
    assert any('resizing pos_embed from a 14x14 grid to 4x4' in m
               for m in logger.handlers[0].messages)
    # Running the 224-model on 64x64 images resizes the same way at run time.
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = ours.forward_head(ours(x))
        b = src.forward_head(src.eval()(x))
    assert a.shape == (2, 7)
    assert torch.allclose(a, b, atol=1e-4)


def test_deit_distilled_prefix_rows() -> None:
    src = build_ours()
    randomize(src, seed=2)
    sd = timm_state_dict(src)
    pos = sd['pos_embed']  # cls row + 16 grid rows; insert a distillation row
    sd['pos_embed'] = torch.cat((pos[:, :1], torch.randn(1, 1, 64), pos[:, 1:]), dim=1)
    ours = build_ours()
    ours.load_pretrained(sd, logger=capture_logger())
    assert torch.equal(ours.pos_embed, pos)


def mmpretrain_state_dict(model: CFVisionTransformer) -> 'OrderedDict[str, Tensor]':
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    for k, v in model.state_dict().items():
        k = k.replace('patch_embed.projs.0.', 'patch_embed.projection.')
        k = k.replace('blocks.', 'layers.').replace('.norm1.', '.ln1.').replace('.norm2.', '.ln2.')
        k = k.replace('.mlp.fc1.', '.ffn.layers.0.0.').replace('.mlp.fc2.', '.ffn.layers.1.')
        if k.startswith('norm.'):
            k = 'ln1.' + k[len('norm.'):]
        out['backbone.' + k] = v
    out['head.layers.head.weight'] = torch.zeros(3, 64)
    return out


def test_mmpretrain_layout_roundtrip() -> None:
    src = build_ours()
    randomize(src, seed=5)
    sd = mmpretrain_state_dict(src)
    assert vit_checkpoint_layout({k[9:]: v for k, v in sd.items()}) == 'mmpretrain'
    converted = convert_vit_checkpoint({'state_dict': sd})
    assert converted.keys() == src.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in src.state_dict().items())


def test_mismatched_checkpoint_names_first_key(mmseg_vit: torch.nn.Module) -> None:
    other = CFVisionTransformer(dict(embed_dim=32, depth=4, num_heads=4), img_size=64)
    with pytest.raises(ValueError, match=r"'cls_token' has shape \(1, 1, 32\).*\(1, 1, 64\)"):
        build_ours().load_pretrained(other.state_dict())
    deeper = CFVisionTransformer(dict(embed_dim=64, depth=6, num_heads=4), img_size=64)
    with pytest.raises(ValueError, match=r"blocks\.4\..*not in the model"):
        build_ours().load_pretrained(deeper.state_dict())
    with pytest.raises(ValueError, match='not a ViT checkpoint'):
        convert_vit_checkpoint({'stages.0.weight': torch.zeros(1)})


def test_init_cfg_pretrained_on_converted_file(tmp_path, mmseg_vit: torch.nn.Module) -> None:
    from mmseg.registry import MODELS
    src, dst = tmp_path / 'mmseg_vit.pth', tmp_path / 'converted.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in mmseg_vit.state_dict().items()}},
               src)
    assert load_tool('vit_to_mm').main([str(src), str(dst)]) == 0
    model = MODELS.build(dict(type='CFVisionTransformer', arch=TINY, img_size=64,
                              out_indices=(1, 3),
                              init_cfg=dict(type='Pretrained', checkpoint=str(dst))))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        assert max_diff(model(x), mmseg_vit(x)) <= 1e-4


# ------------------------------------------------------------------------------------------
# ViTDet options
# ------------------------------------------------------------------------------------------
def test_decomposed_rel_pos_matches_definition() -> None:
    g = torch.Generator().manual_seed(0)
    b, heads, h, w, d = 2, 3, 3, 4, 5
    q = torch.randn(b, heads, h * w, d, generator=g)
    rh, rw = torch.randn(2 * h - 1, d, generator=g), torch.randn(2 * w - 1, d, generator=g)
    bias = decomposed_rel_pos_bias(q, rh, rw, (h, w), (h, w))
    ref = torch.zeros(b, heads, h * w, h * w)
    for i in range(h):
        for j in range(w):
            for k in range(h):
                for m in range(w):
                    qv = q[:, :, i * w + j]
                    ref[:, :, i * w + j, k * w + m] = (qv @ rh[i - k + h - 1]
                                                       + qv @ rw[j - m + w - 1])
    assert torch.allclose(bias, ref, atol=1e-5)


def test_vitdet_windows_rel_pos_pyramid() -> None:
    model = build_ours(with_cls_token=False, window_size=3, global_attn_indexes=(1, 3),
                       use_rel_pos=True, out_type='pyramid', out_indices=-1)
    randomize(model)
    model.eval()
    assert [b.window_size for b in model.blocks] == [3, 0, 3, 0]
    assert model.blocks[0].attn.rel_pos_h.shape == (5, 16)
    assert model.blocks[1].attn.rel_pos_h.shape == (7, 16)  # the 4x4 pre-training grid
    x = torch.randn(1, 3, 80, 112)  # 5x7 tokens: padded to 6x9 in the windowed blocks
    with torch.no_grad():
        out = model(x)
        model.set_fused_attn(False)
        out2 = model(x)
    assert [o.shape for o in out] == [(1, 16, 20, 28), (1, 32, 10, 14), (1, 64, 5, 7),
                                      (1, 64, 3, 4)]
    assert [spec.channels for spec in model.output_shape()] == [16, 32, 64, 64]
    assert max_diff(out, out2) <= 1e-4
    # The relative position changes the function.
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.rel_pos_h.zero_()
        assert max_diff(model(x), out) > 1e-3


def test_pyramid_channels_for_fpn() -> None:
    model = build_ours(out_type='pyramid', pyramid_channels=32, out_indices=-1)
    out = model(torch.randn(1, 3, 64, 64))
    assert [o.shape for o in out] == [(1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4),
                                      (1, 32, 2, 2)]


def test_classification_outputs() -> None:
    model = build_ours(out_type='avg_featmap', fc_norm=True, num_classes=4, final_norm=False)
    feats = model(torch.randn(3, 3, 64, 64))
    assert len(feats) == 1 and feats[0].shape == (3, 64)
    assert model.forward_head(feats).shape == (3, 4)


# ------------------------------------------------------------------------------------------
# Options and errors
# ------------------------------------------------------------------------------------------
def test_registered_everywhere() -> None:
    from crossformer_mm.registry import ALL_MODEL_REGISTRIES
    for registry in ALL_MODEL_REGISTRIES:
        assert registry.module_dict['CFVisionTransformer'] is CFVisionTransformer


def test_arch_table() -> None:
    with pytest.raises(ValueError, match=r"unknown arch 'giant'.*'base'.*'large'.*'small'"):
        CFVisionTransformer('giant')
    n = sum(p.numel() for p in CFVisionTransformer('b').parameters())
    assert 85.7e6 < n < 85.9e6  # ViT-B/16 without head: 85.8M


def test_bad_inputs_and_options() -> None:
    model = build_ours()
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='in_channels=3 but the input has 4 channels'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match='with_cls_token=False'):
        build_ours(window_size=7)
    with pytest.raises(ValueError, match='out_type'):
        build_ours(out_type='tokens')
    with pytest.raises(ValueError, match='out_indices'):
        build_ours(out_indices=(4,))


def test_frozen_stages_and_with_cp() -> None:
    model = build_ours(frozen_stages=2)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('patch_embed.', 'blocks.0.', 'blocks.1.', 'pos_embed',
                                  'cls_token'))
        assert p.requires_grad != frozen, name
    a, b = build_ours(drop_path_rate=0.0), build_ours(with_cp=True)
    b.load_state_dict(a.state_dict())
    a.train()
    b.train()
    x = torch.randn(1, 3, 64, 64)
    sum(o.sum() for o in a(x)).backward()
    sum(o.sum() for o in b(x)).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), n
