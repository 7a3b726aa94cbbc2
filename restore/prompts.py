"""The prompt and placeholder policy: where a request's images and video go in the text the processor gets.

One place for every caller: the adapters (`build_prompt`), the batch job and the server
(`media_prompt`, through `Engine.media_prompt`), the demo, the benchmarks and the viewer.

- A prompt that carries the processor's placeholders is used as given (one per image, one for
  the video).
- A prompt without placeholders goes through the processor's chat template when it has one
  (or when the request asks for it with `chat=True`).
- Otherwise the library refuses a prompt whose placeholders do not match its media.
- Text typed by a user (a corpus job, an HTTP client, `restore run`) first goes through
  `media_prompt`, which makes it one of the above: placeholders in front when the processor has
  no template; with a template, typed placeholders are taken out so the template places the
  images, unless the text is already a whole conversation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from restore.request import Request

# The caption prompts of the default model's world; the batch job and the server use them when none is given.
DEFAULT_CAPTION_PROMPTS = {"images": "describe the image .", "videos": "describe the video ."}


def _template(processor) -> str | None:
    return getattr(processor, "chat_template", None)


def _chat(processor, request: Request, index: int, content: list[dict], placeholders: str) -> str:
    if _template(processor) is None:
        raise ValueError(f"request {index}: chat=True but the processor has no chat template")
    if placeholders:
        raise ValueError(f"request {index}: with the chat template, leave {placeholders} out of the prompt")
    content = content + [{"type": "text", "text": request.prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_prompt(
    processor, request: Request, num_images: int, index: int, image: str, video: str | None = None,
    has_video: bool = False,
) -> str:
    """The text the processor gets for `request` with `num_images` images and, when `has_video`, one video:
    the prompt as given, or the chat template around it. `image` and `video` are the family's placeholders
    (`video` None: the family has no video placeholder)."""
    n_img = request.prompt.count(image)
    if video is not None and not has_video and request.prompt.count(video):
        raise ValueError(
            f"request {index}: the prompt has the video placeholder {video!r} but the request has no video frames"
        )
    if not has_video:
        use_chat = request.chat
        if use_chat is None:
            use_chat = n_img == 0 and num_images > 0 and _template(processor) is not None
        if use_chat:
            return _chat(processor, request, index, [{"type": "image"}] * num_images,
                         f"the image placeholder {image!r}" if n_img else "")
        if n_img != num_images:
            raise ValueError(
                f"request {index}: the prompt has {n_img} image placeholder(s) {image!r} for {num_images} "
                "image(s); put one placeholder per image in the prompt, or use a processor with a chat template"
            )
        return request.prompt
    n_vid = request.prompt.count(video)
    use_chat = request.chat
    if use_chat is None:
        use_chat = n_img == 0 and n_vid == 0 and _template(processor) is not None
    if use_chat:
        return _chat(processor, request, index, [{"type": "image"}] * num_images + [{"type": "video"}],
                     f"the placeholders {image!r} / {video!r}" if n_img or n_vid else "")
    if n_img != num_images or n_vid != 1:
        raise ValueError(
            f"request {index}: the prompt has {n_img} image placeholder(s) {image!r} for {num_images} "
            f"image(s) and {n_vid} video placeholder(s) {video!r} for 1 video; put one placeholder "
            "per image and one for the video in the prompt, or use a processor with a chat template"
        )
    return request.prompt


def generation_suffix(processor) -> str:
    """What the chat template appends to ask for an answer ('assistant :', 'ASSISTANT:', ...); '' if unknown."""
    probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    try:
        asked = processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        plain = processor.apply_chat_template(probe, add_generation_prompt=False, tokenize=False)
    except Exception:  # a template that cannot render this probe places nothing we can recognise
        return ""
    return asked[len(plain) :].strip() if asked.startswith(plain) else ""


def media_prompt(processor, image: str, text: str, count: int) -> str:
    """The prompt for `count` images typed by a user (the batch job, the server, `restore run`).

    With a chat template, the template places the images: placeholders the user typed (one per image) are
    taken out, unless the text is already a whole conversation ending where the answer starts (LLaVA-1.5's
    'USER: <image>\\n... ASSISTANT:'), which is kept as given. Without a template, the text is kept when it
    has placeholders, else one placeholder per image goes in front (LLaVA-1.5 takes a video's frames as
    images).
    """
    if _template(processor) is not None:
        if count and text.count(image) == count:
            suffix = generation_suffix(processor)
            if not (suffix and text.rstrip().endswith(suffix)):
                return " ".join(text.replace(image, " ").split())
        return text
    if image in text or not count:
        return text
    return " ".join([image] * count + [text])
