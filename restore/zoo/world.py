"""The synthetic world the default model is trained and evaluated on.

A scene is a 96×96 image (24×24 patches of 4 px: 576 visual tokens, like
LLaVA-1.5) of up to 8 coloured shapes and an optional digit glyph on a
cluttered background, one item per cell of a 3×3 grid so that every place
word has one meaning. A clip is 4–8 frames in which some shapes move.
Every question has one exact answer, and each type stresses one distortion of
token reduction: `count` (attention mass), `position` and `relation`
(positions), `attribute` and `glyph` (small details lost by merging),
`existence` (hallucination), `motion` (video), and captions (everything).

Everything is a pure function of a seed: `random.Random` seeded with a string
is stable across processes and platforms.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 96
PATCH = 4
GRID = SIZE // PATCH  # 24 → 576 tokens
CELL = SIZE // 3
SUPER = 4  # supersampling factor: shapes get smooth edges after the box filter

COLOURS = {
    "red": (215, 35, 35), "green": (35, 160, 55), "blue": (35, 75, 215),
    "yellow": (235, 210, 30), "purple": (140, 50, 185), "orange": (245, 135, 25),
}
COLOUR_NAMES = list(COLOURS)
SHAPES = ["circle", "square", "triangle", "cross"]
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES = ["small", "large"]
PLACES = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
DIRECTIONS = ["left", "right", "up", "down"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight"]
IMAGE_TYPES = ["count", "position", "relation", "attribute", "existence", "glyph"]
QUESTION_TYPES = IMAGE_TYPES + ["motion"]

# 5×7 bitmaps of the digits, drawn for this project (one string per row).
DIGIT_FONT = {
    0: ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    1: ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    2: ["01110", "10001", "00001", "00110", "01000", "10000", "11111"],
    3: ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    4: ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    5: ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    6: ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    7: ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    8: ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    9: ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
}


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str  # "small" | "large"
    cx: float  # centre, pixels
    cy: float
    r: float  # half the side of the bounding square, pixels

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def place(self) -> str:
        return place_of(self.cx, self.cy)


@dataclass(frozen=True)
class Glyph:
    digit: int
    cx: float
    cy: float

    @property
    def place(self) -> str:
        return place_of(self.cx, self.cy)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    glyph: Glyph | None = None
    clutter: int = 0  # seed of the background


@dataclass(frozen=True)
class Clip:
    frames: tuple[Scene, ...]
    moves: dict[str, str] = field(default_factory=dict)  # object name -> direction, for the moving ones


@dataclass(frozen=True)
class Item:
    """One benchmark or training question: images (one, or a clip's frames), text, exact answer."""

    type: str
    images: list[Image.Image]
    question: str
    answer: str


def place_of(x: float, y: float) -> str:
    col = min(int(x // CELL), 2)
    row = min(int(y // CELL), 2)
    return PLACES[row * 3 + col]


def cell_centre(cell: int) -> tuple[float, float]:
    return (cell % 3 + 0.5) * CELL, (cell // 3 + 0.5) * CELL


# ---------------------------------------------------------------- sampling


def _radius(rng: random.Random, size: str) -> float:
    return rng.uniform(4.5, 5.5) if size == "small" else rng.uniform(8.5, 11.0)


def random_scene(rng: random.Random, objects: tuple[int, int] = (2, 7), glyph_p: float = 0.5) -> Scene:
    """Objects in distinct cells with distinct (colour, shape); half the scenes favour one colour (counting)."""
    n = rng.randint(*objects)
    has_glyph = rng.random() < glyph_p and n < 9
    cells = rng.sample(range(9), n + int(has_glyph))
    theme = rng.choice(COLOUR_NAMES) if rng.random() < 0.5 else None
    used: set[tuple[str, str]] = set()
    objs = []
    for cell in cells[:n]:
        while True:
            colour = theme if theme and rng.random() < 0.6 else rng.choice(COLOUR_NAMES)
            shape = rng.choice(SHAPES)
            if (colour, shape) not in used:
                break
        used.add((colour, shape))
        size = "small" if rng.random() < 0.4 else "large"
        r = _radius(rng, size)
        x0, y0 = cell_centre(cell)
        slack = max(CELL / 2 - r - 2, 0)
        objs.append(Obj(colour, shape, size, x0 + rng.uniform(-slack, slack), y0 + rng.uniform(-slack, slack), r))
    glyph = None
    if has_glyph:
        x0, y0 = cell_centre(cells[n])
        glyph = Glyph(rng.randrange(10), x0 + rng.uniform(-6, 6), y0 + rng.uniform(-5, 5))
    return Scene(tuple(objs), glyph, rng.randrange(2**31))


def random_clip(rng: random.Random, frames: int = 4) -> Clip:
    """2–4 shapes; each moves (p=0.6, at least one) 6–8 px per frame in one direction, never overlapping."""
    if not 4 <= frames <= 8:
        raise ValueError(f"frames must be in 4..8, got {frames}")
    n = rng.randint(2, 4)
    names: set[tuple[str, str]] = set()
    tracks: list[tuple[Obj, tuple[float, float]]] = []
    moving = [rng.random() < 0.6 for _ in range(n)]
    if not any(moving):
        moving[rng.randrange(n)] = True
    for i in range(n):
        for _ in range(200):
            colour, shape = rng.choice(COLOUR_NAMES), rng.choice(SHAPES)
            if (colour, shape) in names:
                continue
            size = "small" if rng.random() < 0.3 else "large"
            r = _radius(rng, size)
            step = rng.uniform(6.0, 8.0) if moving[i] else 0.0
            d = rng.choice(DIRECTIONS)
            vx, vy = {"left": (-step, 0), "right": (step, 0), "up": (0, -step), "down": (0, step)}[d]
            span_x, span_y = abs(vx) * (frames - 1), abs(vy) * (frames - 1)
            lo, hi = r + 1, SIZE - r - 1
            if hi - lo <= max(span_x, span_y):
                continue
            x = rng.uniform(lo + (span_x if vx < 0 else 0), hi - (span_x if vx > 0 else 0))
            y = rng.uniform(lo + (span_y if vy < 0 else 0), hi - (span_y if vy > 0 else 0))
            obj = Obj(colour, shape, size, x, y, r)
            if all(_apart(obj, (vx, vy), o, v, frames) for o, v in tracks):
                names.add((colour, shape))
                tracks.append((obj, (vx, vy)))
                break
    clutter = rng.randrange(2**31)
    scenes = []
    for t in range(frames):
        objs = tuple(Obj(o.colour, o.shape, o.size, o.cx + v[0] * t, o.cy + v[1] * t, o.r) for o, v in tracks)
        scenes.append(Scene(objs, None, clutter))
    moves = {}
    for o, (vx, vy) in tracks:
        if vx or vy:
            moves[o.name] = ("left" if vx < 0 else "right") if vx else ("up" if vy < 0 else "down")
    return Clip(tuple(scenes), moves)


def _apart(a: Obj, va, b: Obj, vb, frames: int, gap: float = 2.0) -> bool:
    for t in range(frames):
        dx = abs((a.cx + va[0] * t) - (b.cx + vb[0] * t))
        dy = abs((a.cy + va[1] * t) - (b.cy + vb[1] * t))
        if dx < a.r + b.r + gap and dy < a.r + b.r + gap:
            return False
    return True


# ---------------------------------------------------------------- rendering


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "cross":
        a = r / 3
        return [
            (cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a), (cx + r, cy + a),
            (cx + a, cy + a), (cx + a, cy + r), (cx - a, cy + r), (cx - a, cy + a), (cx - r, cy + a),
            (cx - r, cy - a), (cx - a, cy - a),
        ]
    return None


def _draw_obj(draw: ImageDraw.ImageDraw, o: Obj, fill, k: int = SUPER) -> None:
    cx, cy, r = o.cx * k, o.cy * k, o.r * k
    box = (cx - r, cy - r, cx + r, cy + r)
    if o.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif o.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(_shape_polygon(o.shape, cx, cy, r), fill=fill)


def _glyph_box(g: Glyph) -> tuple[float, float, float, float]:
    # 5×7 cells of 2 px, with a 1 px white margin: 12×16 px.
    return g.cx - 6, g.cy - 8, g.cx + 6, g.cy + 8


def _draw_glyph(draw: ImageDraw.ImageDraw, g: Glyph, k: int = SUPER) -> None:
    x0, y0, x1, y1 = _glyph_box(g)
    draw.rectangle((x0 * k, y0 * k, x1 * k, y1 * k), fill=(250, 250, 250))
    for row, bits in enumerate(DIGIT_FONT[g.digit]):
        for col, bit in enumerate(bits):
            if bit == "1":
                px, py = (x0 + 1 + 2 * col) * k, (y0 + 1 + 2 * row) * k
                draw.rectangle((px, py, px + 2 * k - 1, py + 2 * k - 1), fill=(15, 15, 15))


def _draw_clutter(draw: ImageDraw.ImageDraw, seed: int, k: int = SUPER) -> None:
    """Low-saturation lines, rings and blotches: texture that is never a coloured shape."""
    rng = random.Random(seed)
    for _ in range(rng.randint(3, 6)):
        x, y, w, h = (rng.uniform(0, SIZE) for _ in range(4))
        tone = rng.randint(190, 225)
        draw.rectangle((x * k, y * k, (x + w / 2) * k, (y + h / 2) * k), fill=_grey(rng, tone))
    for _ in range(rng.randint(8, 18)):
        tone = rng.randint(110, 190)
        kind = rng.random()
        x, y = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
        if kind < 0.5:
            ang, length = rng.uniform(0, math.pi), rng.uniform(6, 30)
            x2, y2 = x + length * math.cos(ang), y + length * math.sin(ang)
            draw.line((x * k, y * k, x2 * k, y2 * k), fill=_grey(rng, tone), width=rng.randint(1, 2) * k // 2 + 1)
        elif kind < 0.8:
            rad = rng.uniform(1, 2)
            draw.ellipse(((x - rad) * k, (y - rad) * k, (x + rad) * k, (y + rad) * k), fill=_grey(rng, tone))
        else:
            rad = rng.uniform(3, 6)
            draw.ellipse(((x - rad) * k, (y - rad) * k, (x + rad) * k, (y + rad) * k), outline=_grey(rng, tone), width=k)


def _grey(rng: random.Random, tone: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, tone + rng.randint(-8, 8))) for _ in range(3))


def render(scene: Scene) -> Image.Image:
    """The RGB image of a scene (96×96)."""
    rng = random.Random(scene.clutter)
    base = _grey(rng, rng.randint(215, 240))
    img = Image.new("RGB", (SIZE * SUPER, SIZE * SUPER), base)
    draw = ImageDraw.Draw(img)
    _draw_clutter(draw, scene.clutter)
    for o in scene.objects:
        _draw_obj(draw, o, COLOURS[o.colour])
    if scene.glyph is not None:
        _draw_glyph(draw, scene.glyph)
    return img.resize((SIZE, SIZE), Image.BOX)


def scene_image(seed: int, size: int = SIZE) -> Image.Image:
    """A random scene's image for seed `seed`, resized to `size` px (inputs for demos, tests, benchmarks)."""
    img = render(random_scene(random.Random(f"restore-scene:{seed}")))
    return img if size == SIZE else img.resize((size, size), Image.BICUBIC)


def render_clip(clip: Clip) -> list[Image.Image]:
    return [render(f) for f in clip.frames]


# ---------------------------------------------------------------- per-patch labels (training signal)

LABEL_HEADS = {"colour": 1 + len(COLOURS), "shape": 1 + len(SHAPES), "size": 1 + len(SIZES), "digit": 11, "centre": 2,
               "row": GRID, "col": GRID}


def _coverage(paint) -> np.ndarray:
    mask = Image.new("L", (SIZE * SUPER, SIZE * SUPER), 0)
    paint(ImageDraw.Draw(mask))
    return np.asarray(mask.resize((GRID, GRID), Image.BOX), dtype=np.float32) / 255.0


def patch_labels(scene: Scene, min_cover: float = 0.25) -> dict[str, np.ndarray]:
    """Per patch (24×24, row-major): what covers it most (0 = nothing) and whether it holds a centre.

    `item` is 1 + the index of the covering object in `scene.objects`, or 1 + len(objects) for the glyph.
    """
    out = {name: np.zeros((GRID, GRID), dtype=np.int64) for name in [*LABEL_HEADS, "item"]}
    # The patch's own row and column: makes places linearly readable from the tower's features.
    out["row"][:] = np.arange(GRID)[:, None]
    out["col"][:] = np.arange(GRID)[None, :]
    best = np.full((GRID, GRID), min_cover, dtype=np.float32)
    for i, o in enumerate(scene.objects):
        cov = _coverage(lambda d, o=o: _draw_obj(d, o, 255))
        win = cov >= best
        best = np.where(win, cov, best)
        out["item"][win] = 1 + i
        out["colour"][win] = 1 + COLOUR_NAMES.index(o.colour)
        out["shape"][win] = 1 + SHAPES.index(o.shape)
        out["size"][win] = 1 + SIZES.index(o.size)
        out["digit"][win] = 0
        _mark_centre(out["centre"], o.cx, o.cy)
    if scene.glyph is not None:
        g = scene.glyph
        x0, y0, x1, y1 = _glyph_box(g)
        cov = _coverage(lambda d: d.rectangle((x0 * SUPER, y0 * SUPER, x1 * SUPER, y1 * SUPER), fill=255))
        win = cov >= best
        for name in ("colour", "shape", "size"):
            out[name][win] = 0
        out["item"][win] = 1 + len(scene.objects)
        out["digit"][win] = 1 + g.digit
        _mark_centre(out["centre"], g.cx, g.cy)
    return out


def _mark_centre(grid: np.ndarray, x: float, y: float) -> None:
    grid[min(int(y // PATCH), GRID - 1), min(int(x // PATCH), GRID - 1)] = 1


# ---------------------------------------------------------------- questions and answers


def _pick_unique(rng: random.Random, objs, key):
    counts: dict = {}
    for o in objs:
        counts[key(o)] = counts.get(key(o), 0) + 1
    unique = [o for o in objs if counts[key(o)] == 1]
    return rng.choice(unique) if unique else None


def ask(scene: Scene, kind: str, rng: random.Random) -> tuple[str, str] | None:
    """(question, answer) of one type about a scene, or None when the scene cannot pose it."""
    objs = list(scene.objects)
    if kind == "count":
        if rng.random() < 0.5:
            colour = rng.choice(objs).colour if objs and rng.random() < 0.75 else rng.choice(COLOUR_NAMES)
            return f"how many {colour} shapes are there ?", NUMBERS[sum(o.colour == colour for o in objs)]
        shape = rng.choice(objs).shape if objs and rng.random() < 0.75 else rng.choice(SHAPES)
        return f"how many {PLURALS[shape]} are there ?", NUMBERS[sum(o.shape == shape for o in objs)]
    if kind == "position":
        if not objs:
            return None
        o = rng.choice(objs)
        return f"where is the {o.name} ?", o.place
    if kind == "relation":
        return _relation(objs, rng)
    if kind == "attribute":
        o = _pick_unique(rng, objs, lambda o: (o.size, o.shape))
        if o is None:
            return None
        return f"what colour is the {o.size} {o.shape} ?", o.colour
    if kind == "existence":
        present = {(o.colour, o.shape) for o in objs}
        if objs and rng.random() < 0.5:
            o = rng.choice(objs)
            return f"is there a {o.name} ?", "yes"
        # Absent, and where possible sharing a colour or a shape with something present (POPE's adversarial split).
        near = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present
                and any(c == pc or s == ps for pc, ps in present)]
        pool = near or [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
        c, s = rng.choice(pool)
        return f"is there a {c} {s} ?", "no"
    if kind == "glyph":
        if scene.glyph is None:
            return None
        return f"what digit is written at the {scene.glyph.place} ?", str(scene.glyph.digit)
    if kind == "caption":
        return "describe the image .", caption(scene)
    raise ValueError(f"unknown question type {kind!r}; known: {', '.join(QUESTION_TYPES + ['caption'])}")


# relation phrase -> whether it holds of (first shape, second shape)
RELATIONS = {
    "left of": lambda a, b: a.cx < b.cx, "right of": lambda a, b: a.cx > b.cx,
    "above": lambda a, b: a.cy < b.cy, "below": lambda a, b: a.cy > b.cy,
}


def _relation(objs, rng: random.Random):
    """Only pairs in different columns (left/right) or rows (above/below): never a borderline answer."""
    rel = rng.choice(list(RELATIONS))
    horizontal = rel in ("left of", "right of")
    pairs = [(a, b) for a in objs for b in objs if a is not b
             and (_col(a) != _col(b) if horizontal else _row(a) != _row(b))]
    if not pairs:
        return None
    want = rng.random() < 0.5
    matching = [(a, b) for a, b in pairs if RELATIONS[rel](a, b) == want]
    a, b = rng.choice(matching or pairs)
    answer = "yes" if RELATIONS[rel](a, b) else "no"
    return f"is the {a.name} {rel} the {b.name} ?", answer


def _col(o: Obj) -> int:
    return PLACES.index(o.place) % 3


def _row(o: Obj) -> int:
    return PLACES.index(o.place) // 3


def referents(scene: Scene, question: str) -> set[int]:
    """Items a question is about (indices into `scene.objects`; len(objects) is the glyph): grounding targets."""
    words = question.split()
    objs = scene.objects
    if words[:2] == ["what", "digit"]:
        return {len(objs)} if scene.glyph is not None else set()
    if words[:2] == ["how", "many"]:
        key = words[2]
        if key in COLOURS:
            return {i for i, o in enumerate(objs) if o.colour == key}
        return {i for i, o in enumerate(objs) if PLURALS[o.shape] == key}
    if words[:3] == ["what", "colour", "is"]:
        size, shape = words[4], words[5]
        return {i for i, o in enumerate(objs) if o.size == size and o.shape == shape}
    names = {f"{a} {b}" for a, b in zip(words, words[1:])}
    return {i for i, o in enumerate(objs) if o.name in names}


def ask_motion(clip: Clip, rng: random.Random) -> tuple[str, str]:
    return motion_question(clip, rng.choice(sorted(clip.moves)))


def motion_question(clip: Clip, name: str) -> tuple[str, str]:
    return f"which direction does the {name} move ?", clip.moves[name]


def caption(scene: Scene) -> str:
    """Every cell in reading order: '<place> : <size> <colour> <shape>', 'digit <d>' or 'empty'."""
    content = {o.place: f"{o.size} {o.name}" for o in scene.objects}
    if scene.glyph is not None:
        content[scene.glyph.place] = f"digit {scene.glyph.digit}"
    return " , ".join(f"{p} : {content.get(p, 'empty')}" for p in PLACES)


def caption_objects(text: str) -> set[tuple[str, str, str]]:
    """The (place, what, kind) facts a caption states; unparseable parts state nothing."""
    facts = set()
    for part in text.split(","):
        place, sep, what = part.partition(":")
        place, words = place.strip(), what.split()
        if not sep or place not in PLACES:
            continue
        if len(words) == 2 and words[0] == "digit" and words[1].isdigit():
            facts.add((place, "digit", words[1]))
        elif len(words) >= 2 and words[-2] in COLOURS and words[-1] in SHAPES:
            facts.add((place, words[-2], words[-1]))
    return facts


def caption_f1(predicted: str, truth: str) -> float:
    """Object-level F1: an object counts when its colour, shape and place (or digit and place) are exact."""
    p, t = caption_objects(predicted), caption_objects(truth)
    if not p and not t:
        return 1.0
    hits = len(p & t)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(p), hits / len(t)
    return 2 * precision * recall / (precision + recall)


def normalise(answer: str) -> str:
    return " ".join(answer.lower().replace("</s>", " ").split()).rstrip(" .")


# ---------------------------------------------------------------- benchmark sets


def item(seed: int, kind: str, index: int, frames: int = 4) -> Item:
    """The `index`-th question of one type for one seed; resamples scenes that cannot pose it."""
    rng = random.Random(f"restore-world:{seed}:{kind}:{index}")
    while True:
        if kind == "motion":
            clip = random_clip(rng, frames)
            q, a = ask_motion(clip, rng)
            return Item(kind, render_clip(clip), q, a)
        scene = random_scene(rng, glyph_p=1.0 if kind == "glyph" else 0.5)
        qa = ask(scene, kind, rng)
        if qa is not None:
            return Item(kind, [render(scene)], *qa)


def benchmark(seed: int, n: int, types: list[str] | None = None) -> list[Item]:
    """`n` items of every question type (and `n` captions) for a seed, in a fixed order."""
    kinds = list(types or QUESTION_TYPES + ["caption"])
    return [item(seed, kind, i) for kind in kinds for i in range(n)]
