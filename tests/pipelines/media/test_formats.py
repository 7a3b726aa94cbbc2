"""`pipelines.media.formats`: the image extensions come from what Pillow decodes; globs vs literal paths."""

from __future__ import annotations

import io

import pytest
from PIL import Image, features

from pipelines.media.decode import decode_image
from pipelines.media.formats import VIDEO_EXTENSIONS, image_extensions, is_explicit_glob


def test_image_extensions_cover_common_formats_and_leave_out_non_pictures():
    exts = image_extensions()
    assert exts == tuple(sorted(exts)) and all(e == e.lower() and e.startswith(".") for e in exts)
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".tga"):
        assert ext in exts
    if features.check("avif"):
        assert ".avif" in exts
    if features.check("jpg_2000"):
        assert ".jp2" in exts
    # Stubs Pillow cannot decode, documents, icons and textures, videos: not listed as images.
    for ext in (".h5", ".grib", ".bufr", ".wmf", ".eps", ".pdf", ".ico", ".cur", ".dds", ".mpg", ".fits", ".iim"):
        assert ext not in exts
    assert not set(exts) & set(VIDEO_EXTENSIONS)
    assert {".mp4", ".webm", ".mkv", ".avi", ".mov"} <= set(VIDEO_EXTENSIONS)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".gif", ".tiff", ".ppm", ".tga", ".avif", ".jp2"])
def test_listed_formats_round_trip_through_decode_image(ext):
    if ext not in image_extensions():
        pytest.skip(f"this Pillow cannot decode {ext}")
    fmt = Image.registered_extensions()[ext]
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 40, 40)).save(buf, fmt)
    out = decode_image(buf.getvalue(), f"x{ext}")
    assert out.mode == "RGB" and out.size == (16, 8)
    r, g, b = out.getpixel((8, 4))
    assert abs(r - 200) < 16 and abs(g - 40) < 16 and abs(b - 40) < 16


def test_is_explicit_glob_only_for_missing_paths_with_glob_characters():
    existing = {"in/photo[1].jpg", "in/what?.png", "in/a*b"}
    calls = []

    def exists(p):
        calls.append(p)
        return p in existing

    assert not is_explicit_glob("in/photo[1].jpg", exists)  # exists: literal, never expanded
    assert not is_explicit_glob("in/what?.png", exists)
    assert not is_explicit_glob("in/a*b", exists)
    assert is_explicit_glob("in/*.jpg", exists)
    assert is_explicit_glob("s3://bucket/img[0-9].png", exists)
    assert is_explicit_glob("in/?.png", exists)
    n = len(calls)
    assert not is_explicit_glob("in/plain.jpg", exists) and len(calls) == n  # no glob chars: no lookup
