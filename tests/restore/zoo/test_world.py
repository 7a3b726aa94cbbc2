"""The synthetic world: deterministic, and its answers right on hand-made scenes."""

import random

import numpy as np
import pytest

from restore.zoo import architecture, world
from restore.zoo.train import DESCRIPTIVE, encode, gather_targets, look_targets, sample_batch
from restore.zoo.world import Clip, Scene
from tests.helpers.scenes import HAND


class Always:
    """An rng stand-in whose random() and choice() take fixed branches."""

    def __init__(self, r: float, pick: int = 0) -> None:
        self.r, self.pick = r, pick

    def random(self) -> float:
        return self.r

    def choice(self, seq):
        return list(seq)[self.pick % len(seq)]


def test_same_seed_same_items_and_pixels():
    a, b = world.benchmark(7, 2), world.benchmark(7, 2)
    assert [(i.type, i.question, i.answer) for i in a] == [(i.type, i.question, i.answer) for i in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for i, j in zip(a, b) for x, y in zip(i.images, j.images))
    c = world.benchmark(8, 2)
    assert [i.question for i in a] != [i.question for i in c]


def test_every_type_is_asked_and_images_have_576_patches():
    items = world.benchmark(0, 1)
    assert [i.type for i in items] == world.QUESTION_TYPES + ["caption"]
    for it in items:
        assert all(im.size == (96, 96) for im in it.images)
        assert (96 // world.PATCH) ** 2 == 576
    motion = next(i for i in items if i.type == "motion")
    assert 4 <= len(motion.images) <= 8 and motion.answer in world.DIRECTIONS


def test_places_and_caption_of_a_hand_made_scene():
    assert [o.place for o in HAND.objects] == ["top left", "center", "bottom right"]
    cap = world.caption(HAND)
    assert cap.startswith("top left : large red circle , top : empty , top right : digit 7 , ")
    assert world.caption_objects(cap) == {
        ("top left", "red", "circle"), ("center", "red", "square"), ("bottom right", "blue", "triangle"),
        ("top right", "digit", "7"),
    }
    assert world.caption_f1(cap, cap) == 1.0
    missing_one = "top left : large red circle , center : small red square , top right : digit 7"
    assert world.caption_f1(missing_one, cap) == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert world.caption_f1("top left : large green circle", cap) == 0.0


def test_questions_of_a_hand_made_scene():
    # random() < 0.5 picks colour counting / "present" existence; choice picks the first candidate.
    assert world.ask(HAND, "count", Always(0.1)) == ("how many red shapes are there ?", "two")
    assert world.ask(HAND, "count", Always(0.9, pick=2)) == ("how many triangles are there ?", "one")
    assert world.ask(HAND, "position", Always(0.1, pick=2)) == ("where is the blue triangle ?", "bottom right")
    assert world.ask(HAND, "attribute", Always(0.1, pick=1)) == ("what colour is the small square ?", "red")
    assert world.ask(HAND, "existence", Always(0.1)) == ("is there a red circle ?", "yes")
    q, a = world.ask(HAND, "existence", Always(0.9))
    assert a == "no" and q not in {f"is there a {o.name} ?" for o in HAND.objects}
    assert world.ask(HAND, "glyph", Always(0.1)) == ("what digit is written at the top right ?", "7")
    assert world.ask(Scene(HAND.objects), "glyph", Always(0.1)) is None


def test_relation_answers_follow_geometry():
    rng = random.Random(0)
    circle, square, triangle = HAND.objects
    for _ in range(50):
        q, a = world.ask(HAND, "relation", rng)
        truth = {
            "is the red circle left of the blue triangle ?": "yes",
            "is the blue triangle left of the red circle ?": "no",
            "is the red circle above the red square ?": "yes",
            "is the red square below the red circle ?": "yes",
            "is the blue triangle above the red square ?": "no",
            "is the red square right of the red circle ?": "yes",
        }
        if q in truth:
            assert a == truth[q]
        rel = next(r for r in ("left of", "right of", "above", "below") if f" {r} " in q)
        first = next(o for o in HAND.objects if q.startswith(f"is the {o.name} "))
        second = next(o for o in HAND.objects if q.endswith(f"the {o.name} ?") and o is not first)
        assert a == ("yes" if world.RELATIONS[rel](first, second) else "no")


def test_motion_answers_match_the_frames():
    for seed in range(20):
        clip = world.random_clip(random.Random(seed), frames=5)
        assert len(clip.frames) == 5 and clip.moves
        for name, direction in clip.moves.items():
            track = [next(o for o in f.objects if o.name == name) for f in clip.frames]
            dx, dy = track[-1].cx - track[0].cx, track[-1].cy - track[0].cy
            expect = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert direction == expect and max(abs(dx), abs(dy)) >= 6 * 4
    with pytest.raises(ValueError, match="frames"):
        world.random_clip(random.Random(0), frames=3)


def test_glyph_is_drawn_dark_on_white():
    img = np.asarray(world.render(HAND)).astype(int)
    box = img[8:24, 74:86]  # the digit's 12×16 px box around (80, 16)
    assert (box.min(axis=2) > 240).mean() > 0.4 and (box.max(axis=2) < 40).mean() > 0.15
    red = np.array(world.COLOURS["red"])
    assert np.abs(img[16, 16] - red).max() < 5  # inside the large red circle


def test_patch_labels_mark_every_object():
    labels = world.patch_labels(HAND)
    assert labels["centre"].sum() == len(HAND.objects) + 1
    assert labels["colour"][4, 4] == 1 + world.COLOUR_NAMES.index("red")
    assert labels["shape"][19, 20] == 1 + world.SHAPES.index("triangle")
    assert labels["digit"][4, 20] == 1 + 7
    assert labels["colour"][12, 2] == 0  # empty left cell


def test_vocabulary_covers_every_question_and_answer():
    vocab = set(architecture.WORDS) | set(architecture.SPECIALS)
    for it in world.benchmark(3, 8):
        assert set((it.question + " " + it.answer).split()) <= vocab, it


def test_training_conversations_match_the_processor_and_chat_template():
    _, processor = architecture.build(0)
    conv = sample_batch(random.Random(0), clip=False, images=1, turns=3)[0]
    ids, labels, turn_of, looks, gathers = encode(processor, [conv])
    first = conv.turns[0]
    prompt = architecture.chat_prompt(processor, first.question, 1)
    assert prompt == f"user : <image> {first.question} assistant :"
    ref = processor(text=prompt, images=conv.images, return_tensors="pt")["input_ids"][0]
    assert ids[0, : len(ref)].tolist() == ref.tolist()  # the first turn is exactly an inference prompt
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": first.question}]}]
    for i, t in enumerate(conv.turns):
        if i:
            messages.append({"role": "user", "content": [{"type": "text", "text": t.question}]})
        messages.append({"role": "assistant", "content": t.answer})
    whole = processor.apply_chat_template(messages, tokenize=False).replace("<image>", "<image>" * 576)
    assert ids[0].tolist() == processor.tokenizer(whole.rstrip(), add_special_tokens=False)["input_ids"]
    tok = processor.tokenizer
    answers = [i for t in conv.turns for i in tok(t.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert labels[0][labels[0] != -100].tolist() == answers
    assert turn_of[0][labels[0] != -100].unique().tolist() == [0, 1, 2]
    assert tok.unk_token_id not in ids.tolist()
    for row, pos, head, mask in looks:  # from the ":" that predicts an answer word (or a caption cell's content)
        assert row == 0 and head in (0, 1, 2) and mask.shape == (576,) and mask.sum() > 0
        assert ids[0, pos].item() == tok.convert_tokens_to_ids(":") and labels[0, pos + 1] != -100
    naming = DESCRIPTIVE | {"top", "bottom", "left", "right", "center"}
    for _, pos, _, where in gathers:  # the same tokens read the words that name what is asked about
        assert ids[0, pos].item() == tok.convert_tokens_to_ids(":") and all(w < pos for w in where)
        assert set(tok.convert_ids_to_tokens(ids[0, where].tolist())) <= naming
    assert {p for _, p, _, _ in looks} <= {p for _, p, _, _ in gathers}


def test_gathers_name_each_shape_of_a_relation():
    q = "is the red circle left of the blue triangle ?"
    named = {head: [q.split()[i] for i in idx] for _, head, _, idx in gather_targets("relation", q, "yes")}
    assert named == {0: ["red", "circle", "blue", "triangle"], 1: ["red", "circle"], 2: ["blue", "triangle"]}
    assert [idx for *_, idx in gather_targets("glyph", "what digit is written at the top right ?", "7")] == [[6, 7]]


def test_caption_looks_follow_the_cell_being_described():
    labels = world.patch_labels(HAND)
    looks = look_targets(HAND, labels, "caption", "describe the image .", world.caption(HAND))
    words = world.caption(HAND).split()
    assert [words[j] for j, _, _ in looks] == ["large", "digit", "small", "large"]  # top left, top right, center, b. right
    assert looks[0][2].reshape(24, 24)[4, 4] == 1 and looks[1][2].reshape(24, 24)[4, 20] == 1


def test_relation_looks_split_the_two_shapes():
    labels = world.patch_labels(HAND)
    looks = look_targets(HAND, labels, "relation", "is the red circle left of the blue triangle ?", "yes")
    grids = {head: mask.reshape(24, 24) for _, head, mask in looks}
    assert grids[0][4, 4] == grids[0][19, 20] == 1
    assert grids[1][4, 4] == 1 and grids[1][19, 20] == 0
    assert grids[2][4, 4] == 0 and grids[2][19, 20] == 1


def test_referents_ground_the_question():
    assert world.referents(HAND, "how many red shapes are there ?") == {0, 1}
    assert world.referents(HAND, "how many triangles are there ?") == {2}
    assert world.referents(HAND, "is the red circle left of the blue triangle ?") == {0, 2}
    assert world.referents(HAND, "what colour is the small square ?") == {1}
    assert world.referents(HAND, "is there a green cross ?") == set()
    assert world.referents(HAND, "what digit is written at the top right ?") == {3}
    labels = world.patch_labels(HAND)
    assert labels["item"][4, 4] == 1 and labels["item"][4, 20] == 4  # the circle; the glyph after the 3 objects


def test_unknown_question_type_is_named():
    with pytest.raises(ValueError, match="unknown question type 'colour'"):
        world.ask(HAND, "colour", random.Random(0))


def test_clip_frames_share_background_and_static_shapes_stay():
    clip = world.random_clip(random.Random(1))
    assert isinstance(clip, Clip) and all(f.clutter == clip.frames[0].clutter for f in clip.frames)
    static = [o.name for o in clip.frames[0].objects if o.name not in clip.moves]
    for name in static:
        assert len({(o.cx, o.cy) for f in clip.frames for o in f.objects if o.name == name}) == 1
