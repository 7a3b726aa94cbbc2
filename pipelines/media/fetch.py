"""Media referenced by online requests: `data:` URIs, allow-listed `s3://` prefixes and allow-listed http(s) hosts.

The server never reads its own files (`file://`, bare paths) and never fetches
from private, loopback, link-local or otherwise non-global addresses through a
URL (SSRF), unless the operator allows it explicitly. Hosts must be on
`allowed_hosts` (empty by default: no http fetches at all); the address checked
is the address connected to (no second DNS lookup), and redirects are not
followed. `s3://` is off by default: when on, only objects under the `s3_allow`
prefixes are read, and everything else (not listed, missing, denied) gets one
and the same 403, so a client cannot probe the server's buckets.

Images are checked from their header before any pixel is decoded: pixels,
long side and aspect ratio (an extreme aspect ratio passes a pixel limit but
costs the processor, which scales the short side, far more). Video frames get
the same checks from the stream header and again after decoding.

Every `MediaError` carries `status` (HTTP), `param` (the request field, e.g.
`messages.0.content.1.image_url`) and `code` (a stable string, e.g.
`image_too_large`); its message starts with the field and names the limit.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import logging
import re
import socket
import ssl
import time
import urllib.parse
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.media.decode import DecodeError, decode_image, decode_video
from pipelines.media.storage import filesystem

logger = logging.getLogger(__name__)

# Stable `code`s of MediaError (the `code` of OpenAI's error object).
INVALID_REFERENCE = "invalid_media_reference"  # 400: malformed data: URI, unsupported scheme, non-canonical s3 URI
FORBIDDEN = "media_source_forbidden"  # 403: not on an allow-list, s3 off, non-public address, unreadable object
FETCH_FAILED = "media_fetch_failed"  # 400: an allowed http(s) host did not answer with the bytes (status, timeout)
TOO_LARGE = "media_too_large"  # 413: encoded bytes over max_bytes
IMAGE_TOO_LARGE = "image_too_large"  # 413: pixels, long side, aspect ratio, decompression bomb
VIDEO_TOO_LARGE = "video_too_large"  # 413: the same limits on video frames
NOT_DECODABLE = "media_not_decodable"  # 400: bytes that are not an image / video


class MediaError(ValueError):
    """A client error about one media reference (HTTP 400/403/413).

    `param` is the request field (None when the error is about the whole request),
    `code` a stable machine-readable string; the message names the field too.
    """

    def __init__(self, message: str, status: int = 400, *, param: str | None = None,
                 code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY = re.compile(r"^[A-Za-z0-9/!_.'()+=,@~-]+$")  # AWS's safe characters (no '*', '?', '%', ':', spaces)


def _s3_parts(uri: str, prefix: bool = False) -> tuple[str, str] | None:
    """(bucket, key) of a canonical `s3://bucket/key`; None for anything else.

    Canonical: lower-case scheme and a valid bucket name; a key of safe characters only
    (no percent-encoding, query, fragment, glob or '::'), with no empty, '.' or '..' segments.
    With `prefix`, the key may be empty or end with '/'.
    """
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[5:].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        return None
    if not key:
        return (bucket, "") if prefix else None
    if not _KEY.match(key):
        return None
    segments = key.split("/")
    if prefix and segments[-1] == "":
        segments = segments[:-1]
    if any(s in ("", ".", "..") for s in segments):
        return None
    return bucket, key


class FetchPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts http(s) media may come from (exact names; empty: no http fetches)."
    )
    allow_private: bool = Field(
        False, description="Allow http(s) fetches that resolve to private, loopback or link-local addresses."
    )
    allow_s3: bool = Field(
        False, description="Accept s3:// references (read with the server's credentials), only under `s3_allow`."
    )
    s3_allow: list[str] = Field(
        default_factory=list,
        description="s3:// prefixes request media may be read from, e.g. 's3://media-bucket/public/' (a string "
        "prefix of bucket/key as in S3; end it with '/' for a folder; 's3://bucket' for the whole bucket).",
    )
    max_bytes: int = Field(20 * 2**20, ge=1, description="Largest encoded image or video accepted.")
    max_pixels: int = Field(4096 * 4096, ge=1, description="Largest decoded image or frame (width × height).")
    max_side: int = Field(8192, ge=1, description="Longest side of an image or frame, in pixels.")
    max_aspect: float = Field(20.0, ge=1, description="Largest aspect ratio (long side / short side).")
    timeout_s: float = Field(10.0, gt=0, description="http(s) fetch timeout (connect to last byte).")
    endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// references (None: the environment's).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="Extra fsspec options for s3://.")

    @field_validator("s3_allow")
    @classmethod
    def _canonical_prefixes(cls, v: list[str]) -> list[str]:
        for entry in v:
            if _s3_parts(entry, prefix=True) is None:
                raise ValueError(f"s3_allow entry {entry!r} is not s3://bucket[/prefix] with a valid bucket name, "
                                 "safe key characters and no '.', '..' or empty segments")
        return v

    @model_validator(mode="after")
    def _s3_needs_prefixes(self):
        if self.allow_s3 and not self.s3_allow:
            raise ValueError("allow_s3 needs s3_allow prefixes (e.g. ['s3://media-bucket/public/']): "
                             "the server's whole object store is never open to requests")
        return self

    def s3_allowed(self, bucket: str, key: str) -> bool:
        """Whether canonical `bucket`/`key` is under one of `s3_allow` (always False while allow_s3 is off)."""
        if not self.allow_s3:
            return False
        for entry in self.s3_allow:
            b, prefix = _s3_parts(entry, prefix=True)  # validated above
            if b == bucket and key.startswith(prefix):
                return True
        return False


_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)


def _too_large(field: str, size: int | str, policy: FetchPolicy) -> MediaError:
    return MediaError(f"{field}: {size} bytes, larger than max_bytes ({policy.max_bytes} bytes)", 413,
                      param=field, code=TOO_LARGE)


def fetch_bytes(url: str, field: str, policy: FetchPolicy) -> bytes:
    """The bytes behind a media reference; MediaError names `field` for anything refused or unreadable."""
    if url.startswith("data:"):
        m = _DATA_URI.match(url)
        if not m:
            raise MediaError(f"{field}: malformed data: URI", param=field, code=INVALID_REFERENCE)
        payload = m.group("data")
        if len(payload) > policy.max_bytes * 4 // 3 + 4:
            raise _too_large(field, f"about {len(payload) * 3 // 4}", policy)
        if not m.group("b64"):
            data = urllib.parse.unquote_to_bytes(payload)
        else:
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise MediaError(f"{field}: bad base64 in data: URI", param=field, code=INVALID_REFERENCE) from None
    else:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "s3":
            data = _fetch_s3(url, field, policy)
        elif scheme in ("http", "https"):
            data = _fetch_http(url, field, policy)
        else:
            raise MediaError(f"{field}: unsupported reference {url[:40]!r}; use a data: URI, s3:// or an allowed "
                             "http(s) URL", param=field, code=INVALID_REFERENCE)
    if len(data) > policy.max_bytes:
        raise _too_large(field, len(data), policy)
    return data


# ----------------------------------------------------------------------------- s3


def _fetch_s3(url: str, field: str, policy: FetchPolicy) -> bytes:
    if not policy.allow_s3:
        raise MediaError(f"{field}: s3:// references are disabled on this server", 403, param=field, code=FORBIDDEN)
    parts = _s3_parts(url)
    if parts is None:
        raise MediaError(f"{field}: {url[:80]!r} is not a canonical s3://bucket/key (valid bucket name; key of "
                         "letters, digits and /!_.'()+=,@~- without '.', '..' or empty segments; no "
                         "percent-encoding)", param=field, code=INVALID_REFERENCE)
    bucket, key = parts
    # One answer for "not on the list", "no such bucket", "no such key" and "access denied":
    # anything else would let a client map the server's buckets with the server's credentials.
    refused = MediaError(f"{field}: s3://{bucket}/{key} is not readable by this server (it must exist under a "
                         "prefix the operator allowed)", 403, param=field, code=FORBIDDEN)
    if not policy.s3_allowed(bucket, key):
        raise refused
    try:
        fs, path = filesystem(f"s3://{bucket}/{key}", policy.endpoint_url, policy.storage_options)
        info = fs.info(path)
        if info.get("type", "file") != "file":  # a "folder" (a prefix of other keys) is no object
            raise FileNotFoundError(path)
        size = info.get("size")
        if size is not None and size > policy.max_bytes:
            raise _too_large(field, size, policy)
        # Read at most max_bytes + 1 (a ranged GET): the object may have grown since `info`.
        return fs.cat_file(path, start=0, end=policy.max_bytes + 1) if size else b""
    except MediaError:
        raise
    except Exception as err:  # FileNotFoundError, PermissionError, botocore errors, timeouts: all the same answer
        logger.warning("%s: s3://%s/%s not read (%s: %s)", field, bucket, key, type(err).__name__, err)
        raise refused from None


# ----------------------------------------------------------------------------- http(s)


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast, including the IPv4 address an IPv6 one embeds (mapped, NAT64, 6to4, Teredo)."""
    if addr.version == 6:
        if int(addr) >> 32 == 0:  # ::/96, IPv4-compatible (deprecated) and unspecified
            return False
        inner = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if inner is None and any(addr in net for net in _NAT64):
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None and not _public(inner):
            return False
    return addr.is_global and not addr.is_multicast


Pinned = tuple[int, int, int, Any]  # (family, type, proto, sockaddr) from getaddrinfo


def _resolve(host: str, port: int, field: str, allow_private: bool) -> Pinned:
    """Resolve `host` once; every answer must be public (unless allowed); the first is the one connected to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as err:
        raise MediaError(f"{field}: cannot resolve host {host!r} ({err})", param=field, code=FETCH_FAILED) from None
    if not infos:
        raise MediaError(f"{field}: cannot resolve host {host!r}", param=field, code=FETCH_FAILED)
    if not allow_private:
        for info in infos:
            addr = ipaddress.ip_address(info[4][0].split("%")[0])
            if not _public(addr):
                raise MediaError(f"{field}: host {host!r} resolves to a non-public address ({addr}); not fetched",
                                 403, param=field, code=FORBIDDEN)
    family, type_, proto, _, sockaddr = infos[0]
    return family, type_, proto, sockaddr


def _connect(pinned: Pinned, timeout: float | None) -> socket.socket:
    """A TCP socket connected to the pinned address literally (no name lookup at all)."""
    family, type_, proto, sockaddr = pinned
    sock = socket.socket(family, type_, proto)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the address checked for SSRF; the Host header stays the URL's host."""

    def __init__(self, host: str, port: int, pinned: Pinned, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned = pinned

    def connect(self) -> None:
        self.sock = _connect(self.pinned, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the address checked for SSRF; SNI and certificate verification are for the URL's host."""

    def __init__(self, host: str, port: int, pinned: Pinned, timeout: float,
                 context: ssl.SSLContext | None = None) -> None:
        if context is None:
            context = ssl.create_default_context()  # verifies the certificate and its host name
            context.set_alpn_protocols(["http/1.1"])
        self.tls = context
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.pinned = pinned

    def connect(self) -> None:
        sock = _connect(self.pinned, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _fetch_http(url: str, field: str, policy: FetchPolicy) -> bytes:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as err:
        raise MediaError(f"{field}: malformed URL ({err})", param=field, code=INVALID_REFERENCE) from None
    host = parts.hostname or ""
    if host not in {h.lower() for h in policy.allowed_hosts}:
        raise MediaError(f"{field}: host {host!r} is not on this server's allow-list", 403, param=field,
                         code=FORBIDDEN)
    if "@" in parts.netloc:
        raise MediaError(f"{field}: credentials in media URLs are not accepted", param=field, code=INVALID_REFERENCE)
    pinned = _resolve(host, port, field, policy.allow_private)
    cls = _PinnedHTTPSConnection if parts.scheme.lower() == "https" else _PinnedHTTPConnection
    conn = cls(host, port, pinned, policy.timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + policy.timeout_s
    try:
        conn.request("GET", target, headers={"Accept": "image/*, video/*, */*;q=0.5", "User-Agent": "restore-serve"})
        resp = conn.getresponse()
        if 300 <= resp.status < 400:  # a redirect could point inside the network
            raise MediaError(f"{field}: redirects are not followed ({resp.status} to {resp.getheader('Location')})",
                             param=field, code=FETCH_FAILED)
        if resp.status != 200:
            raise MediaError(f"{field}: cannot fetch {url}: HTTP {resp.status} {resp.reason}", param=field,
                             code=FETCH_FAILED)
        length = resp.getheader("Content-Length") or ""
        if length.isdigit() and int(length) > policy.max_bytes:
            raise _too_large(field, int(length), policy)
        chunks, size = [], 0
        while size <= policy.max_bytes:
            left = deadline - time.monotonic()  # a whole-fetch deadline: a slow drip cannot hold a worker
            if left <= 0:
                raise TimeoutError(f"no complete answer within {policy.timeout_s} s")
            if conn.sock is not None:
                conn.sock.settimeout(left)
            chunk = resp.read1(min(2**16, policy.max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except MediaError:
        raise
    except (OSError, http.client.HTTPException) as err:  # refused, reset, timeouts, TLS, malformed answers
        raise MediaError(f"{field}: cannot fetch {url}: {type(err).__name__}: {err}", param=field,
                         code=FETCH_FAILED) from None
    finally:
        conn.close()
    if size > policy.max_bytes:
        raise _too_large(field, f"more than {policy.max_bytes}", policy)
    return b"".join(chunks)


# ----------------------------------------------------------------------------- images and videos


def _check_size(w: int, h: int, field: str, policy: FetchPolicy, what: str, code: str) -> None:
    """413 naming the limit when a w×h image or frame is over max_pixels, max_side or max_aspect."""
    if w * h > policy.max_pixels:
        raise MediaError(f"{field}: {w}×{h} {what} exceeds {policy.max_pixels} pixels (max_pixels)", 413,
                         param=field, code=code)
    if max(w, h) > policy.max_side:
        raise MediaError(f"{field}: {w}×{h} {what} has a side over max_side ({policy.max_side} px)", 413,
                         param=field, code=code)
    if min(w, h) > 0 and max(w, h) / min(w, h) > policy.max_aspect:
        raise MediaError(f"{field}: {w}×{h} {what} has an aspect ratio of {max(w, h) / min(w, h):.1f}, over "
                         f"max_aspect ({policy.max_aspect:g}, long side / short side)", 413, param=field, code=code)


def _bomb(field: str, policy: FetchPolicy, detail: str) -> MediaError:
    return MediaError(f"{field}: image dimensions over the decoder's decompression-bomb limit ({detail}); this "
                      f"server accepts at most {policy.max_pixels} pixels (max_pixels)", 413, param=field,
                      code=IMAGE_TOO_LARGE)


def _check_image_header(data: bytes, field: str, policy: FetchPolicy) -> None:
    """Refuse oversized or elongated images from their header, before decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Image.DecompressionBombError as err:
        raise _bomb(field, policy, str(err).split(",")[0]) from None
    except Exception:
        return  # not an image header: decode_image reports it with its cause
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refused here without touching the
    # process-wide warning filters (requests are decoded in threads).
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        raise _bomb(field, policy, f"{w}×{h} is over {Image.MAX_IMAGE_PIXELS} pixels")
    _check_size(w, h, field, policy, "image", IMAGE_TOO_LARGE)


def load_image(url: str, field: str, policy: FetchPolicy):
    data = fetch_bytes(url, field, policy)
    _check_image_header(data, field, policy)
    try:
        image = decode_image(data, field)
    except DecodeError as err:
        from PIL import Image

        if isinstance(err.__cause__, Image.DecompressionBombError):
            raise _bomb(field, policy, str(err.__cause__).split(",")[0]) from None
        raise MediaError(str(err), param=field, code=NOT_DECODABLE) from None
    _check_size(*image.size, field, policy, "image", IMAGE_TOO_LARGE)  # formats whose header and pixels disagree
    return image


def _video_frame_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of the first video stream from the container header; None when unknown."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                return None
            ctx = container.streams.video[0].codec_context
            return (ctx.width, ctx.height) if ctx.width and ctx.height else None
    except Exception:
        return None  # decode_video reports it with its cause


def load_video(url: str, field: str, policy: FetchPolicy, frames: int):
    data = fetch_bytes(url, field, policy)
    size = _video_frame_size(data)
    if size:
        _check_size(*size, field, policy, "video frames", VIDEO_TOO_LARGE)
    try:
        video = decode_video(data, field, frames=frames)
    except DecodeError as err:
        raise MediaError(str(err), param=field, code=NOT_DECODABLE) from None
    for frame in video.frames:  # the stream header may disagree with the frames
        _check_size(*frame.size, field, policy, "video frames", VIDEO_TOO_LARGE)
    return video
