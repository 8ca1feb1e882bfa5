"""CrossFormer backbone: parameter counts, groupings against a naive reference, any input size,
fused vs explicit attention, checkpointing, freezing, checkpoint conversion and loading."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crossformer_mm.models.backbones.crossformer import (CrossFormer, CrossFormerBlock,
                                                         convert_crossformer_checkpoint,
                                                         group_geometry)

REPO = Path(__file__).resolve().parents[3]
CLASSIFICATION_PARAMS = {
    'tiny': 27_776_794, 'small': 30_657_394, 'base': 51_971_554, 'large': 91_971_184,
    'pp-small': 23_325_340, 'pp-base': 51_994_594, 'pp-large': 92_001_904,
    'pp-huge': 95_962_944}
DENSE_PARAMS = {'tiny': 27_262_770, 'small': 29_886_858, 'base': 51_201_018,
                'large': 90_944_136}
# A small model with the real group sizes / intervals, for fast whole-model checks.
MINI = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
MINI_PP = dict(MINI, group_size=(4, 4, 14, 7), interval=(4, 2, 1, 1), use_acl=True,
               lda_mode='main', depths=(2, 2, 4, 2))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- construction
@pytest.mark.parametrize('arch', sorted(CLASSIFICATION_PARAMS))
def test_classification_param_counts(arch):
    with torch.device('meta'):
        model = CrossFormer(arch, num_classes=1000)
    assert n_params(model) == CLASSIFICATION_PARAMS[arch]


@pytest.mark.parametrize('arch', sorted(DENSE_PARAMS))
def test_dense_param_counts(arch):
    with torch.device('meta'):
        model = CrossFormer(arch)
    assert n_params(model) == DENSE_PARAMS[arch]
    assert not hasattr(model, 'norm') and not hasattr(model, 'head')


def test_official_key_names():
    with torch.device('meta'):
        keys = set(CrossFormer('pp-small', num_classes=1000).state_dict())
    for k in ('patch_embed.projs.3.weight', 'patch_embed.norm.weight',
              'layers.0.blocks.1.attn.qkv.weight', 'layers.0.blocks.1.attn.proj.bias',
              'layers.0.blocks.1.attn.pos.pos_proj.weight', 'layers.0.blocks.1.attn.pos.pos1.0.weight',
              'layers.0.blocks.1.attn.pos.pos3.2.bias', 'layers.0.blocks.0.mlp.fc1.weight',
              'layers.0.blocks.0.mlp.fc2.weight', 'layers.0.blocks.0.norm2.bias',
              'layers.2.blocks.2.ex_conv.weight', 'layers.2.blocks.2.ex_ln.weight',
              'layers.0.downsample.reductions.1.weight', 'layers.0.downsample.norm.weight',
              'norm.weight', 'head.weight'):
        assert k in keys, k
    # cooling layers after every 3rd block except a stage's last one
    acl = sorted({k.split('.ex_conv')[0] for k in keys if '.ex_conv.' in k})
    assert acl == [f'layers.2.blocks.{i}' for i in (11, 14, 2, 5, 8)]
    assert not any(k.endswith(('attn.biases', 'relative_position_index')) for k in keys)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown arch 'huge'.*'small'"):
        CrossFormer('huge')
    with pytest.raises(ValueError, match='group_size must have one entry per stage'):
        CrossFormer('small', group_size=(7, 7, 7))
    with pytest.raises(ValueError, match='interval must have one entry per stage'):
        CrossFormer('small', interval=(8, 4))
    with pytest.raises(ValueError, match=r'group_size\[2\]'):
        CrossFormer(MINI, group_size=(7, 7, (7, 7, 7), 7))
    with pytest.raises(ValueError, match='missing'):
        CrossFormer(dict(embed_dim=32, depths=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match='unknown'):
        CrossFormer(dict(MINI, windows=3))
    with pytest.raises(ValueError, match='lda_mode'):
        CrossFormer(MINI, lda_mode='new')
    with pytest.raises(ValueError, match='out_indices'):
        CrossFormer(MINI, out_indices=(4,))
    model = CrossFormer(MINI)
    with pytest.raises(ValueError, match='in_channels=3'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 64, 64))


# ---------------------------------------------------------------------------- groupings
def naive_block_attention(block: CrossFormerBlock, x: torch.Tensor) -> torch.Tensor:
    """Attention branch of a block written from the paper's definition, with no padding at all.

    Every token gets a group id and a position inside its group by explicit arithmetic; each
    token attends to the real tokens of its group, with the DPB bias of their offset in group
    coordinates. Returns the attention branch output ``(B, H, W, C)`` (before the residual).
    """
    b, h, w, c = x.shape
    attn = block.attn
    G, I = block.group_size, block.interval
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    hh, ww = hh.flatten(), ww.flatten()
    if min(h, w) <= G:
        if block.lda_mode == 'main':  # one group: the whole map
            gid, ph, pw = torch.zeros_like(hh), hh, ww
        else:  # min(H, W) windows
            m = min(h, w)
            gid, ph, pw = (hh // m) * 10_000 + ww // m, hh % m, ww % m
    elif not block.lda:
        gid, ph, pw = (hh // G) * 10_000 + ww // G, hh % G, ww % G
    elif block.lda_mode == 'main':
        R = G * I
        gid = ((hh // R) * 1000 + ww // R) * 1000 + (hh % I) * I + ww % I
        ph, pw = (hh % R) // I, (ww % R) // I
    else:
        gid, ph, pw = (hh % I) * I + ww % I, hh // I, ww // I
    tokens = block.norm1(x).reshape(b, h * w, c)
    qkv = attn.qkv(tokens).reshape(b, h * w, 3, attn.num_heads, attn.head_dim)
    out = torch.zeros(b, h * w, attn.num_heads, attn.head_dim, dtype=x.dtype)
    for g in gid.unique():
        idx = (gid == g).nonzero().flatten()
        off = torch.stack([ph[idx][:, None] - ph[idx][None, :],
                           pw[idx][:, None] - pw[idx][None, :]], -1).to(x.dtype)
        bias = attn.pos.forward_offsets(off.reshape(-1, 2)).reshape(len(idx), len(idx), -1)
        q, k, v = qkv[:, idx].unbind(2)  # b, n, heads, d
        logits = torch.einsum('bqhd,bkhd->bhqk', q * attn.scale, k) + bias.permute(2, 0, 1)
        out[:, idx] = torch.einsum('bhqk,bkhd->bqhd', logits.softmax(-1), v)
    return attn.proj(out.reshape(b, h * w, c)).reshape(b, h, w, c)


@pytest.mark.parametrize('lda', [False, True])
@pytest.mark.parametrize('lda_mode', ['crossformer', 'main'])
@pytest.mark.parametrize('hw,G,I', [((12, 12), 3, 2), ((13, 11), 3, 2), ((9, 14), 2, 3),
                                    ((3, 5), 4, 2), ((4, 7), 3, 4)])
def test_block_matches_naive_grouping(lda, lda_mode, hw, G, I):
    torch.manual_seed(0)
    block = CrossFormerBlock(16, 2, G, I, lda=lda, lda_mode=lda_mode).double().eval()
    for p in block.parameters():  # non-trivial norms / biases
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, *hw, 16, dtype=torch.float64)
    expected = x + naive_block_attention(block, x)
    expected = expected + block.mlp(block.norm2(expected))
    for fused in (True, False):
        block.attn.fused_attn = fused
        torch.testing.assert_close(block(x), expected, atol=1e-10, rtol=0)


def test_group_geometry_examples():
    # original LDA at 800x1216, stage 1: 200x304 map, I=8 -> 64 groups of 25x38 tokens
    geo = group_geometry((200, 304), 7, 8, True, 'crossformer')
    assert geo.group == (25, 38) and geo.pad == (0, 0) and geo.key_padding_mask is None
    # main LDA: fixed 7x7 groups, map padded to multiples of 56
    geo = group_geometry((200, 304), 7, 8, True, 'main')
    assert geo.group == (7, 7) and geo.pad == (24, 32)
    assert geo.key_padding_mask.shape == (4 * 6 * 64, 49)
    # CrossFormer++ at 224: stage 1 LDA pads 56 -> 64, stage 3 attends globally
    assert group_geometry((56, 56), 4, 4, True, 'main').pad == (8, 8)
    assert group_geometry((14, 14), 14, 1, True, 'main').group == (14, 14)


def test_lda_modes_agree_at_224_and_differ_at_800x1216():
    torch.manual_seed(0)
    old = CrossFormer(MINI, lda_mode='crossformer').eval()
    new = CrossFormer(MINI, lda_mode='main').eval()
    new.load_state_dict(old.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        for a, b in zip(old(x), new(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        x = torch.randn(1, 3, 800, 1216)
        diffs = [(a - b).abs().max().item() for a, b in zip(old(x), new(x))]
    assert min(diffs) > 1e-2, diffs


# ---------------------------------------------------------------------------- any input size
@pytest.mark.parametrize('hw', [(500, 700), (333, 517), (40, 60), (5, 9), (224, 224)])
def test_output_shapes_any_size(hw):
    model = CrossFormer(MINI).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    for i, out in enumerate(outs):
        s = 2 ** (i + 2)
        assert out.shape == (1, 32 * 2 ** i, math.ceil(hw[0] / s), math.ceil(hw[1] / s))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('arch', [MINI, MINI_PP])
def test_odd_size_equals_zero_padded_input(arch):
    # 333x517 and its zero padding to 336x520 share the stage-1 grid (84x130); inside the model
    # everything else is padded and masked, so both give the same outputs.
    torch.manual_seed(0)
    model = CrossFormer(arch).eval()
    x = torch.randn(1, 3, 333, 517)
    with torch.no_grad():
        a = model(x)
        b = model(F.pad(x, (0, 3, 0, 3)))
    for ya, yb in zip(a, b):
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('arch,hw', [(MINI, (333, 517)), (MINI_PP, (224, 224)),
                                     (MINI, (40, 60))])
def test_fused_equals_explicit(arch, hw):
    torch.manual_seed(0)
    model = CrossFormer(arch).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        explicit = model(x)
    for a, b in zip(fused, explicit):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    model.double()
    with torch.no_grad():
        explicit = model(x.double())
        model.set_fused_attn(True)
        fused = model(x.double())
    for a, b in zip(fused, explicit):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.slow
def test_small_real_sizes_fused_vs_explicit():
    model = CrossFormer('small').eval()
    x = torch.randn(1, 3, 500, 700)
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        explicit = model(x)
    for i, (a, b) in enumerate(zip(fused, explicit)):
        assert a.shape[-2:] == (math.ceil(500 / 2 ** (i + 2)), math.ceil(700 / 2 ** (i + 2)))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- training options
def test_with_cp_same_gradients():
    torch.manual_seed(0)
    ref = CrossFormer(MINI_PP, drop_path_rate=0.0)
    cp_model = CrossFormer(MINI_PP, drop_path_rate=0.0, with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 72, 88)
    grads = []
    for model in (ref, cp_model):
        model.train()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5, msg=k)


def test_frozen_stages_and_drop_path():
    model = CrossFormer(MINI, frozen_stages=2, drop_path_rate=0.3)
    model.train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.layers[1].parameters())
    assert all(p.requires_grad for p in model.layers[2].parameters())
    assert not model.layers[0].training and model.layers[2].training
    rates = [b.drop_path.drop_prob for layer in model.layers for b in layer.blocks
             if hasattr(b.drop_path, 'drop_prob')]
    assert rates[-1] == pytest.approx(0.3) and len(rates) == 7  # the first block has rate 0


def test_out_indices_norms_and_head():
    model = CrossFormer(MINI, out_indices=(1, 3), out_norms=True, num_classes=10).eval()
    assert {'norm1.weight', 'norm3.weight', 'norm.weight', 'head.weight'} <= set(
        model.state_dict())
    outs = model(torch.randn(2, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [64, 256]
    assert model.forward_head(outs).shape == (2, 10)
    with pytest.raises(RuntimeError, match='num_classes'):
        CrossFormer(MINI).forward_head(outs)


# ---------------------------------------------------------------------------- checkpoints
def official_layout(model: CrossFormer, kind: str) -> dict:
    """A checkpoint in the official layout, with the buffers the official code saved."""
    sd = dict(model.state_dict())
    for k in list(sd):
        if k.endswith('attn.qkv.weight'):
            base = k[:-len('qkv.weight')]
            sd[base + 'biases'] = torch.zeros(169, 2)
            sd[base + 'relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
    if kind == 'cls':
        return {'model': sd, 'epoch': 300, 'max_accuracy': 82.5}
    sd = {f'backbone.{k}': v for k, v in sd.items()}
    sd['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    return {'state_dict': sd, 'meta': {'epoch': 12}}


@pytest.mark.parametrize('kind', ['cls', 'det'])
def test_converter_cli_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    src_model = CrossFormer(MINI, num_classes=10 if kind == 'cls' else 0).eval()
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted.pth'
    torch.save(official_layout(src_model, kind), src)
    proc = subprocess.run([sys.executable, str(REPO / 'tools/model_converters/crossformer_to_mm.py'),
                           str(src), str(dst)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert set(converted) == set(src_model.state_dict())
    model = CrossFormer(MINI, num_classes=10 if kind == 'cls' else 0,
                        init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(src_model(x), model(x)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_converter_unwraps_and_filters():
    sd = {'backbone.layers.0.blocks.0.norm1.weight': torch.ones(2),
          'backbone.layers.0.blocks.0.attn.biases': torch.ones(2),
          'module.backbone.patch_embed.norm.bias': torch.ones(2),
          'neck.x': torch.ones(1)}
    out = convert_crossformer_checkpoint({'state_dict': sd})
    assert list(out) == ['layers.0.blocks.0.norm1.weight', 'patch_embed.norm.bias']


def test_wrong_variant_raises_naming_key():
    with torch.device('meta'):
        base_sd = CrossFormer('base').state_dict()
        tiny_sd = CrossFormer('tiny').state_dict()
        small = CrossFormer('small')
    with pytest.raises(ValueError, match=r"'layers\.2\.blocks\.6\.norm1\.weight'"):
        small.load_pretrained({'state_dict': base_sd})
    with pytest.raises(ValueError, match=r"'patch_embed\.projs\.0\.weight' has shape"):
        small.load_pretrained({'model': tiny_sd})


def test_loader_logs_missing_and_unexpected(caplog):
    from mmengine.logging import MMLogger
    model = CrossFormer(MINI)
    sd = dict(CrossFormer(MINI, num_classes=5).state_dict())  # classification ckpt -> dense
    sd.pop('layers.0.blocks.0.norm1.weight')
    logger = MMLogger.get_instance('test_crossformer_loader')
    with pytest.raises(ValueError, match='norm1.weight'):
        model.load_pretrained(sd, logger=logger)
    sd = dict(CrossFormer(MINI, num_classes=5).state_dict())
    missing, unexpected = model.load_pretrained(sd, logger=logger)
    assert missing == [] and sorted(unexpected) == ['head.bias', 'head.weight', 'norm.bias',
                                                    'norm.weight']
    with pytest.raises(KeyError, match='unexpected'):
        model.load_pretrained(sd, strict=True, logger=logger)


# ---------------------------------------------------------------------------- registries
def test_registered_in_mm_registries():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS

    import crossformer_mm  # noqa: F401  (registers)
    for registry in (MMDET_MODELS, MMSEG_MODELS):
        model = registry.build(dict(type='CrossFormer', arch=MINI, out_indices=(3,)))
        assert isinstance(model, CrossFormer)
    # building through mmpretrain's registry imports mmpretrain.models (torchvision); the
    # registration itself must not need it
    assert MMPRETRAIN_MODELS.module_dict['CrossFormer'] is CrossFormer


# ---------------------------------------------------------------------------- FLOPs
OFFICIAL_GFLOPS = {'tiny': 2.9, 'small': 4.9, 'base': 9.2, 'large': 16.1}


def count_gflops(model: CrossFormer, hw=(224, 224)) -> float:
    from mmengine.analysis import FlopAnalyzer

    from crossformer_mm.models.layers import add_sdpa_handle

    class Classifier(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return self.backbone.forward_head(self.backbone(x))

    analyzer = add_sdpa_handle(FlopAnalyzer(Classifier(model.eval()), torch.randn(1, 3, *hw)))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer.total() / 1e9


@pytest.mark.parametrize('arch', [
    'small', pytest.param('tiny', marks=pytest.mark.slow), pytest.param('base', marks=pytest.mark.slow),
    pytest.param('large', marks=pytest.mark.slow)])
def test_flops_match_official(arch):
    model = CrossFormer(arch, num_classes=1000)
    fused = count_gflops(model)  # SDPA counted through add_sdpa_handle
    model.set_fused_attn(False)
    explicit = count_gflops(model)
    assert fused == pytest.approx(explicit, rel=1e-9)
    assert explicit == pytest.approx(OFFICIAL_GFLOPS[arch], rel=0.03)


# ---------------------------------------------------------------------------- configs
CONFIGS = sorted((REPO / 'configs/crossformer').glob('*.py'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_classification_configs(path):
    pytest.importorskip('mmpretrain', reason='mmpretrain (its _base_ configs) not installed')
    from mmengine.config import Config
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'mmpretrain' and 'crossformer_mm' in cfg.custom_imports.imports
    args = dict(cfg.model.backbone)
    assert args.pop('type') == 'CrossFormer'
    with torch.device('meta'):
        backbone = CrossFormer(**args, num_classes=cfg.model.head.num_classes)
    assert cfg.model.head.in_channels == backbone.num_features[-1]
    arch = args['arch']
    assert n_params(backbone) == CLASSIFICATION_PARAMS[arch]
    assert args['drop_path_rate'] == CrossFormer.arch_zoo[arch]['drop_path_rate']


def test_classification_config_builds_with_mmpretrain():
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import crossformer_mm  # noqa: F401
    cfg = Config.fromfile(str(REPO / 'configs/crossformer/crossformer-t_8xb128_in1k.py'))
    # the config's own scope (as the Runner sets it), whatever scope an earlier build left current
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'ImageClassifier' and isinstance(model.backbone, CrossFormer)
    assert n_params(model) == CLASSIFICATION_PARAMS['tiny']


def test_image_classifier_logits_equal_forward_head(tmp_path):
    """mmpretrain's ImageClassifier (GlobalAveragePooling + LinearClsHead) around the backbone,
    loaded strictly from the ``--mmpretrain`` conversion of an official checkpoint, gives the
    logits of the official classifier (``forward_head``)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    torch.manual_seed(0)
    ref = CrossFormer(MINI, num_classes=7).eval()
    src, dst = tmp_path / 'official.pth', tmp_path / 'cls.pth'
    torch.save(official_layout(ref, 'cls'), src)
    proc = subprocess.run([sys.executable, str(REPO / 'tools/model_converters/crossformer_to_mm.py'),
                           str(src), str(dst), '--mmpretrain'], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='CrossFormer', arch=MINI, final_norm=True, out_indices=(3, )),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=7, in_channels=256)))
    model.load_state_dict(torch.load(dst, weights_only=True)['state_dict'], strict=True)
    model.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        logits = model(x, mode='tensor')
        expected = ref.forward_head(ref(x))
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_converter_cli_mmpretrain_layout(tmp_path):
    model = CrossFormer(MINI, num_classes=10)
    src, dst = tmp_path / 'official.pth', tmp_path / 'cls.pth'
    torch.save(official_layout(model, 'cls'), src)
    proc = subprocess.run([sys.executable, str(REPO / 'tools/model_converters/crossformer_to_mm.py'),
                           str(src), str(dst), '--mmpretrain'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    keys = set(torch.load(dst, weights_only=True)['state_dict'])
    assert {'head.fc.weight', 'head.fc.bias', 'backbone.norm.weight',
            'backbone.patch_embed.projs.0.weight'} <= keys
    assert not any(k.startswith('head.') and not k.startswith('head.fc.') for k in keys)
