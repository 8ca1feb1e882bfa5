"""Position biases: indices against the formula, DPB against a direct per-pair evaluation."""
import pytest
import torch

from crossformer_mm.models.layers import (DynamicPosBias, RelativePositionBias, relative_offsets,
                                          relative_position_index)


@pytest.mark.parametrize('gh,gw', [(7, 7), (3, 5), (1, 4)])
def test_index_formula(gh, gw):
    idx = relative_position_index((gh, gw))
    offsets = relative_offsets((gh, gw))
    assert offsets.shape == ((2 * gh - 1) * (2 * gw - 1), 2)
    for i in range(gh * gw):
        for j in range(gh * gw):
            dh, dw = i // gw - j // gw, i % gw - j % gw
            assert offsets[idx[i, j]].tolist() == [dh, dw]


def test_indices_built_once():
    assert relative_position_index(6) is relative_position_index((6, 6))
    assert relative_offsets(6) is relative_offsets((6, 6))


@pytest.mark.parametrize('residual', [False, True])
def test_dpb_matches_direct_evaluation(residual):
    torch.manual_seed(0)
    dpb = DynamicPosBias(6, 3, residual=residual).double()
    gh, gw = 3, 4
    bias = dpb((gh, gw))
    assert bias.shape == (3, 12, 12) and bias.is_contiguous()
    for i in range(12):
        for j in range(12):
            off = torch.tensor([[i // gw - j // gw, i % gw - j % gw]], dtype=torch.float64)
            p = dpb.pos_proj(off)
            if residual:
                p = p + dpb.pos1(p)
                p = p + dpb.pos2(p)
                p = dpb.pos3(p)
            else:
                p = dpb.pos3(dpb.pos2(dpb.pos1(p)))
            torch.testing.assert_close(bias[:, i, j], p[0], atol=1e-12, rtol=0)


def test_dpb_param_names_and_count():
    dpb = DynamicPosBias(6, 3)  # CrossFormer-S stage 1: dim 96 -> (96 // 4) // 4 = 6
    names = set(dpb.state_dict())
    assert {'pos_proj.weight', 'pos1.0.weight', 'pos1.2.weight', 'pos3.2.bias'} <= names
    assert sum(p.numel() for p in dpb.parameters()) == 18 + 3 * 12 + 2 * 42 + 21


def test_relative_position_bias_swin_layout():
    rpb = RelativePositionBias(7, 4)
    assert set(rpb.state_dict()) == {'relative_position_bias_table', 'relative_position_index'}
    assert rpb.relative_position_bias_table.shape == (169, 4)
    out = rpb()
    assert out.shape == (4, 49, 49)
    # diagonal = zero offset = row 84 of the table
    torch.testing.assert_close(out[:, 0, 0], rpb.relative_position_bias_table[84])
    assert 'relative_position_index' not in RelativePositionBias(7, 4, False).state_dict()
