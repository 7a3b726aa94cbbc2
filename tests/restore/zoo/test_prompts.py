"""The shipped default model through `Engine`: natural phrasings answer like the canonical questions, the chat
template and raw prompts agree, and pictures from outside the world still get an answer in the world's words."""

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from restore.engine import Engine
from restore.request import Request
from restore.zoo import architecture, tokenizer, world
from tests.helpers.scenes import HAND
from tests.restore.zoo import phrasings

CAPTION_TOKENS, SHORT_TOKENS = 56, 4  # restore.zoo.evaluate's budgets


@pytest.fixture(scope="module")
def engine():
    return Engine.from_pretrained("default")


def answers(engine, requests: list[Request]) -> list[str]:
    """Greedy answers in order; captions get a caption's token budget, everything else a short answer's."""
    out = [""] * len(requests)
    long = [i for i, r in enumerate(requests) if tokenizer.normalise(r.prompt).startswith(phrasings.CAPTION)]
    short = [i for i in range(len(requests)) if i not in long]
    for idx, budget in ((long, CAPTION_TOKENS), (short, SHORT_TOKENS)):
        if idx:
            for i, r in zip(idx, engine.generate([requests[i] for i in idx], max_new_tokens=budget), strict=True):
                out[i] = r.text
    return out


def test_natural_phrasings_get_the_canonical_answers(engine):
    """Each canonical question once, then every natural phrasing of it, on a hand-made scene and a clip."""
    image, clip = world.render(HAND), world.random_clip(random.Random(0))
    frames = world.render_clip(clip)
    pairs = [(n, c, {"images": [image]}) for n, c in phrasings.filled(phrasings.IMAGE_PHRASINGS,
                                                                      phrasings.scene_fields(HAND))]
    pairs += [(n, c, {"video": frames}) for n, c in phrasings.filled(phrasings.CLIP_PHRASINGS,
                                                                     phrasings.clip_fields(clip))]
    canonical = {c: media for _, c, media in pairs}
    want = dict(zip(canonical, answers(engine, [Request(c, **m) for c, m in canonical.items()]), strict=True))
    got = answers(engine, [Request(n, **m) for n, _, m in pairs])
    assert all(want.values()), want
    for (natural, c, _), text in zip(pairs, got, strict=True):
        assert text == want[c], (natural, c)


def test_canonical_answers_on_the_hand_made_scene(engine):
    image = world.render(HAND)
    asked = ["How many red shapes are there?", "Is the red circle left of the blue triangle?",
             "What digit is written at the top right?", "Where's the blue triangle?", "What color is the small square?"]
    assert answers(engine, [Request(q, images=[image]) for q in asked]) == ["two", "yes", "7", "bottom right", "red"]


def test_chat_template_and_a_formatted_raw_prompt_agree(engine):
    image = world.render(HAND)
    q = "what colour is the small square ?"
    template = engine.processor.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
        add_generation_prompt=True, tokenize=False)
    assert template == architecture.chat_prompt(engine.processor, q, 1) == f"user : <image> {q} assistant :"
    got = answers(engine, [Request(q, images=[image]), Request(template, images=[image], chat=False)])
    assert got == ["red", "red"]


def test_a_prompt_with_its_own_placeholder_is_answered(engine):
    image = world.render(HAND)
    # As a user types it (restore run, the server, a corpus job): the chat template places the image.
    typed = Request(engine.media_prompt("<image> describe the image .", 1), images=[image])
    got = answers(engine, [typed, Request("describe the image .", images=[image])])
    assert got[0] == got[1] and got[0].startswith("top left : ")


def out_of_world_pictures() -> dict[str, Image.Image]:
    circle = Image.new("RGB", (336, 336), "white")
    ImageDraw.Draw(circle).ellipse((100, 100, 236, 236), fill=(215, 35, 35))
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8))
    return {"red circle, 336 px": circle, "noise": noise, "white, 200x100": Image.new("RGB", (200, 100), "white")}


def test_out_of_world_pictures_get_answers_in_the_worlds_words(engine):
    vocab = set(engine.processor.tokenizer.get_vocab())
    asked = ["Describe the image.", "describe the image .", "How many red shapes are there?", "Is there a red circle?",
             "Where is the red circle?", "What digit is written at the top left?"]
    for name, image in out_of_world_pictures().items():
        for q, text in zip(asked, answers(engine, [Request(q, images=[image]) for q in asked]), strict=True):
            assert text.strip(), (name, q)
            assert set(text.split()) <= vocab, (name, q, text)


def test_a_prompt_that_normalises_to_nothing_is_refused_by_name(engine):
    with pytest.raises(ValueError, match="request 0: no word of the prompt is in this model's vocabulary"):
        engine.generate([Request("hi")], max_new_tokens=2)
