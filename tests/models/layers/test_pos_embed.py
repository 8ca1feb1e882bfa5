"""Position-embedding resizing and the query-dependent bias path of Attention."""
import pytest
import torch
import torch.nn.functional as F

from crossformer_mm.models.layers import (Attention, decomposed_rel_pos_bias, get_rel_pos,
                                          resize_abs_pos_embed, resize_rel_pos_bias_table,
                                          window_partition)


def test_resize_abs_pos_embed_like_mmseg() -> None:
    pos = torch.randn(1, 1 + 4 * 4, 8)
    out = resize_abs_pos_embed(pos, (5, 7), (4, 4), num_prefix_tokens=1)
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(5, 7), mode='bicubic', align_corners=False)
    assert out.shape == (1, 36, 8)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert torch.allclose(out[:, 1:], ref.flatten(2).transpose(1, 2))
    assert resize_abs_pos_embed(pos, (4, 4)) is pos
    with pytest.raises(ValueError, match='not a square'):
        resize_abs_pos_embed(torch.randn(1, 1 + 12, 8), (4, 4))


def test_resize_rel_pos_bias_table() -> None:
    table = torch.randn(13 * 13, 3)
    out = resize_rel_pos_bias_table(table, (12, 12))
    assert out.shape == (23 * 23, 3)
    assert resize_rel_pos_bias_table(table, (7, 7)) is table
    const = torch.ones(13 * 13, 2)
    assert torch.allclose(resize_rel_pos_bias_table(const, (12, 12)), torch.ones(23 * 23, 2),
                          atol=1e-5)


def test_get_rel_pos_interpolates() -> None:
    rel = torch.randn(7, 4)  # for size 4
    assert get_rel_pos(4, 4, rel).shape == (4, 4, 4)
    assert torch.equal(get_rel_pos(4, 4, rel)[0, 0], rel[3])
    assert get_rel_pos(6, 6, rel).shape == (6, 6, 4)


@pytest.mark.parametrize('fused', [True, False])
def test_attention_bias_from_q(fused: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2, fused_attn=fused).eval()
    x = torch.randn(2, 6, 16)
    rh, rw = torch.randn(3, 8), torch.randn(5, 8)

    def fn(q):
        return decomposed_rel_pos_bias(q, rh, rw, (2, 3), (2, 3))

    out = attn(x, bias_from_q=fn)
    qkv = attn.qkv(x).reshape(2, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1) + fn(q)
    ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 16)
    assert torch.allclose(out, attn.proj(ref), atol=1e-5)


def test_attention_bias_from_q_with_group_mask() -> None:
    """A per-group mask and a per-sample bias combine (windows of a 2-image batch)."""
    torch.manual_seed(0)
    attn = Attention(8, 2).eval()
    x = torch.randn(2, 4, 4, 8)
    groups, _ = window_partition(x, 2)  # 2 images x 4 windows
    bias = torch.randn(2, 4, 4)  # (heads, N, N)
    mask = torch.rand(4, 4, 4) > 0.7
    mask[:, torch.arange(4), torch.arange(4)] = False
    extra = torch.randn(8, 2, 4, 4)
    out = attn(groups, attn_bias=bias, attn_mask=mask, bias_from_q=lambda q: extra)
    attn.fused_attn = False
    full = bias + extra.view(2, 4, 2, 4, 4) + torch.where(mask, -1e9, 0.0)[None, :, None]
    ref = attn(groups, bias_from_q=lambda q: full.reshape(8, 2, 4, 4))
    assert torch.allclose(out, ref, atol=1e-5)
