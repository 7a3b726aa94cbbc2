"""Natural phrasings of the world's questions and the canonical forms they must be read as.

Module-level data, shared by the tests that send them through `Engine` and through the server
(`/v1/chat/completions` with the real `openai` client). Each entry is (natural, canonical), both format
strings over the fields `scene_fields` or `clip_fields` give: `{a}`, `{b}` name two shapes in different
columns and rows ("red circle"), `{colour}`/`{Colour}` is the colour of `{a}`, `{plural}` its shape's plural,
`{size} {shape}` a shape unique by size and shape, `{place}` the glyph's place, `{absent}` a shape that
is not there.
"""

from __future__ import annotations

import random

from restore.zoo import world

CAPTION = "describe the image ."

IMAGE_PHRASINGS: list[tuple[str, str]] = [
    ("Describe the image.", CAPTION),
    ("What is in this picture?", CAPTION),
    ("What's in the photo?", CAPTION),
    ("Please describe this picture in detail!", CAPTION),
    ("What do you see?", CAPTION),
    ("Caption this image.", CAPTION),
    ("How many {colour} shapes are there?", "how many {colour} shapes are there ?"),
    ("How many {Colour} objects are in the image?", "how many {colour} shapes are there ?"),
    ("Count the {colour} shapes.", "how many {colour} shapes are there ?"),
    ("How many {plural} can you see?", "how many {plural} are there ?"),
    ("How many {plural}?", "how many {plural} are there ?"),
    ("Is the {a} left of the {b}?", "is the {a} left of the {b} ?"),
    ("Is the {a} to the right of the {b}?", "is the {a} right of the {b} ?"),
    ("Is the {a} under the {b}?", "is the {a} below the {b} ?"),
    ("Is the {a} on top of the {b}?", "is the {a} above the {b} ?"),
    ("Where is the {a}?", "where is the {a} ?"),
    ("Where's the {A} located?", "where is the {a} ?"),
    ("What color is the {size} {shape}?", "what colour is the {size} {shape} ?"),
    ("What is the colour of the {size} {shape}?", "what colour is the {size} {shape} ?"),
    ("Is there a {a}?", "is there a {a} ?"),
    ("Is there an {a} in the picture?", "is there a {a} ?"),
    ("Does the image contain a {b}?", "is there a {b} ?"),
    ("Do you see a {absent}?", "is there a {absent} ?"),
    ("What digit is written at the {place}?", "what digit is written at the {place} ?"),
    ("What number is shown in the {Place}?", "what digit is written at the {place} ?"),
    ("Which digit is at the {place}?", "what digit is written at the {place} ?"),
]

CLIP_PHRASINGS: list[tuple[str, str]] = [
    ("Which direction does the {a} move?", "which direction does the {a} move ?"),
    ("Which way is the {a} moving?", "which direction does the {a} move ?"),
    ("In which direction does the {A} move?", "which direction does the {a} move ?"),
    ("Where does the {a} go?", "which direction does the {a} move ?"),
]


def _column(o: world.Obj) -> int:
    return world.PLACES.index(o.place) % 3


def _row(o: world.Obj) -> int:
    return world.PLACES.index(o.place) // 3


def scene_fields(scene: world.Scene) -> dict[str, str]:
    """The fields of `IMAGE_PHRASINGS` for one scene; a field the scene cannot fill is left out."""
    objs = list(scene.objects)
    out: dict[str, str] = {}
    pair = next(((a, b) for a in objs for b in objs
                 if a is not b and _column(a) != _column(b) and _row(a) != _row(b)), None)
    if pair:
        a, b = pair
        out.update(a=a.name, A=a.name.title(), b=b.name, colour=a.colour, Colour=a.colour.title(),
                   plural=world.PLURALS[a.shape])
    keys = [(o.size, o.shape) for o in objs]
    unique = [o for o in objs if keys.count((o.size, o.shape)) == 1]
    if unique:
        out.update(size=unique[0].size, shape=unique[0].shape)
    if scene.glyph is not None:
        out.update(place=scene.glyph.place, Place=scene.glyph.place.title())
    present = {o.name for o in objs}
    out["absent"] = next(f"{c} {s}" for c in world.COLOUR_NAMES for s in world.SHAPES if f"{c} {s}" not in present)
    return out


def clip_fields(clip: world.Clip) -> dict[str, str]:
    name = sorted(clip.moves)[0]
    return {"a": name, "A": name.title()}


def filled(phrasings: list[tuple[str, str]], fields: dict[str, str]) -> list[tuple[str, str]]:
    """The (natural, canonical) pairs whose fields are all given."""
    out = []
    for natural, canonical in phrasings:
        try:
            out.append((natural.format(**fields), canonical.format(**fields)))
        except KeyError:
            continue
    return out


def scenes(n: int, seed: int = 19) -> list[world.Scene]:
    """`n` generated scenes with a glyph and a pair of shapes in different rows and columns."""
    rng = random.Random(f"restore-phrasings:{seed}")
    out = []
    while len(out) < n:
        s = world.random_scene(rng, objects=(3, 6), glyph_p=1.0)
        if {"a", "size", "place"} <= scene_fields(s).keys():
            out.append(s)
    return out
