"""`pipelines.media.fetch`: what the online API accepts as a media reference (SSRF policy, limits)."""

from __future__ import annotations

import base64

import pytest

from pipelines.media.fetch import FetchPolicy, MediaError, fetch_bytes, load_image
from tests.helpers.images import png_b64


def test_ssrf_guard_refuses_private_addresses_even_when_allowed_by_name():
    policy = FetchPolicy(allowed_hosts=["localhost", "127.0.0.1"])
    for url in ("http://localhost:1/x.png", "http://127.0.0.1:1/x.png"):
        with pytest.raises(MediaError, match="non-public address"):
            fetch_bytes(url, "image_url", policy)
    with pytest.raises(MediaError, match="cannot fetch"):  # explicitly allowed: fetched (nothing listens there)
        fetch_bytes("http://127.0.0.1:1/x.png", "image_url", FetchPolicy(allowed_hosts=["127.0.0.1"], allow_private=True))
    with pytest.raises(MediaError, match="disabled"):
        fetch_bytes("s3://bucket/key.png", "image_url", FetchPolicy(allow_s3=False))


def test_data_uris_and_limits():
    policy = FetchPolicy()
    assert fetch_bytes("data:text/plain,hello%20there", "image_url", policy) == b"hello there"
    raw = base64.b64decode(png_b64())
    assert fetch_bytes(f"data:image/png;base64,{png_b64()}", "image_url", policy) == raw
    with pytest.raises(MediaError, match="image_url: malformed data: URI"):
        fetch_bytes("data:nothing", "image_url", policy)
    with pytest.raises(MediaError, match="larger than 10 bytes") as err:
        fetch_bytes(f"data:image/png;base64,{png_b64()}", "image_url", FetchPolicy(max_bytes=10))
    assert err.value.status == 413
    for ref in ("file:///etc/passwd", "/etc/passwd", "ftp://host/x.png"):
        with pytest.raises(MediaError, match="image: unsupported reference"):
            fetch_bytes(ref, "image", policy)
    image = load_image(f"data:image/png;base64,{png_b64()}", "image", policy)
    assert image.mode == "RGB" and image.size == (96, 96)
    with pytest.raises(MediaError, match="96×96 image exceeds 100 pixels"):
        load_image(f"data:image/png;base64,{png_b64()}", "image", FetchPolicy(max_pixels=100))
