"""The default model's architecture: stock LLaVA classes, a word-level tokenizer, a processor.

Shapes: CLIP-style tower (96 px, 4 px patches → 24×24 = 576 tokens, 3×96-d),
LLaVA's two-layer MLP projector, Llama decoder (4×160-d, RoPE). The chat
template is LLaVA's order: images, then the question (`user : <image>… Q assistant :`),
and multi-turn conversations continue it (`… A </s> user : Q2 assistant :`).
"""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from restore.archs import llava_processor
from restore.zoo import tokenizer, world
from restore.zoo.tokenizer import SPECIALS, WORDS  # noqa: F401  (re-exported: the vocabulary)

# The world model has no system prompt: system messages are left out (their words are not the world's).
# A text that carries its own '<image>' placeholders and no image parts renders as it is, placeholders in place.
CHAT_TEMPLATE = (
    "{% for message in messages if message['role'] != 'system' %}{{ message['role'] }} :"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for c in message['content'] if c['type'] != 'text' %} <image>{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %} {{ c['text'] }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %} </s>{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)

# Head width and RoPE base decide how many rotary dimensions turn slowly enough for a question token
# to match patches by content across the 576 positions before it: at 32-d heads and base 10^4 only
# ~10 dimensions do, and training stalled at answering from the right kind of patch but not the named one.
SHAPE = dict(vision_width=96, vision_depth=3, vision_heads=4, vision_mlp=256,
             text_width=192, text_depth=4, text_heads=4, text_mlp=512, rope_theta=1e6)


def build(seed: int = 0, shape: dict | None = None):
    """(model, processor) with fresh weights: the starting point of `python -m restore.zoo.train`.

    `shape` overrides entries of `SHAPE` (e.g. a wider or deeper decoder)."""
    import torch

    torch.manual_seed(seed)
    tok = tokenizer.build()
    tok.chat_template = CHAT_TEMPLATE
    unknown = set(shape or {}) - set(SHAPE)
    if unknown:
        raise ValueError(f"unknown shape keys {sorted(unknown)}; known: {', '.join(SHAPE)}")
    s = {**SHAPE, **(shape or {})}
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=s["text_width"], intermediate_size=s["text_mlp"],
        num_hidden_layers=s["text_depth"], num_attention_heads=s["text_heads"], num_key_value_heads=s["text_heads"],
        max_position_embeddings=8192, rope_theta=s["rope_theta"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        image_size=world.SIZE, patch_size=world.PATCH, hidden_size=s["vision_width"],
        intermediate_size=s["vision_mlp"], num_hidden_layers=s["vision_depth"], num_attention_heads=s["vision_heads"],
        projection_dim=s["vision_width"],
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    return model, processor(tok)


def processor(tokenizer) -> LlavaProcessor:
    return llava_processor(tokenizer, world.SIZE, world.PATCH, CHAT_TEMPLATE)


def chat_prompt(proc: LlavaProcessor, question: str, num_images: int) -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    return proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)

