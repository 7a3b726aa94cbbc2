"""Media referenced by online requests: `data:` URIs, `s3://` objects and allow-listed http(s) URLs.

The server never reads its own files (`file://`, bare paths) and never fetches
from private, loopback, link-local or otherwise non-global addresses through a
URL (SSRF), unless the operator allows it explicitly. Hosts must be on
`allowed_hosts` (empty by default: no http fetches at all). Every limit names
the field that broke it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import urllib.parse
import urllib.request
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.media.decode import DecodeError, ReadError, decode_image, decode_video, read_bytes


class MediaError(ValueError):
    """A client error about one media reference (HTTP 400/413); the message names the field."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class FetchPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts http(s) media may come from (exact names; empty: no http fetches)."
    )
    allow_private: bool = Field(
        False, description="Allow http(s) fetches that resolve to private, loopback or link-local addresses."
    )
    allow_s3: bool = Field(True, description="Accept s3:// references (read with the server's credentials).")
    max_bytes: int = Field(20 * 2**20, ge=1, description="Largest encoded image or video accepted.")
    max_pixels: int = Field(4096 * 4096, ge=1, description="Largest decoded image (width × height) accepted.")
    timeout_s: float = Field(10.0, gt=0, description="http(s) fetch timeout.")
    endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// references (None: the environment's).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="Extra fsspec options for s3://.")


_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)


def _global_address(host: str) -> None:
    """Raise unless every address `host` resolves to is globally routable."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as err:
        raise MediaError(f"cannot resolve host {host!r}: {err}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global or addr.is_multicast:
            raise MediaError(f"host {host!r} resolves to a non-public address ({addr}); not fetched")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # a redirect could point inside the network
        raise MediaError(f"{req.full_url}: redirects are not followed ({code} to {newurl})")


def fetch_bytes(url: str, field: str, policy: FetchPolicy) -> bytes:
    """The bytes behind a media reference; MediaError names `field` for anything refused or unreadable."""
    if url.startswith("data:"):
        m = _DATA_URI.match(url)
        if not m:
            raise MediaError(f"{field}: malformed data: URI")
        payload = m.group("data")
        if len(payload) > policy.max_bytes * 4 // 3 + 4:
            raise MediaError(f"{field}: larger than {policy.max_bytes} bytes", status=413)
        if not m.group("b64"):
            return urllib.parse.unquote_to_bytes(payload)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(f"{field}: bad base64 in data: URI") from None
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "s3":
        if not policy.allow_s3:
            raise MediaError(f"{field}: s3:// references are disabled on this server")
        try:
            data = read_bytes(url, policy.endpoint_url, policy.storage_options)
        except ReadError as err:
            raise MediaError(f"{field}: {err}") from None
    elif scheme in ("http", "https"):
        data = _fetch_http(url, field, policy)
    else:
        raise MediaError(f"{field}: unsupported reference {url[:40]!r}; use a data: URI, s3:// or an allowed http(s) URL")
    if len(data) > policy.max_bytes:
        raise MediaError(f"{field}: larger than {policy.max_bytes} bytes", status=413)
    return data


def _fetch_http(url: str, field: str, policy: FetchPolicy) -> bytes:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host.lower() not in {h.lower() for h in policy.allowed_hosts}:
        raise MediaError(f"{field}: host {host!r} is not on this server's allow-list")
    if not policy.allow_private:
        _global_address(host)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=policy.timeout_s) as resp:
            data = resp.read(policy.max_bytes + 1)
    except MediaError:
        raise
    except Exception as err:  # URLError, HTTPError, timeouts, resets
        raise MediaError(f"{field}: cannot fetch {url}: {err}") from None
    if len(data) > policy.max_bytes:
        raise MediaError(f"{field}: larger than {policy.max_bytes} bytes", status=413)
    return data


def load_image(url: str, field: str, policy: FetchPolicy):
    data = fetch_bytes(url, field, policy)
    _check_pixels(data, field, policy)
    try:
        return decode_image(data, field)
    except DecodeError as err:
        raise MediaError(str(err)) from None


def load_video(url: str, field: str, policy: FetchPolicy, frames: int):
    data = fetch_bytes(url, field, policy)
    try:
        video = decode_video(data, field, frames=frames)
    except DecodeError as err:
        raise MediaError(str(err)) from None
    w, h = video.frames[0].size
    if w * h > policy.max_pixels:
        raise MediaError(f"{field}: {w}×{h} frames exceed {policy.max_pixels} pixels", status=413)
    return video


def _check_pixels(data: bytes, field: str, policy: FetchPolicy) -> None:
    """Refuse oversized images from their header, before decoding the pixels (decompression bombs)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception:
        return  # not an image header: decode_image reports it with its cause
    if w * h > policy.max_pixels:
        raise MediaError(f"{field}: {w}×{h} image exceeds {policy.max_pixels} pixels", status=413)
