"""Putting any mmdet / mmseg model's mmcv ``MultiScaleDeformableAttention`` on the package's
kernels: ``replace_mmcv_msda`` and ``MSDAKernelHook``, and the configs that use the hook (DINO and
Mask2Former with CrossFormer-S; Conditional DETR with CrossFormer-S, which has no deformable
attention). Each config, shrunk (small CrossFormer, few layers and queries, 128x128 demo images),
builds, gives the same losses with and without the switch (same weights), and runs one training
and one test step on the demo data."""
import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as mmcv_msda
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import HOOKS, DefaultScope
from mmengine.runner import Runner

import crossformer_mm  # noqa: F401
from crossformer_mm.models import MSDAKernelHook, replace_mmcv_msda
from crossformer_mm.models.msda import MMCVMSDeformAttnOnKernels

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tests' / 'configs'))
sys.path.insert(0, str(ROOT / 'tests' / 'ops'))
from test_configs import (DEMO_CLASSES, METRIC_KEYS, assert_pretrained_loaded,  # noqa: E402
                          build_model, demo_data_cfg, fresh, register, serve_pretrained, set_key,
                          task, tiny_model_cfg)
from test_msda import _module_inputs, _randomise, max_diff  # noqa: E402

TINY_CROSSFORMER = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
CONFIGS = {
    'dino/dino-4scale_crossformer-s_8xb2-12e_coco.py': dict(msda=True),
    'mask2former/mask2former_crossformer-s_8xb2-160k_ade20k-512x512.py': dict(msda=True),
    'conditional_detr/conditional-detr_crossformer-s_8xb2-50e_coco.py': dict(msda=False),
}


# ------------------------------------------------------------------------------------ the switch
def _mmdet_encoder():
    from mmdet.models.layers import DeformableDetrTransformerEncoder
    torch.manual_seed(0)
    encoder = DeformableDetrTransformerEncoder(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=32, num_heads=4, num_levels=2, num_points=2,
                               dropout=0.0, batch_first=True),
            ffn_cfg=dict(embed_dims=32, feedforward_channels=64, ffn_drop=0.0)))
    _randomise(encoder)
    inputs = _module_inputs(batch_first=True)
    kwargs = dict(query=inputs['value'], query_pos=torch.randn_like(inputs['value']),
                  key_padding_mask=inputs['key_padding_mask'],
                  spatial_shapes=inputs['spatial_shapes'],
                  level_start_index=inputs['level_start_index'],
                  valid_ratios=torch.ones(2, 2, 2))
    return encoder, kwargs


def test_replace_keeps_parameters_state_and_outputs(monkeypatch):
    encoder, kwargs = _mmdet_encoder()
    params = list(encoder.parameters())
    state = copy.deepcopy(encoder.state_dict())
    expected = encoder(**kwargs)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)

    assert replace_mmcv_msda(encoder) == 2
    for layer in encoder.layers:
        assert type(layer.self_attn) is MMCVMSDeformAttnOnKernels
        assert isinstance(layer.self_attn, MultiScaleDeformableAttention)
    assert all(a is b for a, b in zip(encoder.parameters(), params))  # optimizer/DDP keep working
    assert list(encoder.state_dict()) == list(state)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in state.items())
    # mmcv's computation is not used any more
    monkeypatch.setattr(mmcv_msda, 'multi_scale_deformable_attn_pytorch',
                        lambda *a, **k: pytest.fail('mmcv path called'))
    out = encoder(**kwargs)
    assert max_diff(out, expected) <= 1e-5
    for a, b in zip(torch.autograd.grad(out.square().sum(), params), expected_grads):
        assert max_diff(a, b) <= 1e-4 * max(1.0, b.abs().max().item())
    assert replace_mmcv_msda(encoder) == 2  # idempotent


def test_one_switch_for_the_hook_the_detectors_and_users():
    """``crossformer_mm.models.replace_mmcv_msda`` is the switch; the detectors' table switches
    mmcv's deformable attention to the same class."""
    from crossformer_mm.models import msda
    from crossformer_mm.models.detectors.detr_layers import ATTENTION_REPLACEMENTS
    assert replace_mmcv_msda is msda.replace_mmcv_msda
    assert ATTENTION_REPLACEMENTS[MultiScaleDeformableAttention] is MMCVMSDeformAttnOnKernels
    encoder, _ = _mmdet_encoder()
    assert replace_mmcv_msda(encoder, deterministic=True) == 2
    assert all(layer.self_attn.deterministic is True for layer in encoder.layers)


def test_subclasses_with_their_own_forward_are_left_alone():
    class Custom(MultiScaleDeformableAttention):
        pass
    model = torch.nn.ModuleList([Custom(embed_dims=32, num_heads=4, num_levels=2),
                                 MultiScaleDeformableAttention(embed_dims=32, num_heads=4,
                                                               num_levels=2)])
    assert replace_mmcv_msda(model) == 1
    assert type(model[0]) is Custom


def _fake_runner(model):
    return SimpleNamespace(model=model, logger=MMLogger.get_current_instance())


def test_hook_is_registered_and_switches_the_runner_model():
    hook = HOOKS.build(dict(type='MSDAKernelHook'))
    assert isinstance(hook, MSDAKernelHook)
    encoder, _ = _mmdet_encoder()
    hook.before_run(_fake_runner(encoder))
    assert all(type(layer.self_attn) is MMCVMSDeformAttnOnKernels for layer in encoder.layers)


def test_hook_without_deformable_attention_fails_clearly():
    hook = MSDAKernelHook()
    with pytest.raises(RuntimeError, match='no mmcv MultiScaleDeformableAttention.*strict'):
        hook.before_run(_fake_runner(torch.nn.Linear(2, 2)))
    MSDAKernelHook(strict=False).before_run(_fake_runner(torch.nn.Linear(2, 2)))


# ------------------------------------------------------------------------------------ the configs
def _shrink(cfg, model_cfg) -> None:
    """Small CrossFormer, few layers and queries (the recipe and the model's structure kept)."""
    backbone = model_cfg.backbone
    backbone.arch = TINY_CROSSFORMER
    for key in ('group_size', 'interval', 'lda_mode'):
        backbone.pop(key, None)
    dims = [TINY_CROSSFORMER['embed_dim'] * 2**i for i in range(4)]
    out = [dims[i] for i in backbone.out_indices]
    if 'neck' in model_cfg:
        model_cfg.neck.in_channels = out
    if model_cfg.get('type') == 'DINO':
        model_cfg.num_queries = 30
        model_cfg.dn_cfg.group_cfg.num_dn_queries = 10
        model_cfg.encoder.num_layers = 1
        model_cfg.decoder.num_layers = 2
        model_cfg.test_cfg.max_per_img = 30
    elif model_cfg.get('type') == 'ConditionalDETR':
        model_cfg.num_queries = 20
        model_cfg.encoder.num_layers = 1
        model_cfg.decoder.num_layers = 2
    else:  # Mask2Former
        head = model_cfg.decode_head
        head.in_channels = out
        head.num_queries = 20
        head.pixel_decoder.encoder.num_layers = 1
        head.transformer_decoder.num_layers = 3
        head.train_cfg.num_points = 1024
        # the base weighs 150 ADE20K classes + background
        head.loss_cls.class_weight = [1.0] * head.num_classes + [0.1]
        model_cfg.test_cfg = dict(mode='whole')


def _batch(cfg, loader_key: str):
    return next(iter(Runner.build_dataloader(copy.deepcopy(cfg[loader_key]))))


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    from crossformer_mm.datasets.demo_data import make_demo_data
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=2, num_val=1, size=128, seed=0, which=('coco', 'ade'))
    return root


@pytest.mark.parametrize('name', list(CONFIGS), ids=lambda n: n.split('/')[0])
def test_config_switch_same_losses_train_and_test_step(name, demo_root):
    path = ROOT / 'configs' / name
    cfg = fresh(path)
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    assert ('MSDAKernelHook' in hooks) == CONFIGS[name]['msda']
    assert cfg.model.backbone.type == 'CrossFormer'
    scope, kind = cfg.default_scope, task(cfg)
    register(scope)
    demo = demo_data_cfg(kind, demo_root)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'test_evaluator'):
        cfg[key] = demo[key]
    model_cfg = tiny_model_cfg(cfg, serve=False)
    if kind == 'seg':
        model_cfg.data_preprocessor.size = (128, 128)
    set_key(model_cfg, 'num_classes', DEMO_CLASSES[kind])
    set_key(model_cfg, 'score_thr', 0.0)
    _shrink(cfg, model_cfg)
    serve_pretrained(scope, model_cfg)
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = build_model(cfg, model_cfg)
        model.init_weights()
        assert_pretrained_loaded(model, model_cfg)
        reference = copy.deepcopy(model)
        count = replace_mmcv_msda(model)
        assert (count > 0) == CONFIGS[name]['msda'], count
        data = _batch(cfg, 'train_dataloader')
        losses = []
        for m in (reference, model):
            m.train()
            torch.manual_seed(1)  # DINO's denoising queries, Mask2Former's point sampling
            processed = m.data_preprocessor(copy.deepcopy(data), True)
            losses.append(m(**processed, mode='loss'))
        assert sorted(losses[0]) == sorted(losses[1])
        for key, value in losses[0].items():
            if 'loss' in key:
                other = losses[1][key]
                assert torch.allclose(value, other, rtol=1e-4, atol=1e-5), (key, value, other)
        del reference

        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        log_vars = model.train_step(data, optim_wrapper)
        assert torch.isfinite(log_vars['loss'])

        model.eval()
        test_loader = Runner.build_dataloader(cfg.test_dataloader)
        evaluator = Evaluator(cfg.test_evaluator)
        evaluator.dataset_meta = test_loader.dataset.metainfo
        with torch.no_grad():
            for batch in test_loader:
                evaluator.process(model.test_step(batch), batch)
        metrics = evaluator.evaluate(len(test_loader.dataset))
    assert METRIC_KEYS[kind] in metrics, metrics
