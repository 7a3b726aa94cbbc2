"""Training the default model: resumable to the same weights, every recipe flag runs, probes get exact targets."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from restore.hub import DEFAULT_MODEL_DIR
from restore.zoo import train, world
from tests.helpers.scenes import HAND

# Every optional part of the recipe on, at a size that runs in seconds on one CPU thread.
SMALL = ["--steps", "4", "--warmup", "2", "--images", "1", "--turns", "4", "--clip-share", "0.4", "--threads", "1",
         "--eval-every", "0", "--card-n", "0", "--relation-weight", "1", "--tally-weight", "1",
         "--kind-weights", "count=3,relation=3", "--curriculum", "3", "--blank-share", "0.3"]


def run(*extra: str) -> None:
    assert train.main([*SMALL, *extra]) == 0


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    run("--out", str(tmp_path / "straight"))
    ckpt = tmp_path / "ckpt"
    run("--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "--stop-after", "2")
    assert not (tmp_path / "resumed").exists() and (ckpt / "latest.pt").exists()
    state = torch.load(ckpt / "latest.pt", weights_only=True)
    assert state["step"] == 2 and len(state["log"]) == 2 and {"relation", "tally"} <= {k.split(".")[0] for k in state["probes"]}
    assert not list(ckpt.glob("*.tmp"))
    run("--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(ckpt), "--resume")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "resumed" / "training.json").read_text())["log"]
    assert [e["step"] for e in log] == [1, 2, 3, 4] and {"relation", "tally", "lm"} <= log[-1].keys()
    # a retrain ships the shipped model's tokenizer (normaliser included) and chat template
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "resumed" / name).read_text() == (DEFAULT_MODEL_DIR / name).read_text()


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path):
    ckpt = tmp_path / "ckpt"
    run("--out", str(tmp_path / "m"), "--checkpoint-dir", str(ckpt), "--stop-after", "1")
    with pytest.raises(ValueError, match="different recipe.*lr"):
        run("--out", str(tmp_path / "m"), "--checkpoint-dir", str(ckpt), "--resume", "--lr", "0.01")


def test_bad_flags_are_named(capsys):
    for flags, message in [(["--kind-weights", "colour=2"], "--kind-weights"), (["--shape", "width=3"], "--shape"),
                           (["--resume"], "--checkpoint-dir"), (["--probe-layer", "9"], "--probe-layer")]:
        with pytest.raises(SystemExit):
            train.main([*SMALL, *flags])
        assert message in capsys.readouterr().err


def test_probe_targets_are_exact():
    # HAND: red circle top left, red square centre, blue triangle bottom right
    compare = train.probe_targets(HAND, "relation", "is the red circle left of the blue triangle ?")["compare"]
    assert compare.tolist() == [0, 0]  # left of (column order) and above (row order)
    compare = train.probe_targets(HAND, "relation", "is the blue triangle above the red square ?")["compare"]
    assert compare.tolist() == [2, 2]
    tally = train.probe_targets(HAND, "count", "how many red shapes are there ?")["tally"]
    colours = dict(zip(world.COLOUR_NAMES, tally[: len(world.COLOUR_NAMES)], strict=True))
    shapes = dict(zip(world.SHAPES, tally[len(world.COLOUR_NAMES) :], strict=True))
    assert colours == {"red": 2, "green": 0, "blue": 1, "yellow": 0, "purple": 0, "orange": 0}
    assert shapes == {"circle": 1, "square": 1, "triangle": 1, "cross": 0}
    assert train.probe_targets(HAND, "position", "where is the red circle ?") == {}


def test_every_relation_and_count_turn_carries_its_probe_target():
    convs = train.sample_batch(random.Random(3), False, images=8, turns=6, weights=train.kind_weights("count=5,relation=5"))
    kinds = [("compare" in t.probes, "tally" in t.probes, t.question) for c in convs for t in c.turns]
    assert any(k[0] for k in kinds) and any(k[1] for k in kinds)
    for has_compare, has_tally, q in kinds:
        assert has_compare == (q.startswith("is the ")) and has_tally == q.startswith("how many")


def test_curriculum_and_blank_scenes():
    assert train.scene_objects(0, 100) == (2, 3) and train.scene_objects(99, 100) == (2, 6)
    assert train.scene_objects(100, 100) == train.scene_objects(0, 0) == (2, 7)
    convs = train.sample_batch(random.Random(0), False, images=12, turns=3, objects=(2, 3), blank_share=0.5)
    counts = [int(c.labels[0]["centre"].sum()) for c in convs]
    assert 0 in counts or 1 in counts  # a blank scene: at most the glyph
    assert max(counts) <= 4
    # off, the stream of scenes is the one the shipped weights were trained on
    a = train.sample_batch(random.Random(5), False, images=3, turns=3)
    b = train.sample_batch(random.Random(5), False, images=3, turns=3, blank_share=0.0)
    assert [t.question for c in a for t in c.turns] == [t.question for c in b for t in c.turns]
    assert all(np.array_equal(np.asarray(x.images[0]), np.asarray(y.images[0])) for x, y in zip(a, b))


def test_progress_bar_without_tqdm_logs(caplog):
    bar = train._LogBar(total=3, initial=1, every=0.0)
    with caplog.at_level("INFO", logger="restore.zoo.train"):
        bar.set_postfix({"lm": "1.000"})
        bar.update(1)
        bar.update(1)
    assert "train 3/3" in caplog.text and "lm=1.000" in caplog.text
