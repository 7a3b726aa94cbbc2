"""Every registered method, alone and under RESTORE, on the Qwen2.5-VL and LLaVA-OneVision tiny models."""

import pytest

from restore import Engine, Request
from restore.methods import available
from tests.helpers.images import frames
from tests.helpers.tiny import FAMILIES, tiny_reduction

METHODS = [m.name for m in available() if m.name != "none"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    factory, image, video = FAMILIES[request.param]
    return Engine(*factory()), image, video


@pytest.mark.parametrize("restore_on", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_method_on_images_and_video(family, method, restore_on):
    engine, image, video = family
    requests = [
        Request(f"{image} what is in the image ?", frames(1, seed=1)[:1], reduction=tiny_reduction(method, 4, restore_on)),
        Request(f"{video} what is moving ?", video=frames(4, seed=2), fps=2.0,
                reduction=tiny_reduction(method, 0.25, restore_on)),
    ]
    batched = engine.generate(requests, max_new_tokens=2)
    assert batched[0].stats.kept_tokens == 4
    assert batched[1].stats.kept_tokens == max(1, round(0.25 * batched[1].stats.visual_tokens))
    assert [r.token_ids for r in engine.generate(requests, max_new_tokens=2)] == [r.token_ids for r in batched]
    for request, result in zip(requests, batched):
        assert engine.generate([request], max_new_tokens=2)[0].token_ids == result.token_ids


IN_LLM = [m.name for m in available() if m.stage == "llm"]


@pytest.mark.parametrize("restore_on", [True, False])
@pytest.mark.parametrize("method", IN_LLM)
def test_in_llm_method_with_infinite_budget_is_the_stock_model(family, method, restore_on):
    engine, image, _ = family
    prompt = f"{image} what is in the image ?"
    stock = engine.generate([Request(prompt, frames(1, seed=5)[:1])], max_new_tokens=6)[0]
    red = tiny_reduction(method, 100_000, restore_on)
    out = engine.generate([Request(prompt, frames(1, seed=5)[:1], reduction=red)], max_new_tokens=6)[0]
    assert out.token_ids == stock.token_ids
    assert out.stats.kept_tokens == out.stats.visual_tokens


def test_in_llm_methods_with_infinite_budget_on_llava(llava):
    from tests.helpers.images import make_image

    engine = Engine(*llava)
    prompt = "<image> what is in the image ?"
    stock = engine.generate([Request(prompt, [make_image(3)])], max_new_tokens=6)[0]
    for method in IN_LLM:
        red = tiny_reduction(method, 100_000, True)
        assert engine.generate([Request(prompt, [make_image(3)], reduction=red)], max_new_tokens=6)[0].token_ids == stock.token_ids
