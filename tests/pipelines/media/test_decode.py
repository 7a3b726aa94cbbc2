"""`pipelines.media.decode`: reading bytes, decoding images and sampling video frames; errors name the uri."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps, features

from pipelines.batch.demo import encode_mp4
from pipelines.media.decode import BACKGROUND, DecodeError, ReadError, decode_image, decode_video, read_bytes
from pipelines.media.fetch import FetchPolicy, load_image
from restore.zoo.world import scene_image
from tests.helpers.videos import clip


def test_decoders_sample_uniformly_and_shrink():
    video = decode_video(clip(0), "c.mp4", frames=4)  # 6 frames at 4 fps
    assert len(video.frames) == 4 and video.timestamps == sorted(set(video.timestamps))
    assert video.source_fps == 4 and video.duration == 1.5 and video.frames[0].size == (32, 32)
    assert len(decode_video(clip(0), "c.mp4", frames=16).frames) == 6  # never the same frame twice
    # As many frames as asked: every frame, the first included (the targets fall midway between frames).
    four = encode_mp4([Image.new("RGB", (32, 32), (60 * i, 0, 0)) for i in range(4)])
    assert decode_video(four, "four.mp4", frames=4).timestamps == [0.0, 0.25, 0.5, 0.75]
    img = scene_image(0, 200)
    buf = io.BytesIO()
    img.crop((0, 0, 200, 100)).save(buf, "PNG")
    small = decode_image(buf.getvalue(), "wide.png", max_pixels=5000)
    assert small.size[0] * small.size[1] <= 5000 and abs(small.size[0] / small.size[1] - 2) < 0.05


def test_bad_bytes_raise_errors_naming_the_uri_and_the_cause(tmp_path):
    with pytest.raises(DecodeError, match=r"^e\.png: empty file \(0 bytes\)$"):
        decode_image(b"", "e.png")
    with pytest.raises(DecodeError, match=r"^t\.txt: not a decodable image \(UnidentifiedImageError: cannot identify"):
        decode_image(b"hello", "t.txt")
    buf = io.BytesIO()
    scene_image(0, 64).save(buf, "PNG")
    with pytest.raises(DecodeError, match="cut.png: not a decodable image"):
        decode_image(buf.getvalue()[:200], "cut.png")  # truncated: only shows when the pixels are read
    with pytest.raises(DecodeError, match="txt.mp4: not a decodable video"):
        decode_video(b"just some text, not a container", "txt.mp4")
    with pytest.raises(DecodeError, match="empty file"):
        decode_video(b"", "e.mp4")
    with pytest.raises(ReadError, match=f"{tmp_path / 'none.png'}: cannot read \\(FileNotFoundError"):
        read_bytes(str(tmp_path / "none.png"))
    (tmp_path / "ok.bin").write_bytes(b"abc")
    assert read_bytes(str(tmp_path / "ok.bin")) == b"abc"
    rgba = io.BytesIO()
    Image.new("RGBA", (5, 4), (1, 2, 3, 4)).save(rgba, "PNG")
    out = decode_image(rgba.getvalue(), "rgba.png")
    assert out.mode == "RGB" and out.size == (5, 4)


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _halves(size=(40, 20), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half `left`, right half `right`: every flip and rotation of it looks different."""
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def _near(pixel, want, tol=12):
    return all(abs(int(p) - w) <= tol for p, w in zip(pixel, want))


def test_multi_image_files_give_their_first_image():
    pages = [Image.new("RGB", (30, 20), (250, 0, 0)), Image.new("RGB", (10, 10), (0, 250, 0)),
             Image.new("L", (5, 5), 9)]
    tiff = _encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(tiff)).n_frames == 3
    out = decode_image(tiff, "pages.tif")
    assert out.mode == "RGB" and out.size == (30, 20) and out.getpixel((15, 10)) == (250, 0, 0)
    gif = _encoded(pages[0], "GIF", save_all=True, append_images=[pages[1].resize((30, 20))])
    assert _near(decode_image(gif, "anim.gif").getpixel((0, 0)), (250, 0, 0))


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow cannot read or write AVIF")
def test_avif_decodes():
    out = decode_image(_encoded(_halves(), "AVIF", quality=90), "photo.avif")
    assert out.mode == "RGB" and out.size == (40, 20)
    assert _near(out.getpixel((5, 10)), (255, 0, 0), 24) and _near(out.getpixel((35, 10)), (0, 0, 255), 24)
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # transparent red: the background shows
    assert _near(decode_image(_encoded(rgba, "AVIF", quality=90), "a.avif").getpixel((8, 8)), BACKGROUND, 8)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # a phone held upright: stored sideways, shown rotated 90° clockwise
    photo = decode_image(_encoded(_halves(), "JPEG", exif=exif, quality=95), "phone.jpg")
    assert photo.size == (20, 40)
    assert _near(photo.getpixel((10, 5)), (255, 0, 0), 24) and _near(photo.getpixel((10, 35)), (0, 0, 255), 24)
    # Every orientation, losslessly: the same pixels as PIL.ImageOps.exif_transpose gives.
    stored = _halves((6, 4))
    stored.putpixel((0, 0), (0, 255, 0))
    for value in range(1, 9):
        exif[ExifTags.Base.Orientation] = value
        data = _encoded(stored, "PNG", exif=exif)
        want = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        got = decode_image(data, f"o{value}.png")
        assert got.size == want.size and got.tobytes() == want.tobytes(), value
    # max_pixels still applies, and the rotated shape is kept.
    small = decode_image(_encoded(_halves((400, 200)), "JPEG", exif=exif), "big.jpg", max_pixels=5000)
    assert small.size[0] * small.size[1] <= 5000 and abs(small.size[1] / small.size[0] - 2) < 0.05


def test_high_bit_depth_maps_to_8_bit_grey_levels():
    levels = np.arange(256)
    grad16 = Image.fromarray((levels * 257).astype(np.uint16)[None].repeat(3, 0))  # 0..65535
    assert grad16.mode == "I;16"
    png = _encoded(grad16, "PNG")
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    for data, name in ((png, "g16.png"), (_encoded(grad16, "TIFF"), "g16.tif"), (_encoded(grad16, "PPM"), "g16.pgm")):
        out = np.asarray(decode_image(data, name))
        assert out.shape == (3, 256, 3) and (out == levels[None, :, None]).all(), name
    # Stored range, not a per-image stretch: a dark 16-bit picture stays dark; rounding at the midpoints.
    odd = Image.fromarray(np.array([[0, 128, 129, 1000, 32767, 32768, 65534, 65535]], dtype=np.uint16))
    assert np.asarray(decode_image(_encoded(odd, "PNG"), "odd.png"))[0, :, 0].tolist() == [
        0, 0, 1, 4, 127, 128, 255, 255]
    # Float (mode F): 0..1 scales by 255; 0..255 is kept; any other range is stretched min..max; NaN is the min.
    unit = Image.fromarray((levels / 255).astype(np.float32)[None])
    assert unit.mode == "F"
    assert (np.asarray(decode_image(_encoded(unit, "TIFF"), "unit.tif"))[0, :, 0] == levels).all()
    byte = Image.fromarray(np.array([[0.0, 7.0, 200.0, 255.0]], dtype=np.float32))
    assert np.asarray(decode_image(_encoded(byte, "TIFF"), "b.tif"))[0, :, 0].tolist() == [0, 7, 200, 255]
    wide = Image.fromarray(np.array([[-10.0, 0.0, 10.0, np.nan]], dtype=np.float32))
    assert np.asarray(decode_image(_encoded(wide, "TIFF"), "w.tif"))[0, :, 0].tolist() == [0, 128, 255, 0]


def test_every_mode_converts_to_rgb():
    assert decode_image(_encoded(Image.new("1", (4, 4), 1), "PNG"), "one.png").getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(_encoded(Image.new("1", (4, 4), 0), "BMP"), "zero.bmp").getpixel((0, 0)) == (0, 0, 0)
    assert decode_image(_encoded(Image.new("L", (4, 4), 77), "PNG"), "l.png").getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image(_encoded(pal, "PNG"), "p.png").getpixel((2, 2)) == (10, 200, 30)
    cmyk = decode_image(_encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95), "c.jpg")
    assert _near(cmyk.getpixel((4, 4)), (255, 0, 0))
    assert decode_image(_encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "TIFF"), "c.tif").getpixel(
        (1, 1)) == (255, 0, 0)
    ycc = decode_image(_encoded(Image.new("RGB", (8, 8), (20, 120, 220)), "JPEG", quality=100), "y.jpg")
    assert _near(ycc.getpixel((4, 4)), (20, 120, 220), 4)


def test_transparency_is_composited_on_the_background():
    assert BACKGROUND == (128, 128, 128)
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))  # fully transparent, red hidden underneath
    rgba.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    rgba.putpixel((2, 0), (0, 0, 255, 128))  # half-transparent blue
    for fmt, name in (("PNG", "a.png"), ("TIFF", "a.tif"), ("WEBP", "a.webp")):
        out = decode_image(_encoded(rgba, fmt, **({"lossless": True} if fmt == "WEBP" else {})), name)
        assert out.mode == "RGB" and out.getpixel((0, 0)) == BACKGROUND and out.getpixel((3, 1)) == BACKGROUND
        assert out.getpixel((1, 0)) == (0, 0, 255)
        assert _near(out.getpixel((2, 0)), (64, 64, 192), 2)
    la = Image.new("LA", (2, 2), (255, 0))
    la.putpixel((1, 1), (40, 255))
    out = decode_image(_encoded(la, "PNG"), "la.png")
    assert out.getpixel((0, 0)) == BACKGROUND and out.getpixel((1, 1)) == (40, 40, 40)
    # Palette transparency (GIF, PNG tRNS) and an RGB colour key (PNG tRNS).
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    for fmt in ("GIF", "PNG"):
        out = decode_image(_encoded(pal, fmt, transparency=0), f"p.{fmt.lower()}")
        assert out.getpixel((0, 0)) == BACKGROUND and out.getpixel((1, 1)) == (0, 255, 0), fmt
    key = Image.new("RGB", (2, 1), (255, 0, 0))
    key.putpixel((1, 0), (9, 9, 9))
    out = decode_image(_encoded(key, "PNG", transparency=(255, 0, 0)), "key.png")
    assert out.getpixel((0, 0)) == BACKGROUND and out.getpixel((1, 0)) == (9, 9, 9)
    grey16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    out = decode_image(_encoded(grey16, "PNG", transparency=0), "k16.png")
    assert out.getpixel((0, 0)) == BACKGROUND and out.getpixel((1, 0)) == (255, 255, 255)


def test_the_serve_path_gets_the_same_decoding():
    rgba = Image.new("RGBA", (6, 4), (255, 0, 0, 0))
    uri = "data:image/png;base64," + base64.b64encode(_encoded(rgba, "PNG")).decode()
    img = load_image(uri, "messages[0].content[1].image_url", FetchPolicy())
    assert img.mode == "RGB" and img.size == (6, 4) and img.getpixel((3, 2)) == BACKGROUND
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    uri = "data:image/jpeg;base64," + base64.b64encode(_encoded(_halves(), "JPEG", exif=exif)).decode()
    assert load_image(uri, "image", FetchPolicy()).size == (20, 40)


def test_unreadable_or_unknown_exif_orientation_keeps_the_pixels(caplog):
    # Orientation (0x0112) stored as ASCII "abcd", then as the undefined value 99 (big-endian IFD).
    ascii_tag = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x02\x00\x05\x00\x00\x00\x1a\x00\x00\x00\x00\x00\x00\x00abcd\x00"
    out = decode_image(_encoded(_halves(), "JPEG", exif=ascii_tag), "badexif.jpg")
    assert out.size == (40, 20) and _near(out.getpixel((5, 10)), (255, 0, 0), 24)
    assert "badexif.jpg: unreadable EXIF orientation" in caplog.text
    unknown = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x63\x00\x00"
    assert decode_image(_encoded(_halves(), "JPEG", exif=unknown), "o99.jpg").size == (40, 20)
