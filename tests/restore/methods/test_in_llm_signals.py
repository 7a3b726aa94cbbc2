"""What in-LLM methods read at layer K-1 (the last prompt token's row, the layer's keys, the text tokens' rows),
checked against full attention, computed only when asked for; SparseVLM's stages through the engine."""

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from restore import Engine, ReductionConfig, Request, RestoreConfig
from restore.plan import Plan
from restore.runtime.attention import ForwardContext
from tests.helpers.images import make_image
from tests.helpers.tiny import tiny_reduction


@pytest.fixture(scope="module")
def engine(llava):
    return Engine(*llava)


def _spy(monkeypatch):
    """Record what layer K-1 saw (query, keys, mask) and kept, and what each stage's `Plan.apply` was given."""
    seen, records, applied = {}, {}, []
    record, apply = ForwardContext.record, Plan.apply

    def spy_record(self, layer, query, key, mask, scaling, groups):
        seen[layer] = (query.detach().clone(), key.detach().clone(), mask.detach().clone(), scaling, groups)
        record(self, layer, query, key, mask, scaling, groups)
        records[layer] = self.records[layer]

    def spy_apply(self, seq, importances, layer=0, layer_keys=None, text_attention=None):
        applied.append((seq, importances, layer_keys, text_attention))
        return apply(self, seq, importances, layer, layer_keys=layer_keys, text_attention=text_attention)

    monkeypatch.setattr(ForwardContext, "record", spy_record)
    monkeypatch.setattr(Plan, "apply", spy_apply)
    return seen, records, applied


def test_text_rows_and_keys_are_those_of_full_attention(engine, monkeypatch):
    seen, records, applied = _spy(monkeypatch)
    # Different lengths (left padding), two images in the first request, one SparseVLM and one DART request.
    requests = [
        Request("<image> what <image> is in the image ?", [make_image(1), make_image(2)],
                reduction=tiny_reduction("sparsevlm", 5, True)),
        Request("<image> how many", [make_image(3)], reduction=tiny_reduction("dart", 4, False)),
    ]
    engine.score(requests)
    query, key, mask, scaling, groups = seen[0]
    rec = records[0]
    assert rec.row is None  # neither method reads the last token's row
    full = torch.softmax((query @ repeat_kv(key, groups).transpose(-1, -2)) * scaling + mask, -1).mean(1)  # (B, L, L)
    length = full.shape[1]
    for b, (seq, _, layer_keys, text) in enumerate(applied):
        offset = length - seq.length
        visual = torch.zeros(seq.length, dtype=torch.bool)
        for s in seq.spans:
            visual[s.start : s.end] = True
        keys_b = key[b].transpose(0, 1).reshape(length, -1)
        for i, s in enumerate(seq.spans):
            cols = slice(offset + s.start, offset + s.end)
            assert torch.allclose(layer_keys[i], keys_b[cols])
            after = [offset + t for t in range(s.end, seq.length) if not visual[t]]
            assert text[i].shape == (len(after), s.length)
            assert torch.allclose(text[i], full[b, after][:, cols], atol=1e-6)
    assert len(applied[0][3][0]) > len(applied[0][3][1])  # the first image has more text after it


def test_only_what_the_methods_need_is_recorded(engine, monkeypatch):
    _, records, _ = _spy(monkeypatch)
    engine.score([Request("<image> what is in the image ?", [make_image(4)], reduction=tiny_reduction("fastv", 5, True))])
    assert records[0].row is not None and records[0].keys is None and records[0].text is None
    engine.score([Request("<image> what is in the image ?", [make_image(4)], reduction=tiny_reduction("dart", 5, True))])
    assert records[0].row is None and records[0].keys is not None and records[0].text is None


@pytest.mark.parametrize("restore_on", [True, False])
def test_sparsevlm_stages_keep_budget_deterministic_and_batch_invariant(engine, restore_on):
    def red(budget):
        return ReductionConfig(method="sparsevlm", budget=budget, options={"layers": [1, 2], "recycle_ratio": 0.3},
                               restore=RestoreConfig(enabled=restore_on))

    requests = [Request("<image> what is in the image ?", [make_image(30)], reduction=red(6)),
                Request("<image> <image> how many", [make_image(31), make_image(32)], reduction=red(4)),
                Request("<image> is it red ?", [make_image(33)], reduction=tiny_reduction("fastv", 9, restore_on))]
    first = engine.generate(requests, max_new_tokens=4)
    assert [r.token_ids for r in engine.generate(requests, max_new_tokens=4)] == [r.token_ids for r in first]
    assert [r.stats.kept_tokens for r in first] == [6, 8, 9]
    # Two stages: 36 tokens, then round(36 * (6/36)^(1/2)) = 15 from layer 1, 6 from layer 2 (plus 6 text tokens).
    assert first[0].stats.layer_tokens == [42, 21, 12]
    for request, result in zip(requests, first):
        assert engine.generate([request], max_new_tokens=4)[0].token_ids == result.token_ids
