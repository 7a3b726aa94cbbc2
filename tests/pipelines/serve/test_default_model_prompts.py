"""The shipped default model behind `/v1/chat/completions`, asked with the real `openai` client: natural
phrasings answer like the canonical questions, a typed `<image>` placeholder and a system message are
handled by the chat template, and pictures from outside the world get a non-empty answer in its words."""

from __future__ import annotations

import base64
import io
import random

import openai
import pytest

from pipelines.serve.app import create_app
from pipelines.serve.batcher import Service
from pipelines.serve.settings import ServeSettings
from restore.zoo import tokenizer, world
from tests.helpers.scenes import HAND
from tests.helpers.servers import uvicorn_server
from tests.restore.zoo import phrasings
from tests.restore.zoo.test_prompts import CAPTION_TOKENS, SHORT_TOKENS, out_of_world_pictures

pytestmark = pytest.mark.serve


def url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def oa():
    service = Service.load(ServeSettings(model="default", reduction={"method": "none"}, calibrate=False,
                                         max_tokens=CAPTION_TOKENS, default_max_tokens=SHORT_TOKENS, max_images=8))
    try:
        with uvicorn_server(create_app(service)) as port:
            yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    finally:
        service.close()


def ask(oa, text: str, images, system: str | None = None) -> str:
    content = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": url(im)}} for im in images]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    question = tokenizer.normalise(text.replace("<image>", ""))
    budget = CAPTION_TOKENS if question.startswith(phrasings.CAPTION) else SHORT_TOKENS
    r = oa.chat.completions.create(model="default", messages=messages, max_tokens=budget, temperature=0)
    return r.choices[0].message.content


def test_natural_phrasings_through_the_openai_client(oa):
    image, clip = world.render(HAND), world.random_clip(random.Random(0))
    frames = world.render_clip(clip)
    pairs = [(n, c, [image]) for n, c in phrasings.filled(phrasings.IMAGE_PHRASINGS, phrasings.scene_fields(HAND))]
    pairs += [(n, c, frames) for n, c in phrasings.filled(phrasings.CLIP_PHRASINGS, phrasings.clip_fields(clip))]
    want = {c: ask(oa, c, media) for _, c, media in pairs}
    assert all(want.values()), want
    for natural, canonical, media in pairs:
        assert ask(oa, natural, media) == want[canonical], (natural, canonical)


def test_typed_placeholder_and_system_message(oa):
    image = world.render(HAND)
    plain = ask(oa, "Describe the image.", [image])
    assert plain.startswith("top left : ")
    assert ask(oa, "<image> describe the image .", [image]) == plain
    assert ask(oa, "What color is the small square?", [image], system="You are a helpful assistant.") == "red"


def test_out_of_world_pictures_get_words_of_the_world(oa):
    vocab = set(tokenizer.build().get_vocab())
    for name, picture in out_of_world_pictures().items():
        for q in ("Describe the image.", "How many red shapes are there?", "Is there a red circle?"):
            text = ask(oa, q, [picture])
            assert text.strip() and set(text.split()) <= vocab, (name, q, text)
