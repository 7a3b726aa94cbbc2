"""Token maps: kept tokens outlined, merged groups share a colour, a PNG from the library and the CLI."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.cli import main
from restore import Engine
from restore.tokens import Assignment
from restore.viz import render_token_map, token_map
from tests.helpers.images import make_image

GREY = (128, 128, 128)
CELL = 10


def grey(size=(60, 60)) -> Image.Image:
    return Image.new("RGB", size, GREY)


def corner(token: int, grid=(1, 6, 6), cell: int = CELL, top: int = 0) -> tuple[int, int]:
    t, h, w = grid
    f, r, c = token // (h * w), (token // w) % h, token % w
    return f * (w * cell + 4) + c * cell, top + r * cell


def pixel(img: Image.Image, token: int, dx: int, dy: int, grid=(1, 6, 6), top: int = 0) -> tuple[int, int, int]:
    x, y = corner(token, grid, top=top)
    return img.getpixel((x + dx, y + dy))


def test_size_kept_outlined_dropped_dimmed():
    img = token_map(grey(), Assignment.keep(torch.tensor([0, 7, 20]), 36), (6, 6), cell=CELL, legend=False)
    assert img.size == (60, 60) and img.mode == "RGB"
    for kept in (0, 7, 20):
        assert pixel(img, kept, 0, 0) != GREY  # the outline on the cell border
        assert pixel(img, kept, 1, 1) != GREY
        assert pixel(img, kept, 5, 5) == GREY  # a kept token is shown as it is
    dropped = pixel(img, 3, 5, 5)
    assert all(v < g for v, g in zip(dropped, GREY))
    # Plain kept indices work as well as an Assignment; title and legend add bands above and below.
    again = token_map(grey(), [0, 7, 20], (1, 6, 6), cell=CELL, title="x")
    assert again.size == (60, 60 + 22 + 18)


def test_merged_groups_share_a_colour_across_a_strip_of_frames():
    # 2 frames of 2x3: slot 0 = {0, 1, 6, 7} (anchor 0), slot 1 = {3} alone, slot 2 = {4, 5, 10, 11} (anchor 5).
    slot = torch.tensor([0, 0, -1, 1, 2, 2, 0, 0, -1, -1, 2, 2])
    a = Assignment(slot=slot, rep=torch.tensor([0, 3, 5]))
    grid = (2, 2, 3)
    img = token_map([grey((30, 20)), grey((30, 20))], a, grid, cell=CELL, legend=False)
    assert img.size == (2 * 30 + 4, 20)
    centre = {i: pixel(img, i, 5, 5, grid) for i in range(12)}
    assert centre[1] == centre[6] == centre[7] != GREY  # group 0, in both frames
    assert centre[4] == centre[10] == centre[11] != GREY  # group 2
    assert centre[1] != centre[4]
    assert centre[3] == GREY  # a token kept alone is not tinted
    # The anchors carry their sizes: light text on them.
    big = token_map([grey((30, 20)), grey((30, 20))], a, grid, cell=30, legend=False)
    x, y = corner(0, grid, cell=30)
    inside = np.asarray(big.crop((x + 6, y + 6, x + 24, y + 24)))
    assert (inside.min(axis=-1) > 200).any() and (inside.max(axis=-1) < 60).any()  # white text, black stroke


def test_frames_and_grid_must_agree():
    with pytest.raises(ValueError, match="3 frames"):
        token_map([grey(), grey()], Assignment.identity(108), (3, 6, 6))
    with pytest.raises(ValueError, match="covers 36 tokens"):
        token_map(grey(), Assignment.identity(36), (2, 6, 6))


@pytest.fixture(scope="module")
def tiny_engine():
    return Engine.from_pretrained("random:llava-tiny")


@pytest.mark.parametrize("method,restore", [("divprune", True), ("visionzip", False), ("pool", False)])
def test_render_outlines_exactly_the_budget(tiny_engine, method, restore):
    img = render_token_map(tiny_engine, make_image(3, (48, 40)), method, 8, restore, cell=CELL, legend=False)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = Image.open(io.BytesIO(buf.getvalue()))
    assert png.format == "PNG" and png.size == (60, 22 + 60)  # llava-tiny: 6x6 tokens, a title band
    outlined = [i for i in range(36) if pixel(img, i, 1, 1, top=22) == (255, 255, 255)]
    assert len(outlined) == 8


def test_render_refuses_what_it_cannot_draw(tiny_engine):
    with pytest.raises(ValueError, match="inside the LLM"):
        render_token_map(tiny_engine, make_image(3), "fastv", 8)


def test_cli_writes_png(tmp_path, capsys):
    src = tmp_path / "in.png"
    make_image(5, (64, 48)).save(src)
    for flag in ("--restore", "--no-restore"):
        out = tmp_path / f"map{flag}.png"
        code = main(["viz", str(src), "--method", "tome", "--budget", "0.25", flag, "--model", "random:llava-tiny",
                     "-o", str(out)])
        assert code == 0 and "wrote" in capsys.readouterr().out
        with Image.open(out) as png:
            assert png.format == "PNG" and png.size == (6 * 64, 22 + 6 * 64 + 18)
    assert main(["viz", str(tmp_path / "missing.png"), "--method", "pool", "--budget", "4",
                 "--model", "random:llava-tiny", "-o", str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
