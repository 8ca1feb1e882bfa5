"""``FusedAdamW``: torch's AdamW, fused where the kernel exists, the same update either way."""
import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from crossformer_mm.engine.optimizers import fused_adamw, fused_supported


@pytest.mark.parametrize('device, version, expected', [
    ('cuda', '2.1.2+cu121', True), ('cpu', '2.1.2', False), ('cpu', '2.3.1', False),
    ('cpu', '2.4.0', True), ('cpu', '2.14.1+cu130', True), ('meta', '2.14.1', False)])
def test_fused_supported(device, version, expected):
    assert fused_supported(torch.device(device), version) is expected


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))


def _train(model: torch.nn.Module, optim: torch.optim.Optimizer, steps: int = 4) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optim.zero_grad()
        model(torch.randn(2, 3, 8, 8, generator=gen)).square().mean().backward()
        optim.step()


def test_same_update_as_adamw_and_fused_on_this_cpu():
    model = _model()
    plain = copy.deepcopy(model)
    start = copy.deepcopy(model.state_dict())
    groups = [dict(params=[model[0].weight, model[3].weight]),
              dict(params=[model[0].bias, model[1].weight, model[1].bias, model[3].bias],
                   weight_decay=0.0)]
    optim = fused_adamw(groups, lr=1e-2, weight_decay=0.05)
    assert type(optim) is torch.optim.AdamW
    assert optim.defaults['fused'] is fused_supported(torch.device('cpu'))
    reference = torch.optim.AdamW(
        [dict(params=[plain[0].weight, plain[3].weight]),
         dict(params=[plain[0].bias, plain[1].weight, plain[1].bias, plain[3].bias],
              weight_decay=0.0)], lr=1e-2, weight_decay=0.05)
    _train(model, optim)
    _train(plain, reference)
    for name, p in model.named_parameters():
        assert not torch.equal(p, start[name]), name
        torch.testing.assert_close(p, plain.get_parameter(name), rtol=1e-5, atol=1e-6)
    # the state is AdamW's: it loads into the per-tensor implementation
    reference.load_state_dict(optim.state_dict())


def test_plain_adamw_where_the_torch_has_no_cpu_kernel(monkeypatch):
    monkeypatch.setattr(torch, '__version__', '2.1.2+cu121')
    optim = fused_adamw(_model().parameters(), lr=1e-3)
    assert not optim.defaults['fused']


def test_refuses_choosing_the_implementation():
    with pytest.raises(ValueError, match='foreach'):
        fused_adamw(_model().parameters(), lr=1e-3, foreach=True)


def test_built_by_name_in_a_toolbox_scope():
    import crossformer_mm  # noqa: F401  (registers FusedAdamW)
    with DefaultScope.overwrite_default_scope('mmdet'):
        wrapper = build_optim_wrapper(_model(), dict(
            type='OptimWrapper', optimizer=dict(type='FusedAdamW', lr=1e-3, weight_decay=0.05),
            paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0)))
    optim = wrapper.optimizer
    assert type(optim) is torch.optim.AdamW and optim.defaults['fused']
    assert [g['weight_decay'] for g in optim.param_groups].count(0.0) == 4
