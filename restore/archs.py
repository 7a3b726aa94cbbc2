"""Named architectures with random weights, built from configs without any download.

Weights do not matter for speed measurements or for exercising the system end
to end; shapes do. `random:NAME` anywhere a model path is accepted builds one.
The word-level tokenizer makes a working offline processor.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = (
    "what is in the image describe a photo of red green blue yellow circle square triangle star "
    "how many are there left right top bottom is it yes no one two three four five "
    "where color shape small large frame video moving up down answer question user assistant : ? . ,"
).split()


def word_tokenizer(words: list[str] = WORDS, specials: list[str] = SPECIALS) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": specials[4:]})
    return fast


# name -> (vision image size, patch, vision width/depth/heads/mlp, text width/depth/heads/kv heads/mlp)
LLAVA_SHAPES = {
    "llava-tiny": dict(image=24, patch=4, vw=32, vd=2, vh=4, vm=64, tw=64, td=2, th=4, tkv=4, tm=128),
    "llava-1.5-7b": dict(image=336, patch=14, vw=1024, vd=24, vh=16, vm=4096, tw=4096, td=32, th=32, tkv=32, tm=11008),
    "llava-1.5-13b": dict(image=336, patch=14, vw=1024, vd=24, vh=16, vm=4096, tw=5120, td=40, th=40, tkv=40, tm=13824),
}


def random_llava(name: str, scale: float = 1.0, seed: int = 0, dtype=torch.float32):
    """(model, processor) of LLaVA architecture `name`; `scale` shrinks widths and depths together."""
    try:
        s = LLAVA_SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(LLAVA_SHAPES))}") from None

    def width(x: int, heads: int) -> int:
        return max(heads, round(x * scale / heads) * heads)

    torch.manual_seed(seed)
    tok = word_tokenizer()
    text = LlamaConfig(
        vocab_size=max(len(tok), 64), hidden_size=width(s["tw"], s["th"]), intermediate_size=width(s["tm"], 1),
        num_hidden_layers=max(1, round(s["td"] * scale)), num_attention_heads=s["th"], num_key_value_heads=s["tkv"],
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    vision = CLIPVisionConfig(
        image_size=s["image"], patch_size=s["patch"], hidden_size=width(s["vw"], s["vh"]),
        intermediate_size=width(s["vm"], 1), num_hidden_layers=max(2, round(s["vd"] * scale)),
        num_attention_heads=s["vh"], projection_dim=width(s["vw"], s["vh"]),
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model, llava_processor(tok, s["image"], s["patch"])


def llava_processor(tokenizer, image_size: int, patch: int, chat_template: str | None = None) -> LlavaProcessor:
    """A LLaVA processor for square `image_size` inputs (mean/std 0.5), CLS dropped, '<image>' placeholders."""
    improc = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    return LlavaProcessor(
        image_processor=improc, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token="<image>", chat_template=chat_template,
    )
