"""tools/analysis_tools/get_flops.py: the SDPA and MSDA FLOP handles, and the paper's count."""
import sys
from pathlib import Path

import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
from get_flops import add_op_handles, complexity  # noqa: E402

from crossformer_mm.ops import ms_deform_attn  # noqa: E402


class MSDA(nn.Module):
    def forward(self, value, shapes, start, loc, weights):
        return ms_deform_attn(value, shapes, start, loc, weights)


def test_msda_handle_counts_cost_model():
    b, q, heads, dims, points = 2, 5, 4, 8, 3
    shapes = torch.tensor([[6, 7], [3, 4]])
    start = torch.tensor([0, 42])
    levels, keys = 2, 42 + 12
    args = (torch.randn(b, keys, heads, dims), shapes, start,
            torch.rand(b, q, heads, levels, points, 2),
            torch.rand(b, q, heads, levels, points).softmax(-1))
    analyzer = add_op_handles(FlopAnalyzer(MSDA(), args))
    analyzer.unsupported_ops_warnings(False)
    assert analyzer.total() == 5 * b * q * heads * dims * levels * points


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return nn.functional.scaled_dot_product_attention(q, k, v)


def test_sdpa_handle_matches_explicit_matmuls():
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 16)
    analyzer = add_op_handles(FlopAnalyzer(SDPA(), (q, k, v)))
    assert analyzer.total() == 2 * 3 * 10 * 12 * (8 + 16)


@pytest.mark.slow
def test_retinanet_crossformer_s_matches_paper():
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / 'configs/retinanet/retinanet_crossformer-s_fpn_1x_coco.py'))
    result = complexity(cfg, (800, 1280))
    assert abs(result['params'] / 1e6 - 40.8) < 0.1  # paper: 40.8M
    assert abs(result['flops'] / 1e9 - 282.0) < 282.0 * 0.01  # paper: 282.0G at 1280x800


def test_by_module_depth(capsys):
    from get_flops import main
    cfg = str(ROOT / 'configs/demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py')
    assert main([cfg, '--shape', '64', '--by-module', '2']) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.startswith('  ')]
    assert 'backbone.layers' in rows and 'backbone.patch_embed' in rows
    assert all(row.count('.') == 1 for row in rows)
    with pytest.raises(SystemExit):
        main([cfg, '--by-module', '0'])
