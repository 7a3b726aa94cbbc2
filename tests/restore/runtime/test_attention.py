"""The biased attention: the per-forward context's masks (uniform first-layer sizes, size-only bias in
decoding) and the registered attention function adding the bias (DESIGN §2 step 4, §4)."""

import math

import pytest
import torch

from restore.rectify.calibration import RopeSpec, relative_decay
from restore.runtime.attention import ForwardContext
from restore.runtime.layout import Layout


def _rope(sections=None):
    inv = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    return RopeSpec.sectioned(inv, sections) if sections else RopeSpec.one_d(inv)


def _layout(log_size, log_first, start_layer=0):
    b, length = log_size.shape
    return Layout(
        valid=torch.ones(b, length, dtype=torch.bool),
        positions=torch.arange(length)[None, :, None].expand(b, -1, 1).clone(),
        log_size=log_size,
        log_first=log_first,
        calibrated=log_size != 0,
        distance=torch.tensor([True] * b),
        c=torch.full((b,), 2.0),
        start_layer=start_layer,
    )


def test_context_mask_uses_uniform_sizes_in_first_layer_and_size_only_in_decode():
    rope = _rope()
    log_size = torch.tensor([[0.0, math.log(3), math.log(1.5), 0.0]])
    log_first = torch.tensor([[0.0, math.log(2), math.log(2), 0.0]])
    ctx = ForwardContext(rope, _layout(log_size, log_first))
    first = ctx.mask(0, 4, 4, torch.float32)[0, 0]
    later = ctx.mask(1, 4, 4, torch.float32)[0, 0]
    # Entry (3, 1): query at position 3 on a visual key at 1.
    decay = relative_decay(rope, torch.tensor([[2]])).item()
    assert first[3, 1].item() == pytest.approx(math.log(2) + math.log(2 - decay), abs=1e-5)
    assert later[3, 1].item() == pytest.approx(math.log(3) + math.log(2 - decay), abs=1e-5)
    assert first[1, 2].item() == torch.finfo(torch.float32).min  # causal
    ctx.begin_decode(torch.tensor([[[4]]]))
    dec = ctx.mask(1, 1, 5, torch.float32)[0, 0, 0]
    assert dec.tolist() == pytest.approx([0.0, math.log(3), math.log(1.5), 0.0, 0.0], abs=1e-6)


def test_attention_function_adds_the_bias():
    from restore.runtime.attention import active, restore_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    log_size = torch.tensor([[0.0, math.log(4), 0.0, 0.0]])
    ctx = ForwardContext(_rope(), _layout(log_size, log_size))

    class Mod(torch.nn.Module):
        layer_idx = 1
        num_key_value_groups = 1
        is_causal = True

    with active(ctx):
        out, _ = restore_attention(Mod(), q, k, v, None, scaling=8**-0.5)
    mask = ctx.mask(1, 4, 4, torch.float32)
    ref = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5 + mask, dim=-1) @ v
    assert torch.allclose(out.transpose(1, 2), ref, atol=1e-5)
