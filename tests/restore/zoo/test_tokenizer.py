"""The default model's tokenizer: natural phrasings normalised to the world's words, canonical text untouched."""

import json
import random

import pytest
from transformers import AutoProcessor

from restore.archs import word_tokenizer
from restore.hub import DEFAULT_MODEL_DIR
from restore.zoo import architecture, tokenizer, world
from restore.zoo.train import sample_batch
from tests.helpers.scenes import HAND
from tests.restore.zoo import phrasings
from tests.restore.zoo.phrasings import CLIP_PHRASINGS, IMAGE_PHRASINGS, clip_fields, filled, scene_fields


@pytest.fixture(scope="module")
def shipped():
    return AutoProcessor.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def plain():
    """The tokenizer the shipped weights were trained with: the same words, split at spaces, nothing else."""
    return word_tokenizer(tokenizer.WORDS, tokenizer.SPECIALS)


def canonical_texts() -> list[str]:
    """Everything the model was trained on or is evaluated with, as text: questions, answers, captions and
    whole multi-turn conversations in the chat template, with the image placeholders expanded."""
    texts = []
    for seed in (0, 4321, 10_000):
        for it in world.benchmark(seed, 12):
            texts += [it.question, it.answer]
    _, processor = architecture.build(0)
    rng = random.Random("tokenizer-test")
    for clip in (False, True):
        for conv in sample_batch(rng, clip, images=4, turns=6):
            messages = []
            for i, t in enumerate(conv.turns):
                content = [{"type": "image"}] * (len(conv.images) if i == 0 else 0) + [{"type": "text", "text": t.question}]
                messages += [{"role": "user", "content": content}, {"role": "assistant", "content": t.answer}]
            whole = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            texts.append(whole.replace("<image>", "<image>" * 576))
    return texts


def test_canonical_text_keeps_its_token_ids(shipped, plain):
    texts = canonical_texts()
    assert len(texts) > 200
    tok = shipped.tokenizer
    for text in texts:
        want = plain(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in want, text
        assert tok(text, add_special_tokens=False)["input_ids"] == want, text


def test_shipped_normaliser_is_the_code_one(shipped):
    on_disk = json.loads((DEFAULT_MODEL_DIR / "tokenizer.json").read_text())
    built = json.loads(tokenizer.build().backend_tokenizer.to_str())
    assert on_disk["normalizer"] == built["normalizer"] and on_disk["pre_tokenizer"] == built["pre_tokenizer"]
    assert on_disk["model"]["vocab"] == built["model"]["vocab"]
    # the processor the engine loads carries it too
    assert shipped.tokenizer.backend_tokenizer.normalizer is not None
    _, processor = architecture.build(0)  # and so does every retrain
    assert json.loads(processor.tokenizer.backend_tokenizer.to_str())["normalizer"] == on_disk["normalizer"]


def test_natural_phrasings_read_as_the_canonical_questions(shipped, plain):
    pairs = [p for s in [HAND, *phrasings.scenes(3)] for p in filled(IMAGE_PHRASINGS, scene_fields(s))]
    pairs += filled(CLIP_PHRASINGS, clip_fields(world.random_clip(random.Random(0))))
    assert len(pairs) > 80
    for natural, canonical in pairs:
        assert tokenizer.normalise(natural) == canonical, natural
        ids = shipped.tokenizer(natural, add_special_tokens=False)["input_ids"]
        assert ids == plain(canonical, add_special_tokens=False)["input_ids"], natural


def test_normaliser_keeps_special_tokens_and_drops_unknown_words(shipped):
    tok = shipped.tokenizer
    ids = tok("<image><image> Describe the image. </s>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<image>", "<image>", "describe", "the", "image", ".", "</s>"]
    assert tokenizer.normalise("Hello, is there a red circle here?!") == ", is there a red circle ? ."
    assert tokenizer.normalise("WHERE IS THE RED CIRCLE") == "where is the red circle"
    assert tokenizer.normalise("top-left") == "top left"
    assert tok.unk_token_id not in tok("Ünïcode — “quotes” & symbols #42?", add_special_tokens=False)["input_ids"]


def test_rewriting_a_model_folder_is_idempotent_and_checks_the_vocabulary(tmp_path):
    target = tmp_path / "tokenizer.json"
    target.write_text((DEFAULT_MODEL_DIR / "tokenizer.json").read_text())
    tokenizer.rewrite_model_dir(tmp_path)
    assert target.read_text() == (DEFAULT_MODEL_DIR / "tokenizer.json").read_text()
    word_tokenizer(["just", "two"]).backend_tokenizer.save(str(target))
    with pytest.raises(ValueError, match="vocabulary is not the world's"):
        tokenizer.rewrite_model_dir(tmp_path)
