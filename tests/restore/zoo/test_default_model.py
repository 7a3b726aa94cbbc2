"""The shipped default model: in the package, small, documented, loads offline and answers fixed questions."""

import socket

import pytest

from restore.engine import Engine
from restore.hub import DEFAULT_MODEL_DIR
from restore.request import Request
from restore.zoo import world
from tests.helpers.scenes import HAND

# Questions about tests.scenes.HAND (a large red circle top left, a small red square in the centre,
# a large blue triangle bottom right, the digit 7 top right) with the answers the world defines.
FIXED = [
    ("is there a blue triangle ?", "yes"),
    ("is there a green circle ?", "no"),
    ("is there a red square ?", "yes"),
    ("what colour is the large triangle ?", "blue"),
    ("what colour is the small square ?", "red"),
    ("how many triangles are there ?", "one"),
]


def test_default_model_is_shipped_small_and_documented():
    files = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md"} <= files
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 50 * 2**20, f"{size / 2**20:.1f} MiB"
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "python -m restore.zoo.train" in card
    for kind in world.QUESTION_TYPES:
        assert f"| {kind} |" in card, kind


@pytest.fixture(scope="module")
def offline_engine():
    def refuse(*args, **kwargs):
        raise OSError("network access during an offline load")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        yield Engine.from_pretrained("default")


def test_default_model_answers_fixed_questions_offline(offline_engine):
    image = world.render(HAND)
    results = offline_engine.generate([Request(q, images=[image]) for q, _ in FIXED], max_new_tokens=4)
    answers = [world.normalise(r.text) for r in results]
    assert answers == [a for _, a in FIXED]
    assert all(r.stats.visual_tokens == world.GRID**2 for r in results)
