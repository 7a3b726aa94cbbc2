"""`pipelines.media.decode`: reading bytes, decoding images and sampling video frames; errors name the uri."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pipelines.batch.demo import encode_mp4
from pipelines.media.decode import DecodeError, ReadError, decode_image, decode_video, read_bytes
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
