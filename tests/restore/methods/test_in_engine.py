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
