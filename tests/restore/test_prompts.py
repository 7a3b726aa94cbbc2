"""The one prompt/placeholder policy: placeholders as given, the chat template, or placeholders put in front."""

import pytest

from restore.prompts import build_prompt, media_prompt
from restore.request import Request


class _Processor:
    def __init__(self, template: str | None) -> None:
        self.chat_template = template

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        kinds = [c["type"] for c in messages[0]["content"]]
        return f"USER: {' '.join(kinds)}" + (" ASSISTANT:" if add_generation_prompt else "")


def test_placeholders_as_given_else_the_chat_template():
    plain, chat = _Processor(None), _Processor("t")
    assert build_prompt(plain, Request("<image> hi", [b"x"]), 1, 0, "<image>") == "<image> hi"
    assert build_prompt(chat, Request("hi", [b"x"]), 1, 0, "<image>") == "USER: image text ASSISTANT:"
    assert build_prompt(chat, Request("hi", [], video=[b"x"]), 0, 0, "<image>", "<video>", has_video=True) == (
        "USER: video text ASSISTANT:"
    )
    with pytest.raises(ValueError, match="request 3: the prompt has 0 image placeholder"):
        build_prompt(plain, Request("hi", [b"x"]), 1, 3, "<image>")
    with pytest.raises(ValueError, match="request 0: with the chat template, leave"):
        build_prompt(chat, Request("<image> hi", [b"x"], chat=True), 1, 0, "<image>")
    with pytest.raises(ValueError, match="video placeholder '<video>' but the request has no video"):
        build_prompt(plain, Request("<video> hi", []), 0, 0, "<image>", "<video>")


def test_media_prompt_puts_placeholders_in_front_only_without_template_or_placeholders():
    assert media_prompt(_Processor(None), "<image>", "describe", 2) == "<image> <image> describe"
    assert media_prompt(_Processor(None), "<image>", "<image> describe", 1) == "<image> describe"
    assert media_prompt(_Processor("t"), "<image>", "describe", 1) == "describe"
    assert media_prompt(_Processor(None), "<image>", "hello", 0) == "hello"
    # With a template, the template places the images: typed placeholders come out, unless the text is a
    # whole conversation already.
    assert media_prompt(_Processor("t"), "<image>", "<image> describe", 1) == "describe"
    assert media_prompt(_Processor("t"), "<image>", "USER: <image> hi ASSISTANT:", 1) == "USER: <image> hi ASSISTANT:"
    assert media_prompt(_Processor("t"), "<image>", "<image> <image> two", 1) == "<image> <image> two"
