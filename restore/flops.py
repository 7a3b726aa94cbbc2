"""Decoder FLOPs from a model's shapes: the cost model behind the speed benchmark's bound and the
engine's estimate of what a reduced prefill saved (prefill time is modelled as proportional to it)."""

from __future__ import annotations


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg.text_config


def text_shapes(model) -> dict:
    tc = _text_config(model)
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    return {
        "hidden": tc.hidden_size,
        "intermediate": tc.intermediate_size,
        "layers": tc.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(tc, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
    }


def decoder_layer_flops(n: int, s: dict) -> float:
    """One SwiGLU decoder layer on n tokens: q,o (2nd^2) + k,v (2n d d_kv) + attention (2n^2 d) + MLP (3ndm).

    Multiply-accumulates are counted once, as in the usual 4nd^2 + 2n^2d + 3ndm; only ratios are used.
    """
    d, m = s["hidden"], s["intermediate"]
    d_attn = s["heads"] * s["head_dim"]
    d_kv = s["kv_heads"] * s["head_dim"]
    return 2 * n * d * d_attn + 2 * n * d * d_kv + 2 * n * n * d_attn + 3 * n * d * m


def prefill_flops(lengths: list[int], s: dict) -> float:
    """Decoder FLOPs of one prefill whose layer l runs on lengths[l] tokens."""
    return sum(decoder_layer_flops(n, s) for n in lengths)
