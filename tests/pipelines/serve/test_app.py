"""`pipelines.serve.app`, the online API in-process (no Ray): OpenAI compatibility with the real `openai`
client on loopback, streaming, caption/VQA rows, auth, validation and SSRF refusals."""

from __future__ import annotations

import base64
import urllib.request

import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipelines.serve.app import create_app
from restore import Request
from tests.helpers.images import png_b64
from tests.helpers.servers import uvicorn_server


def image_part(b64: str) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}


def chat(content, **kw) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **kw}


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service))


@pytest.fixture(scope="module")
def server(service):
    """The app under uvicorn on a free loopback port, for real HTTP clients."""
    with uvicorn_server(create_app(service, api_key="sekret")) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.serve
def test_openai_client_text_and_image(server, service):
    oa = openai.OpenAI(base_url=f"{server}/v1", api_key="sekret", max_retries=0)
    assert [m.id for m in oa.models.list()] == ["random:llava-tiny"]
    out = oa.chat.completions.create(
        model="random:llava-tiny", max_tokens=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": "what is in the image ?"}, image_part(png_b64())]}],
    )
    ref = service.engine.generate([Request("<image> what is in the image ?", [base64.b64decode(png_b64())],
                                           reduction=service.settings.reduction)], max_new_tokens=3)[0]
    assert out.choices[0].message.content == ref.text
    assert out.usage.completion_tokens == len(ref.token_ids) and out.usage.prompt_tokens == ref.stats.prompt_tokens
    extra = out.model_extra["restore"]
    assert extra["visual_tokens"] == 36 and extra["kept_tokens"] == 8 and extra["method"] == "divprune"
    stream = oa.chat.completions.create(
        model="random:llava-tiny", max_tokens=3, stream=True,
        messages=[{"role": "user", "content": [{"type": "text", "text": "what is in the image ?"}, image_part(png_b64())]}],
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    for route in ("/healthz", "/readyz"):  # health checks need no key
        with urllib.request.urlopen(f"{server}{route}", timeout=10) as resp:
            assert resp.status == 200


def test_ignore_eos_reaches_the_generation_config(server, service):
    from pipelines.serve import api
    from pipelines.serve.app import _generation

    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert _generation(service, api.ChatRequest(**body, ignore_eos=True)).ignore_eos
    assert not _generation(service, api.ChatRequest(**body)).ignore_eos
    oa = openai.OpenAI(base_url=f"{server}/v1", api_key="sekret", max_retries=0)
    out = oa.chat.completions.create(
        model="random:llava-tiny", max_tokens=4, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": "what is in the image ?"}, image_part(png_b64())]}],
    )
    assert out.usage.completion_tokens == 4 and out.choices[0].finish_reason == "length"


def test_per_request_restore_override(client):
    body = chat([{"type": "text", "text": "what ?"}, image_part(png_b64())],
                restore={"method": "pool", "budget": 4, "restore": {"enabled": False}})
    out = client.post("/v1/chat/completions", json=body).json()["restore"]
    assert (out["method"], out["kept_tokens"], out["restore"]) == ("pool", 4, False)
    assert out["prefill_speedup_est"] > 1


@pytest.mark.parametrize(
    "body, status, field",
    [
        (chat("hi", max_tokens=99), 400, "max_tokens: 99 is over"),
        (chat("hi", restore={"method": "divprune", "budgett": 3}), 400, "restore.budgett"),
        (chat("hi", restore={"method": "nope"}), 400, "unknown method 'nope'"),
        (chat("hi", n=2), 400, "n:"),
        (chat("hi", logit_bias={}), 400, "logit_bias"),
        (chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]), 400, "bad base64"),
        (chat([image_part(base64.b64encode(b"not an image").decode())]), 400, "not a decodable image"),
        (chat([image_part(png_b64())] * 3), 400, "at most 2 allowed"),
        (chat([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]), 400, "unsupported reference"),
        (chat([{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]), 400, "unsupported reference"),
        (chat([{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}]), 403, "allow-list"),
        (chat([{"type": "image_url"}]), 400, "needs a 'image_url' field"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                       {"role": "user", "content": "c"}]}, 400, "one user message"),
        ({"messages": []}, 400, "messages"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(client, body, status, field):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["error"]["message"]


def test_malformed_json_and_oversized_image(client, service):
    r = client.post("/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "body is not valid JSON"
    small = service.settings.fetch.max_pixels
    service.settings.fetch.max_pixels = 50 * 50
    try:
        r = client.post("/v1/chat/completions", json=chat([image_part(png_b64(size=64))]))
    finally:
        service.settings.fetch.max_pixels = small
    assert r.status_code == 413 and "64×64 image exceeds 2500 pixels" in r.json()["error"]["message"]


def test_caption_and_vqa_rows(client):
    rows = client.post("/v1/vqa", json={"image": png_b64(), "questions": ["what ?", "where ?"], "id": "q1"}).json()["rows"]
    assert [(r["id"], r["prompt"], r["task"], r["status"]) for r in rows] == [
        ("q1:0", "what ?", "vqa", "ok"), ("q1:1", "where ?", "vqa", "ok")
    ]
    assert all(r["kept_tokens"] == 8 and r["visual_tokens"] == 36 for r in rows)
    row = client.post("/v1/caption", json={"image": png_b64(), "max_tokens": 3}).json()["rows"][0]
    assert row["prompt"] == "describe the image ." and row["uri"].startswith("inline:") and row["generated_tokens"] <= 3
    assert client.post("/v1/vqa", json={"image": "%%%", "questions": ["x"]}).json()["error"]["message"].startswith("image:")
    assert client.post("/v1/vqa", json={"image": png_b64(), "video": png_b64(), "questions": ["x"]}).status_code == 400
    assert client.post("/v1/vqa", json={"image": png_b64(), "questions": ["x"] * 17}).status_code == 400


def test_video_url_part_is_sampled_into_frames(client):
    from pipelines.batch.demo import encode_mp4

    frames = [Image.new("RGB", (24, 24), (40 * i, 100, 200)) for i in range(6)]
    url = "data:video/mp4;base64," + base64.b64encode(encode_mp4(frames)).decode()
    body = chat([{"type": "text", "text": "what moves ?"}, {"type": "video_url", "video_url": {"url": url}}])
    out = client.post("/v1/chat/completions", json=body)
    assert out.status_code == 200, out.text
    stats = out.json()["restore"]
    assert stats["visual_tokens"] == 6 * 36 and stats["kept_tokens"] == 6 * 8  # budget per frame
    two = chat([{"type": "video_url", "video_url": {"url": url}}] * 2)
    assert "at most one video" in client.post("/v1/chat/completions", json=two).json()["error"]["message"]
