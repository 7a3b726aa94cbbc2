"""The flex_attention score_mod gives what the dense mask + SDPA give (restore.runtime.flex): prefill with
the size and distance terms, 1-D and sectioned (M-)RoPE, left padding, the first layer's sizes, decoding."""

import math

import pytest
import torch

from restore.rectify.calibration import RopeSpec
from restore.runtime.attention import ForwardContext
from restore.runtime.flex import bias_tables, flex_biased_attention
from restore.runtime.layout import Layout


def _layout(axes: int, seed: int) -> Layout:
    g = torch.Generator().manual_seed(seed)
    b, length = 3, 12
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[1, :3] = False  # left padding
    valid[2, :1] = False
    pos = torch.cumsum(valid.long(), 1) - 1
    positions = pos[..., None].repeat(1, 1, axes)
    if axes == 3:  # an image grid on the visual keys: the height and width axes move inside it
        positions[:, 3:9, 1] += torch.tensor([0, 0, 1, 1, 2, 2])
        positions[:, 3:9, 2] += torch.tensor([0, 1, 0, 1, 0, 1])
    calibrated = torch.zeros(b, length, dtype=torch.bool)
    calibrated[:, 3:9] = True
    calibrated &= valid
    sizes = torch.randint(1, 6, (b, length), generator=g).float()
    log_size = torch.where(calibrated, sizes.log(), 0.0)
    log_first = torch.where(calibrated, torch.full_like(sizes, math.log(2.0)), 0.0)
    return Layout(valid=valid, positions=positions, log_size=log_size, log_first=log_first, calibrated=calibrated,
                  distance=torch.tensor([True, False, True]), c=torch.tensor([2.0, 2.0, 3.0]))


def _rope(axes: int) -> RopeSpec:
    inv = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    return RopeSpec.sectioned(inv, [2, 3, 3]) if axes == 3 else RopeSpec.one_d(inv)


def _dense(rope, lay, layer, q, k, v, ctx):
    mask = ctx.mask(layer, q.shape[2], k.shape[2], q.dtype)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=16**-0.5)


@pytest.mark.parametrize("axes", [1, 3])
@pytest.mark.parametrize("first", [True, False])
def test_prefill_matches_the_dense_mask(axes, first):
    torch.manual_seed(axes)
    rope, lay = _rope(axes), _layout(axes, seed=axes)
    q, k, v = (torch.randn(3, 2, 12, 16) for _ in range(3))
    ctx = ForwardContext(rope, lay)
    layer = 0 if first else 1
    ref = _dense(rope, lay, layer, q, k, v, ctx)
    tables = bias_tables(rope, lay, first=first, q_len=12, prefill=True)
    assert tables.decay is not None  # the distance term is on for two of the samples
    out = flex_biased_attention(q, k, v, tables, scale=16**-0.5)
    rows = lay.valid[:, None, :, None].expand_as(out)  # padded query rows attend to nothing: not compared
    assert torch.allclose(out[rows], ref[rows], atol=1e-5)


def test_grouped_query_attention_and_decoding_match():
    torch.manual_seed(3)
    rope, lay = _rope(1), _layout(1, seed=3)
    ctx = ForwardContext(rope, lay)
    ctx.begin_decode(lay.positions[:, -1:, :] + 1)
    q = torch.randn(3, 4, 1, 16)
    k, v = (torch.randn(3, 2, 13, 16) for _ in range(2))
    ref = _dense(rope, lay, 1, q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), ctx)
    tables = bias_tables(rope, lay, first=False, q_len=1, prefill=False)
    assert tables.decay is None  # decoding keeps the size term only
    out = flex_biased_attention(q, k, v, tables, scale=16**-0.5)
    assert torch.allclose(out, ref, atol=1e-5)
