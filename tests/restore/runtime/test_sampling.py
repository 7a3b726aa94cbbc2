"""Incremental detokenization and stop strings (restore.runtime.sampling): text deltas add up to the full
decode, characters split over byte-level tokens are held back until whole, stops are found across deltas."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from restore.config import GenerationConfig
from restore.runtime.sampling import Detokenizer, Sampler, StopWatch

TEXT = ["the cat sat on the mat", "naïve café crème brûlée", "🙂 emoji 🚀 rockets 日本語 text"]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["</s>"])
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainer)  # multi-byte characters stay split
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def test_deltas_add_up_to_the_decoded_text_and_hold_back_partial_characters():
    tok = byte_level_tokenizer()
    for text in TEXT:
        ids = tok.encode(text) + [tok.eos_token_id]
        detok = Detokenizer(tok)
        deltas = [detok.push(i) for i in ids]
        assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == text
        assert not any("\ufffd" in d for d in deltas)
    rocket = tok.encode("🚀")
    assert len(rocket) > 1  # one character over several byte tokens: nothing until its last byte
    detok = Detokenizer(tok)
    assert [detok.push(i) for i in rocket] == [""] * (len(rocket) - 1) + ["🚀"]


def test_stop_strings_are_found_across_deltas_reading_each_once():
    watch = StopWatch(["END", "x"])
    assert [watch.hit(d) for d in ["ab", "cE", "N"]] == [False, False, False]
    assert watch.hit("D more")  # 'E' + 'N' + 'D' over three deltas
    assert len(watch.tail) == 2
    assert StopWatch(["x"]).hit("..x") and not StopWatch([]).hit("anything")


def test_sampler_mixes_greedy_seeded_and_per_row_settings():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    configs = [GenerationConfig(), GenerationConfig(do_sample=True, top_k=1),
               GenerationConfig(do_sample=True, temperature=0.8, top_p=0.5, seed=7),
               GenerationConfig(do_sample=True, top_p=1e-6)]
    gens = [None, None, torch.Generator().manual_seed(7), None]
    out = Sampler(configs, gens, "cpu").choose(logits)
    greedy = logits.argmax(-1)
    # greedy, top-k 1 and a tiny nucleus all keep only the argmax
    assert out[0] == greedy[0] and out[1] == greedy[1] and out[3] == greedy[3]
    alone = Sampler([configs[2]], [torch.Generator().manual_seed(7)], "cpu").choose(logits[2:3])
    assert out[2] == alone[0]
