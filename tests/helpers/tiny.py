"""Tiny random models built from configs, as transformers' own ModelTesters do; no network."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from restore import ReductionConfig, RestoreConfig, archs
from restore.methods import get_method

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>", "<|image_pad|>", "<|video_pad|>",
            "<|vision_start|>", "<|vision_end|>"]


def word_tokenizer(extra_specials: list[str] | None = None) -> PreTrainedTokenizerFast:
    return archs.word_tokenizer(archs.WORDS + ["cat", "dog"], SPECIALS + (extra_specials or []))


def tiny_llava(seed: int = 0, image_size: int = 12, patch: int = 2, layers: int = 3):
    torch.manual_seed(seed)
    tok = word_tokenizer()
    text = LlamaConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model, archs.llava_processor(tok, image_size, patch)


def _chat_template(image: str, video: str) -> str:
    """A minimal chat template in the tiny vocabulary ('user :' ... 'assistant :')."""
    return (
        "{% for m in messages %}{{ m['role'] }} :{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %} " + image + "{% elif c['type'] == 'video' %} " + video +
        "{% else %} {{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )


def _without_video_processor(processor_cls):
    """`processor_cls` without a video processor.

    transformers' video processors need torchvision (no CPU build here) and a processor refuses
    `video_processor=None`; ProcessorMixin takes its sub-processors from the subclass' `__init__`
    signature, so this one has only an image processor and a tokenizer. The adapters then build the
    video tensors from the frames with the image processor's settings.
    """

    class NoVideo(processor_cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    NoVideo.__name__ = NoVideo.__qualname__ = processor_cls.__name__
    return NoVideo


def tiny_qwen2_5_vl(seed: int = 0, patch: int = 7, layers: int = 2):
    """Qwen2.5-VL with a 2-block vision tower (block 0 windowed, block 1 full attention) and M-RoPE.

    Images are resized to multiples of 2*patch px: a 56x56 image gives 8x8 patches, 4x4 = 16 merged tokens.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = word_tokenizer()
    ids = tok.convert_tokens_to_ids
    text = dict(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000, "mrope_section": [2, 1, 1]},
    )
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32, patch_size=patch,
        spatial_merge_size=2, temporal_patch_size=2, window_size=4 * patch, fullatt_block_indexes=[1],
        tokens_per_second=2, in_channels=3,
    )
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    factor = 2 * patch
    improc = Qwen2VLImageProcessorPil(
        size={"shortest_edge": (2 * factor) ** 2, "longest_edge": (8 * factor) ** 2}, patch_size=patch,
        temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    template = _chat_template(
        "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    )
    processor = _without_video_processor(Qwen2_5_VLProcessor)(
        image_processor=improc, tokenizer=tok, chat_template=template
    )
    return model, processor


def tiny_onevision(seed: int = 0, image_size: int = 16, patch: int = 4, layers: int = 2):
    """LLaVA-OneVision with a SigLIP tower: 4x4 patches per 16 px crop, anyres tiles up to 32x32 px."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    tok = word_tokenizer()
    text = Qwen2Config(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    vision = SiglipVisionConfig(
        image_size=image_size, patch_size=patch, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, vision_use_head=False,
    )
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size],
                 [2 * image_size, 2 * image_size]]
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_select_strategy="full",
        vision_feature_layer=-1, image_grid_pinpoints=pinpoints, vision_aspect_ratio="anyres_max_9",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    improc = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = _without_video_processor(LlavaOnevisionProcessor)(
        image_processor=improc, tokenizer=tok, num_image_tokens=(image_size // patch) ** 2,
        vision_feature_select_strategy="full", image_token="<image>", video_token="<video>",
        vision_aspect_ratio="anyres_max_9", chat_template=_chat_template("<image>", "<video>"),
    )
    return model, processor


QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"

FAMILIES = {
    # factory, image placeholder, video placeholder as written in prompts
    "qwen2_5_vl": (tiny_qwen2_5_vl, QWEN_IMAGE, QWEN_VIDEO),
    "llava_onevision": (tiny_onevision, "<image>", "<video>"),
}


def tiny_reduction(method: str, budget, restore_on: bool) -> ReductionConfig:
    """The method at its defaults, with in-LLM layers moved inside the 2-layer tiny decoders."""
    kw = {}
    if get_method(method).stage == "llm":
        staged = "layers" in get_method(method).Options.model_fields  # methods that set stages by option
        kw = {"options": {"layers": [1]}} if staged else {"layer": 1}
    return ReductionConfig(method=method, budget=budget, restore=RestoreConfig(enabled=restore_on), **kw)
