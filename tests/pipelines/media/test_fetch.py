"""`pipelines.media.fetch`: what the online API accepts as a media reference (SSRF policy, limits)."""

from __future__ import annotations

import base64
import http.server
import io
import ipaddress
import socket
import ssl
import struct
import threading
import time
import zlib

import pytest
from PIL import Image
from pydantic import ValidationError

from pipelines.media import fetch
from pipelines.media.fetch import FetchPolicy, MediaError, fetch_bytes, load_image, load_video
from tests.helpers.images import png_b64
from tests.helpers.videos import clip

FIELD = "messages.0.content.1.image_url"


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def refused(call, *args) -> MediaError:
    with pytest.raises(MediaError) as err:
        call(*args)
    return err.value


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height, with one tiny (truncated) data chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel is decoded: refusals must come from headers."""
    def boom(*a, **k):
        raise AssertionError("decoded pixels of a refused input")

    monkeypatch.setattr(fetch, "decode_image", boom)
    monkeypatch.setattr(fetch, "decode_video", boom)


# ----------------------------------------------------------------------------- errors: status, param, code


def test_ssrf_guard_refuses_private_addresses_even_when_allowed_by_name():
    policy = FetchPolicy(allowed_hosts=["localhost", "127.0.0.1"])
    for url in ("http://localhost:1/x.png", "http://127.0.0.1:1/x.png"):
        err = refused(fetch_bytes, url, "image_url", policy)
        assert "non-public address" in str(err) and (err.status, err.code, err.param) == (
            403, "media_source_forbidden", "image_url")
    err = refused(fetch_bytes, "http://127.0.0.1:1/x.png", "image_url",  # allowed: fetched (nothing listens)
                  FetchPolicy(allowed_hosts=["127.0.0.1"], allow_private=True))
    assert "cannot fetch" in str(err) and (err.status, err.code) == (400, "media_fetch_failed")
    err = refused(fetch_bytes, "http://169.254.169.254/latest", "image_url", FetchPolicy())
    assert "allow-list" in str(err) and (err.status, err.code) == (403, "media_source_forbidden")


def test_data_uris_and_limits():
    policy = FetchPolicy()
    assert fetch_bytes("data:text/plain,hello%20there", "image_url", policy) == b"hello there"
    raw = base64.b64decode(png_b64())
    assert fetch_bytes(f"data:image/png;base64,{png_b64()}", "image_url", policy) == raw
    err = refused(fetch_bytes, "data:nothing", "image_url", policy)
    assert str(err) == "image_url: malformed data: URI" and err.code == "invalid_media_reference"
    err = refused(fetch_bytes, f"data:image/png;base64,{png_b64()}", "image_url", FetchPolicy(max_bytes=10))
    assert "larger than max_bytes (10 bytes)" in str(err) and (err.status, err.code) == (413, "media_too_large")
    for ref in ("file:///etc/passwd", "/etc/passwd", "ftp://host/x.png"):
        err = refused(fetch_bytes, ref, "image", policy)
        assert "image: unsupported reference" in str(err) and (err.status, err.code) == (400, "invalid_media_reference")
    image = load_image(f"data:image/png;base64,{png_b64()}", "image", policy)
    assert image.mode == "RGB" and image.size == (96, 96)
    err = refused(load_image, f"data:image/png;base64,{png_b64()}", "image", FetchPolicy(max_pixels=100))
    assert "96×96 image exceeds 100 pixels" in str(err) and (err.status, err.code) == (413, "image_too_large")
    err = refused(load_image, data_uri(b"not an image"), FIELD, policy)
    assert "not a decodable image" in str(err) and (err.status, err.code, err.param) == (400, "media_not_decodable", FIELD)


@pytest.mark.parametrize("url, policy, status, code", [
    ("data:nothing", FetchPolicy(), 400, "invalid_media_reference"),
    ("data:image/png;base64,@@@", FetchPolicy(), 400, "invalid_media_reference"),
    ("gopher://x/y", FetchPolicy(), 400, "invalid_media_reference"),
    ("http://evil.example/x.png", FetchPolicy(), 403, "media_source_forbidden"),
    ("http://a.example:99999/x.png", FetchPolicy(allowed_hosts=["a.example"]), 400, "invalid_media_reference"),
    ("http://u:p@a.example/x.png", FetchPolicy(allowed_hosts=["a.example"]), 400, "invalid_media_reference"),
    ("s3://bucket/key.png", FetchPolicy(), 403, "media_source_forbidden"),
    (data_uri(b"x" * 20), FetchPolicy(max_bytes=10), 413, "media_too_large"),
])
def test_every_refusal_names_param_and_code(url, policy, status, code):
    err = refused(fetch_bytes, url, FIELD, policy)
    assert (err.status, err.code, err.param) == (status, code, FIELD) and str(err).startswith(f"{FIELD}: ")


# ----------------------------------------------------------------------------- image and video size (issue #18)


def test_extreme_aspect_ratio_png_is_refused_from_its_header(no_decoding):
    # The report's input: a 173 KB 32×524288 PNG, exactly max_pixels (16,777,216) and 4.2 s / 2.2 GB to process.
    buf = io.BytesIO()
    Image.new("RGB", (32, 524288), (200, 30, 30)).save(buf, "PNG")
    assert len(buf.getvalue()) == 172673
    url = data_uri(buf.getvalue())
    err = refused(load_image, url, FIELD, FetchPolicy())
    assert (err.status, err.code, err.param) == (413, "image_too_large", FIELD)
    assert str(err) == f"{FIELD}: 32×524288 image has a side over max_side (8192 px)"
    err = refused(load_image, url, FIELD, FetchPolicy(max_side=2**20))
    assert str(err) == (f"{FIELD}: 32×524288 image has an aspect ratio of 16384.0, over max_aspect "
                        "(20, long side / short side)") and err.status == 413


def test_aspect_and_side_limits_at_their_boundaries(monkeypatch):
    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, "PNG")
        return data_uri(buf.getvalue())

    assert load_image(png(400, 20), "image", FetchPolicy()).size == (400, 20)  # aspect exactly 20
    assert "max_aspect (20," in str(refused(load_image, png(20, 401), "image", FetchPolicy()))
    assert load_image(png(8, 64), "image", FetchPolicy(max_side=64, max_aspect=8)).size == (8, 64)
    assert "max_side (63 px)" in str(refused(load_image, png(8, 64), "image", FetchPolicy(max_side=63)))
    assert "max_aspect (7.5," in str(refused(load_image, png(8, 64), "image", FetchPolicy(max_aspect=7.5)))


def test_decompression_bomb_headers_are_413_not_400(no_decoding):
    # Over twice Image.MAX_IMAGE_PIXELS: Pillow raises DecompressionBombError on open.
    err = refused(load_image, data_uri(png_header(20000, 20000)), FIELD, FetchPolicy())
    assert (err.status, err.code, err.param) == (413, "image_too_large", FIELD)
    assert "decompression-bomb limit" in str(err) and "max_pixels" in str(err) and str(err).startswith(FIELD)
    # Between MAX_IMAGE_PIXELS and twice that Pillow only warns: refused too, even with generous limits.
    generous = FetchPolicy(max_pixels=10**9, max_side=10**6, max_aspect=10**6)
    err = refused(load_image, data_uri(png_header(10000, 10000)), FIELD, generous)
    assert err.status == 413 and "decompression-bomb limit" in str(err)


def test_video_frames_checked_from_the_stream_header_and_after_decoding(no_decoding, monkeypatch):
    url = data_uri(clip(0), "video/mp4")  # 32×32 frames
    err = refused(load_video, url, "video", FetchPolicy(max_side=16), 4)
    assert str(err) == "video: 32×32 video frames has a side over max_side (16 px)"
    assert (err.status, err.code, err.param) == (413, "video_too_large", "video")
    assert "exceeds 1000 pixels (max_pixels)" in str(refused(load_video, url, "video", FetchPolicy(max_pixels=1000), 4))
    monkeypatch.undo()  # decode for real; a stream header that says nothing is checked on the frames
    monkeypatch.setattr(fetch, "_video_frame_size", lambda data: None)
    assert "max_side (16 px)" in str(refused(load_video, url, "video", FetchPolicy(max_side=16), 4))
    assert load_video(url, "video", FetchPolicy(), 4).frames[0].size == (32, 32)
    err = refused(load_video, data_uri(b"not a video", "video/mp4"), "video", FetchPolicy(), 4)
    assert (err.status, err.code) == (400, "media_not_decodable")


# ----------------------------------------------------------------------------- s3 (confused deputy)


S3 = FetchPolicy(allow_s3=True, s3_allow=["s3://media-bucket/public/"])


def test_s3_is_off_by_default_and_needs_prefixes():
    assert FetchPolicy().allow_s3 is False
    err = refused(fetch_bytes, "s3://media-bucket/public/a.png", "image", FetchPolicy())
    assert (err.status, err.code) == (403, "media_source_forbidden") and "disabled" in str(err)
    with pytest.raises(ValidationError, match="allow_s3 needs s3_allow prefixes"):
        FetchPolicy(allow_s3=True)
    for bad in ("media-bucket/public/", "s3://Media/x/", "s3://b/../x/", "s3://media-bucket/a%2e%2e/",
                "s3://media-bucket//x/", "s3://media-bucket/x/./", "http://media-bucket/"):
        with pytest.raises(ValidationError, match="s3_allow entry"):
            FetchPolicy(allow_s3=True, s3_allow=[bad])


@pytest.mark.parametrize("url", [
    "s3://media-bucket/public/../secret/a.png", "s3://media-bucket/public/%2e%2e/secret/a.png",
    "s3://media-bucket/public/..%2Fsecret/a.png", "s3://media-bucket/public//a.png", "s3://media-bucket/public/./a.png",
    "s3://media-bucket/public/a.png?versionId=1", "s3://media-bucket/public/a.png#x", "S3://media-bucket/public/a.png",
    "s3://Media-Bucket/public/a.png", "s3://media-bucket/public/a.png::file:///etc/passwd",
    "s3://media-bucket/public/*.png", "s3://media-bucket/public/", "s3://media-bucket",
    "s3://user@media-bucket/public/a.png", "s3://media-bucket:443/public/a.png",
])
def test_s3_tricks_are_refused_before_any_read(url, monkeypatch):
    monkeypatch.setattr(fetch, "filesystem", lambda *a, **k: pytest.fail(f"read {url}"))
    err = refused(fetch_bytes, url, "image", S3)
    assert (err.status, err.code) == (400, "invalid_media_reference") and "canonical s3://bucket/key" in str(err)


class FakeS3:
    """An fsspec-like store: `objects` by path; anything else raises `missing`."""

    def __init__(self, objects: dict[str, bytes], missing: type[Exception] = FileNotFoundError):
        self.objects, self.missing, self.reads = objects, missing, []

    def info(self, path):
        if path not in self.objects:
            raise self.missing(path)
        return {"type": "file", "size": len(self.objects[path])}

    def cat_file(self, path, start=None, end=None):
        self.reads.append((path, start, end))
        return self.objects[path][start:end]


def test_s3_forbidden_missing_and_denied_get_one_answer(monkeypatch):
    store = FakeS3({"media-bucket/public/a.png": b"png!", "media-bucket/secret/b.png": b"secret"})
    monkeypatch.setattr(fetch, "filesystem", lambda uri, *a: (store, uri.removeprefix("s3://")))
    assert fetch_bytes("s3://media-bucket/public/a.png", "image", S3) == b"png!"
    assert store.reads == [("media-bucket/public/a.png", 0, S3.max_bytes + 1)]  # a bounded, ranged read
    answers = set()
    for url, missing in [("s3://media-bucket/secret/b.png", FileNotFoundError),  # exists, not allowed
                         ("s3://media-bucket/publicity/b.png", FileNotFoundError),  # prefix is 'public/'
                         ("s3://other-bucket/public/a.png", FileNotFoundError),  # another bucket
                         ("s3://media-bucket/public/none.png", FileNotFoundError),  # missing key
                         ("s3://media-bucket/public/none.png", PermissionError),  # access denied
                         ("s3://media-bucket/public/none.png", TimeoutError)]:  # the store did not answer
        store.missing = missing
        err = refused(fetch_bytes, url, "image", S3)
        answers.add((err.status, err.code, err.param, str(err).replace(url, "URL")))
    assert answers == {(403, "media_source_forbidden", "image",
                        "image: URL is not readable by this server (it must exist under a prefix the operator allowed)")}
    assert store.reads == [("media-bucket/public/a.png", 0, S3.max_bytes + 1)]  # nothing else was read
    big = FetchPolicy(allow_s3=True, s3_allow=["s3://media-bucket/public/"], max_bytes=3)
    err = refused(fetch_bytes, "s3://media-bucket/public/a.png", "image", big)
    assert (err.status, err.code) == (413, "media_too_large") and len(store.reads) == 1  # refused from `info`
    whole = FetchPolicy(allow_s3=True, s3_allow=["s3://media-bucket"])
    assert fetch_bytes("s3://media-bucket/secret/b.png", "image", whole) == b"secret"
    off = FetchPolicy(allow_s3=False, s3_allow=["s3://media-bucket"])  # switched off, list kept
    assert "disabled" in str(refused(fetch_bytes, "s3://media-bucket/secret/b.png", "image", off))


@pytest.fixture
def s3_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    yield f"http://{host}:{port}"
    server.stop()


@pytest.mark.s3
def test_s3_on_a_real_store_answers_missing_and_forbidden_alike(s3_server):
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir("media-bucket")
    fs.pipe_file("media-bucket/public/a.png", base64.b64decode(png_b64()))
    fs.pipe_file("media-bucket/public/dir/x.png", b"x")
    fs.pipe_file("media-bucket/secret/b.png", base64.b64decode(png_b64()))
    policy = FetchPolicy(allow_s3=True, s3_allow=["s3://media-bucket/public/"], endpoint_url=s3_server,
                         storage_options={"skip_instance_cache": True})
    assert load_image("s3://media-bucket/public/a.png", "image", policy).size == (96, 96)
    answers = set()
    for url in ("s3://media-bucket/secret/b.png", "s3://media-bucket/public/none.png",
                "s3://no-such-bucket/public/a.png", "s3://media-bucket/public/dir"):
        err = refused(fetch_bytes, url, "image", policy)
        answers.add((err.status, err.code, str(err).replace(url, "URL")))
    assert len(answers) == 1 and answers.pop()[:2] == (403, "media_source_forbidden")


# ----------------------------------------------------------------------------- http(s): DNS pinning


@pytest.fixture
def web():
    """A loopback HTTP server: /img.png a PNG, /moved a redirect, /big claims a huge body, /drip is slow."""
    seen = []
    body = base64.b64decode(png_b64())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers["Host"]))
            if self.path == "/drip":  # a body of 1000 bytes, one byte every 0.1 s
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(30):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)
                return
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(10**9 if self.path == "/big" else len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1], seen, body
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def fake_dns(monkeypatch, answers: list[str]) -> list[str]:
    """socket.getaddrinfo answering `answers` in turn (the last one from then on); returns the hosts asked."""
    asked = []

    def getaddrinfo(host, port, *a, **k):
        asked.append(host)
        ip = answers[min(len(asked), len(answers)) - 1]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_http_connects_to_the_address_it_checked_dns_rebinding(web, monkeypatch):
    port, seen, body = web
    asked = fake_dns(monkeypatch, ["93.184.216.34", "127.0.0.1"])  # public first, loopback when asked again
    connected = []
    real_connect = fetch._connect

    def routed(pinned, timeout):
        connected.append(pinned[3])
        # This test's "internet": the public address is routed to the loopback server.
        return real_connect((*pinned[:3], ("127.0.0.1", port)), timeout)

    monkeypatch.setattr(fetch, "_connect", routed)
    policy = FetchPolicy(allowed_hosts=["images.example"])
    assert fetch_bytes(f"http://images.example:{port}/img.png", "image", policy) == body
    assert asked == ["images.example"] and connected == [("93.184.216.34", port)]
    assert seen == [("/img.png", f"images.example:{port}")]  # the Host header is the URL's host
    # The second answer (loopback) was never used; a resolver that answers loopback first is refused.
    connected.clear()
    for first in (["10.0.0.1"], ["127.0.0.1"], ["::ffff:127.0.0.1"], ["64:ff9b::a9fe:a9fe"]):
        fake_dns(monkeypatch, first)
        err = refused(fetch_bytes, f"http://images.example:{port}/img.png", "image", policy)
        assert "non-public address" in str(err) and err.status == 403
    assert connected == [] and len(seen) == 1


def test_any_private_answer_refuses_the_host(monkeypatch):
    def getaddrinfo(host, port, *a, **k):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(fetch, "_connect", lambda *a: pytest.fail("connected"))
    err = refused(fetch_bytes, "https://images.example/a.png", "image", FetchPolicy(allowed_hosts=["images.example"]))
    assert "192.168.1.1" in str(err) and err.status == 403


def test_connect_uses_the_literal_address_without_a_lookup(web, monkeypatch):
    port, _, _ = web
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("looked up a name"))
    sock = fetch._connect((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, ("127.0.0.1", port)), 5)
    assert sock.getpeername() == ("127.0.0.1", port)
    sock.close()


def test_https_wraps_the_pinned_socket_for_the_original_host(monkeypatch):
    class Context:  # what HTTPSConnection reads of a context, and a recording wrap_socket
        verify_mode, check_hostname = ssl.CERT_REQUIRED, True

        def wrap_socket(self, sock, server_hostname=None):
            self.wrapped = (sock, server_hostname)
            return sock

    a, b = socket.socketpair()
    pinned = (socket.AF_INET, socket.SOCK_STREAM, 6, ("93.184.216.34", 443))
    monkeypatch.setattr(fetch, "_connect", lambda p, timeout: a if p == pinned else pytest.fail(str(p)))
    ctx = Context()
    conn = fetch._PinnedHTTPSConnection("images.example", 443, pinned, 5, context=ctx)
    conn.connect()
    assert ctx.wrapped == (a, "images.example") and conn.sock is a
    default = fetch._PinnedHTTPSConnection("images.example", 443, pinned, 5)
    assert default.tls.check_hostname and default.tls.verify_mode.name == "CERT_REQUIRED"
    a.close()
    b.close()


def test_http_redirects_and_announced_sizes(web):
    port, seen, _ = web
    policy = FetchPolicy(allowed_hosts=["127.0.0.1"], allow_private=True, max_bytes=1000)
    err = refused(fetch_bytes, f"http://127.0.0.1:{port}/moved", "image", policy)
    assert "redirects are not followed (302 to http://169.254.169.254/latest)" in str(err)
    assert (err.status, err.code) == (400, "media_fetch_failed")
    err = refused(fetch_bytes, f"http://127.0.0.1:{port}/big", "image", policy)
    assert (err.status, err.code) == (413, "media_too_large") and "1000000000 bytes" in str(err)
    err = refused(fetch_bytes, f"http://127.0.0.1:{port}/img.png", "image", policy)
    assert err.status == 413


@pytest.mark.parametrize("ip, public", [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True), ("127.0.0.1", False),
    ("169.254.169.254", False), ("::ffff:127.0.0.1", False), ("::127.0.0.1", False), ("64:ff9b::7f00:1", False),
    ("64:ff9b::808:808", True), ("2002:7f00:1::", False), ("fe80::1", False), ("224.0.0.1", False), ("::", False),
])
def test_public_addresses(ip, public):
    assert fetch._public(ipaddress.ip_address(ip)) is public


def test_http_timeout_covers_the_whole_fetch(web):
    port, _, _ = web
    policy = FetchPolicy(allowed_hosts=["127.0.0.1"], allow_private=True, timeout_s=0.5)
    start = time.monotonic()
    err = refused(fetch_bytes, f"http://127.0.0.1:{port}/drip", "image", policy)  # each byte within 0.5 s
    assert "cannot fetch" in str(err) and "TimeoutError" in str(err) and time.monotonic() - start < 2


@pytest.fixture
def tls_web(tmp_path):
    """A loopback HTTPS server with a self-signed certificate for images.example; yields (port, SNI names, cert)."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.example")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    names = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_ctx.sni_callback = lambda sock, sni, ctx: names.append(sni)
    body = base64.b64decode(png_b64())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1], names, pem.decode(), body
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_https_to_a_pinned_address_verifies_the_url_host(tls_web, monkeypatch):
    port, names, pem, body = tls_web
    trusting = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: trusting(cadata=pem))  # trust the test cert
    fake_dns(monkeypatch, ["93.184.216.34", "127.0.0.1"])
    real_connect = fetch._connect
    monkeypatch.setattr(fetch, "_connect", lambda p, t: real_connect((*p[:3], ("127.0.0.1", port)), t)
                        if p[3] == ("93.184.216.34", port) else pytest.fail(str(p)))
    policy = FetchPolicy(allowed_hosts=["images.example", "other.example"])
    assert fetch_bytes(f"https://images.example:{port}/a.png", "image", policy) == body
    assert names == ["images.example"]  # SNI is the URL's host, not the address
    fake_dns(monkeypatch, ["93.184.216.34"])
    err = refused(fetch_bytes, f"https://other.example:{port}/a.png", "image", policy)  # same address, wrong name
    assert "certificate is not valid for 'other.example'" in str(err), str(err)
    assert (err.status, err.code) == (400, "media_fetch_failed")
