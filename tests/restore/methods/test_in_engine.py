"""Every registered method through the engine, alone and under RESTORE, on a tiny LLaVA."""

import pytest
import torch

from restore import Engine, ReductionConfig, Request, RestoreConfig
from restore.methods import available
from tests.helpers.images import make_image
from tests.helpers.tiny import tiny_reduction

METHODS = [m.name for m in available() if m.name != "none"]
PROMPT = "<image> what is in the image ?"


@pytest.fixture(scope="module")
def engine(llava):
    return Engine(*llava)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("restore_on", [True, False])
def test_method_keeps_budget_is_deterministic_and_batch_invariant(engine, method, restore_on):
    def req(seed, budget):
        return Request(PROMPT, [make_image(seed)], reduction=tiny_reduction(method, budget, restore_on))

    requests = [req(20, 12), req(21, 5), Request("<image> <image> how many", [make_image(22), make_image(23)],
                reduction=tiny_reduction(method, 7, restore_on))]
    first = engine.generate(requests, max_new_tokens=4)
    again = engine.generate(requests, max_new_tokens=4)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.stats.kept_tokens for r in first] == [12, 5, 14]
    for request, result in zip(requests, first):
        assert engine.generate([request], max_new_tokens=4)[0].token_ids == result.token_ids
    if restore_on:
        # Prune-then-merge drops nothing: sizes of the reduced tokens add up to N per image.
        assert first[0].stats.size_mean * 12 == pytest.approx(36)


def test_restore_gamma_one_without_calibration_equals_plain_pruning(engine):
    image = make_image(24)
    for method in ["divprune", "fastv", "vispruner"]:
        plain = ReductionConfig(method=method, budget=8, restore=RestoreConfig(enabled=False))
        author_pos = "original" if method == "fastv" else "compact"
        neutral = ReductionConfig(
            method=method, budget=8, restore=RestoreConfig(gamma=1.0, calibration="off", positions=author_pos)
        )
        a, b = engine.score([Request(PROMPT, [image], reduction=plain), Request(PROMPT, [image], reduction=neutral)])
        assert torch.allclose(a, b, atol=1e-5), method


def texts_seen(monkeypatch, name: str) -> list:
    """What `ImageTokens.text` method `name`'s select is given, call by call."""
    from restore.methods import get_method

    cls, seen = type(get_method(name)), []
    original = cls.select
    monkeypatch.setattr(cls, "select", lambda self, tokens, k, options: (
        seen.append(tokens.text), original(self, tokens, k, options))[1])
    return seen


def test_pre_llm_methods_see_the_instruction_after_the_image(engine, monkeypatch):
    seen = texts_seen(monkeypatch, "cdpruner")
    red = tiny_reduction("cdpruner", 5, False)
    engine.generate([Request(PROMPT, [make_image(25)], reduction=red)], max_new_tokens=1)
    ids = engine.adapter.prepare(Request(PROMPT, [make_image(25)]), 0).input_ids
    tail = ids[int(torch.nonzero(ids == engine.adapter.model.config.image_token_id).max()) + 1:]
    assert len(seen) == 1 and seen[0].shape[0] == tail.numel() > 0
    assert torch.allclose(seen[0], engine.adapter.embed(tail).float())
    # A different question conditions the selection differently.
    other = engine.generate([Request("<image> where is the red one", [make_image(25)], reduction=red)], max_new_tokens=1)
    assert len(seen) == 2 and (seen[1].shape != seen[0].shape or not torch.equal(seen[1], seen[0]))
    assert other[0].stats.kept_tokens == 5


def test_only_methods_conditioned_on_the_instruction_get_it(engine, monkeypatch):
    from restore.methods import get_method

    seen = texts_seen(monkeypatch, "divprune")
    engine.generate([Request(PROMPT, [make_image(26)], reduction=tiny_reduction("divprune", 5, False))],
                    max_new_tokens=1)
    assert seen == [None]  # no host copy of the prompt for a method that does not read it
    assert get_method("temporal").uses_text(get_method("temporal").validate_options({"spatial": "cdpruner"}))
    assert not get_method("temporal").uses_text(get_method("temporal").validate_options({}))
