"""Training the default model: resumable to the same weights, every recipe flag runs, probes get exact targets."""

import json
import random
import signal

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
         "--kind-weights", "count=3,relation=3", "--curriculum", "3", "--blank-share", "0.3", "--count-look",
         "--count-balance", "1"]


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
    assert state["step"] == 2 and len(state["log"]) == 2 and {"relation", "tally", "count"} <= {k.split(".")[0] for k in state["probes"]}
    assert not list(ckpt.glob("*.tmp"))
    run("--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(ckpt), "--resume")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "resumed" / "training.json").read_text())["log"]
    assert [e["step"] for e in log] == [1, 2, 3, 4] and {"relation", "tally", "count", "spread", "lm"} <= log[-1].keys()
    # a retrain ships the shipped model's tokenizer (normaliser included) and chat template
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "resumed" / name).read_text() == (DEFAULT_MODEL_DIR / name).read_text()


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path):
    ckpt = tmp_path / "ckpt"
    run("--out", str(tmp_path / "m"), "--checkpoint-dir", str(ckpt), "--stop-after", "1")
    with pytest.raises(ValueError, match="different recipe.*lr"):
        run("--out", str(tmp_path / "m"), "--checkpoint-dir", str(ckpt), "--resume", "--lr", "0.01")


def test_a_checkpoint_from_before_an_option_existed_resumes_with_it_off(tmp_path):
    ckpt = tmp_path / "ckpt"
    no_balance = SMALL[:SMALL.index("--count-balance")]
    assert train.main([*no_balance, "--out", str(tmp_path / "m"), "--checkpoint-dir", str(ckpt), "--stop-after", "1"]) == 0
    state = torch.load(ckpt / "latest.pt", weights_only=True)
    del state["recipe"]["count_balance"]  # as written before --count-balance was added
    torch.save(state, ckpt / "latest.pt")
    with pytest.raises(ValueError, match="different recipe.*count_balance"):
        run("--out", str(tmp_path / "m"), "--checkpoint-dir", str(ckpt), "--resume")
    assert train.main([*no_balance, "--out", str(tmp_path / "m"), "--checkpoint-dir", str(ckpt), "--resume"]) == 0


def test_a_later_stage_starts_from_the_earlier_weights_and_records_their_recipe(tmp_path):
    run("--out", str(tmp_path / "first"))
    stage = ["--out", str(tmp_path / "second"), "--init", str(tmp_path / "first"), "--relation-words", "--motion-compare"]
    with_init, fresh = tmp_path / "second", tmp_path / "fresh"
    run(*stage, "--steps", "1", "--lr", "1e-9", "--warmup", "1")
    run("--out", str(fresh), "--steps", "1", "--lr", "1e-9", "--warmup", "1")
    first, second = weights(tmp_path / "first"), weights(with_init)
    # at a vanishing learning rate one step moves no weight measurably off its start
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)
    assert not all(torch.allclose(first[k], weights(fresh)[k], atol=1e-6) for k in first)
    record = json.loads((with_init / "training.json").read_text())
    assert record["args"]["init"] == str(tmp_path / "first") and record["init"]["args"]["steps"] == 4
    assert "log" not in record["init"] and record["init"]["steps"] == 4 and record["init"]["seconds"] > 0
    assert [e["step"] for e in record["log"]] == [1]


def test_bad_flags_are_named(capsys, tmp_path):
    for flags, message in [(["--kind-weights", "colour=2"], "--kind-weights"), (["--shape", "width=3"], "--shape"),
                           (["--resume"], "--checkpoint-dir"), (["--probe-layer", "9"], "--probe-layer"),
                           (["--init", str(tmp_path)], "--init"),
                           (["--motion-compare", "--relation-weight", "0"], "--relation-weight"),
                           (["--relation-words", "--shape", "text_heads=3"], "text_heads"),
                           (["--count-look", "--shape", "text_heads=3"], "--count-look"),
                           (["--count-high", "1.5"], "--count-high")]:
        with pytest.raises(SystemExit):
            train.main([*SMALL, *flags])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main([f for f in SMALL if f != "--count-look"])
    assert "--count-balance" in capsys.readouterr().err


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


def test_relation_words_are_gathered_by_the_fourth_head():
    for q, rel in [("is the red circle left of the blue triangle ?", ["left", "of"]),
                   ("is the red circle below the blue triangle ?", ["below"])]:
        words = q.split()
        heads = {head: [words[i] for i in idx] for _, head, _, idx in train.gather_targets("relation", q, "no", True)}
        assert heads[3] == rel and heads[1] == ["red", "circle"] and heads[2] == ["blue", "triangle"]
        assert 3 not in {head for _, head, *_ in train.gather_targets("relation", q, "no")}
    convs = train.sample_batch(random.Random(3), False, images=4, turns=6, weights=train.kind_weights("relation=5"),
                               relation_words=True)
    assert any(g[1] == 3 for c in convs for t in c.turns for g in t.gathers)


def test_motion_compare_targets_follow_the_move():
    expected = {"left": [0, 1], "right": [2, 1], "up": [1, 0], "down": [1, 2]}
    seen = set()
    for conv in train.sample_batch(random.Random(11), True, images=40, frames=4, motion_compare=True):
        for t in conv.turns:
            assert t.probes["compare"].tolist() == expected[t.answer]
            seen.add(t.answer)
    assert seen == set(expected)
    off = train.sample_batch(random.Random(11), True, images=8, frames=4)
    assert all(t.probes == {} for c in off for t in c.turns)


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


def test_a_count_look_gives_each_counted_shape_an_equal_share_whatever_its_size():
    labels = world.patch_labels(HAND)
    item = labels["item"].reshape(-1)
    for question, items in [("how many red shapes are there ?", {0, 1}), ("how many triangles are there ?", {2}),
                            ("how many green shapes are there ?", set())]:
        [(j, head, weights)] = train.count_looks(HAND, labels, question)
        assert (j, head) == (0, train.COUNT_HEAD) and weights.sum() == pytest.approx(len(items))
        assert set(item[weights > 0] - 1) == items
        for i in items:  # the large red circle and the small red square weigh the same in all
            assert weights[item == i + 1].sum() == pytest.approx(1.0)
            assert np.ptp(weights[item == i + 1]) == 0
        assert train.probe_targets(HAND, "count", question, count_look=True)["count"].tolist() == [len(items)]
    assert (item == 1).sum() > 2 * (item == 2).sum()
    assert "count" not in train.probe_targets(HAND, "count", "how many triangles are there ?")


def test_the_spread_objective_is_least_at_the_target_and_the_mass_objective_is_unchanged():
    target = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    even = target / 3
    at_target = train.attention_objective(even, target, spread=True)
    assert at_target.item() == pytest.approx(np.log(3), abs=1e-6)  # the target's entropy
    # all the mass on the target but shared out unevenly: the mass objective is content, the spread one is not
    lopsided = torch.tensor([[0.8, 0.0, 0.1, 0.1, 0.0]])
    assert train.attention_objective(lopsided, target).item() == pytest.approx(0.0, abs=1e-6)
    assert train.attention_objective(lopsided, target, spread=True) > at_target + 0.3
    assert train.attention_objective(torch.full((1, 5), 0.2), target).item() == pytest.approx(-np.log(0.6))


def test_the_sink_balance_is_zero_at_one_share_per_shape_and_grows_with_the_log_odds_error():
    # sink, then patches of two shapes (weights summing to 1 per shape), then a patch of another shape
    target = torch.tensor([[1.0, 0.5, 0.5, 1.0, 0.0], [1.0, 0.5, 0.5, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    due = torch.tensor([1 / 3, 0.2, 0.2, 4 / 15, 0.0])  # the sink's share 1/(n+1), however the rest is shared
    assert train.sink_balance(due[None], target[:1]).item() == pytest.approx(0.0, abs=1e-9)
    heavy = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.1])  # odds 1 where 1/2 is due: error log 2
    probs = torch.stack([due, heavy, heavy])
    # the count-zero row (no shape weighed) is left to the spread objective
    assert train.sink_balance(probs, target).item() == pytest.approx(np.log(2) ** 2 / 2, rel=1e-5)
    assert train.sink_balance(heavy[None], target[2:]).item() == 0.0


def test_count_turns_carry_spread_looks_at_the_answering_token():
    convs = train.sample_batch(random.Random(7), False, images=6, turns=6, weights=train.kind_weights("count=6"),
                               count_look=True)
    turns = [t for c in convs for t in c.turns]
    assert any(t.spreads for t in turns)
    for t in turns:
        assert bool(t.spreads) == t.question.startswith("how many") == ("count" in t.probes)
        if t.spreads:
            assert round(t.spreads[0][2].sum()) == world.NUMBERS.index(t.answer) == t.probes["count"][0]
    spreads: list = []
    processor = _processor()
    _, targets, _, _, _ = train.encode(processor, convs, spreads=spreads)
    assert len(spreads) == sum(len(t.spreads) for t in turns)
    for row, pos, head, _ in spreads:
        # the last prompt token, which predicts the count
        assert head == train.COUNT_HEAD and targets[row, pos] == -100
        assert processor.tokenizer.decode([int(targets[row, pos + 1])]) in world.NUMBERS


def _processor():
    from restore.zoo import architecture

    return architecture.build()[1]


def test_right_padded_rows_need_no_padding_mask():
    # `losses` runs the text model without a padding mask: under causal attention no real token sees a pad after it
    from restore.zoo import architecture

    model, processor = architecture.build()
    convs = train.sample_batch(random.Random(3), False, images=2, turns=3)
    convs[1].turns = convs[1].turns[:1]  # a shorter second row, padded on the right
    ids, *_ = train.encode(processor, convs)
    real = ids != processor.tokenizer.pad_token_id
    assert not real[1].all()
    embeds = torch.randn(*ids.shape, model.config.text_config.hidden_size)
    lm = model.model.language_model.eval()
    with torch.no_grad():
        masked = lm(inputs_embeds=embeds, attention_mask=real.long()).last_hidden_state
        unmasked = lm(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(unmasked[real], masked[real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[~real], masked[~real])


def test_count_high_asks_about_the_most_frequent_colour_or_shape():
    rng = random.Random(5)
    asked = {train.most_counted(HAND, rng) for _ in range(40)}
    # red is the only colour with two shapes; every shape has one
    assert asked == {("how many red shapes are there ?", "two")} | {
        (f"how many {world.PLURALS[s]} are there ?", "one") for s in ("circle", "square", "triangle")}
    weights = train.kind_weights("count=6")
    for conv in train.sample_batch(random.Random(8), False, images=6, weights=weights, count_high=1.0):
        scene_max = {}
        for t in conv.turns:
            if t.question.startswith("how many"):
                scene_max.setdefault(t.question.split()[3] == "shapes", set()).add(t.answer)
        assert all(len(answers) == 1 for answers in scene_max.values())
    # off, the training stream is the one earlier stages were trained on
    plain = train.sample_batch(random.Random(8), False, images=3, weights=weights)
    off = train.sample_batch(random.Random(8), False, images=3, weights=weights, count_high=0.0)
    assert [t.question for c in plain for t in c.turns] == [t.question for c in off for t in c.turns]


def test_ctrl_c_checkpoints_the_step_in_progress_and_a_resume_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    run("--out", str(tmp_path / "straight"))
    sample, calls = train.sample_batch, []

    def interrupted_in_step_two(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # arrives mid-step, as a user's Ctrl-C does
        return sample(*a, **k)

    monkeypatch.setattr(train, "sample_batch", interrupted_in_step_two)
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed"
    assert train.main([*SMALL, "--out", str(out), "--checkpoint-dir", str(ckpt)]) == 130
    assert torch.load(ckpt / "latest.pt", weights_only=True)["step"] == 2 and not out.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(train, "sample_batch", sample)
    run("--out", str(out), "--checkpoint-dir", str(ckpt), "--resume")
    a, b = weights(tmp_path / "straight"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
