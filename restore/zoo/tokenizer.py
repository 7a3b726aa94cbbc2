"""The default model's tokenizer: one token per word of the world, behind a normaliser for natural phrasings.

The model was trained on the world's canonical text only: lower case, punctuation spaced out
("how many red shapes are there ?", "describe the image ."). Natural text ("How many red shapes are
there?", "What is in this picture?") used to tokenize to `<unk>`s the model never saw. The normaliser
below lives in `tokenizer.json` (a `tokenizers` normalizer and pre-tokenizer), so every path that
tokenizes text gets it: `Engine`, the chat template, the OpenAI-compatible server. In order it
1. folds Unicode (NFKC) and case, spells out "'s" and "'re", turns any other character that is not a
   letter, a digit or one of `? . , :` into a space ("!" reads as ".", ";" as ","), and spaces out the
   punctuation;
2. rewrites common phrasings to the world's (`PHRASES`, regular expressions applied in turn);
3. drops every remaining word outside the vocabulary (the model never saw `<unk>` in training; a filler
   word such as "please" or "located" carries nothing the world can answer).

Canonical text (the world's questions, answers, captions and the chat template's words) is a fixed
point of every step, so it keeps exactly the token ids it had: the shipped weights answer it as
before. Special tokens (`<image>`, `</s>`) are matched before normalisation and pass untouched.

`python -m restore.zoo.tokenizer --model DIR` writes this normaliser into a model folder's
`tokenizer.json` (the vocabulary must be the world's); training builds it from the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

from restore.zoo import world

logger = logging.getLogger(__name__)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = sorted(
    set(
        "user assistant : ? . , a an the is are there what how many where which does at of in written "
        "digit colour color shape shapes direction move moves describe image photo frame video this "
        "yes no empty small large left right top bottom center above below up down".split()
    )
    | set(world.COLOURS)
    | set(world.SHAPES)
    | set(world.PLURALS.values())
    | set(world.NUMBERS)
    | {str(d) for d in range(10)}
)

# Spaced out so that each is one token (and phrases below can rely on spaces): the vocabulary's four
# marks, and two more read as the nearest of them.
PUNCTUATION = {"?": "?", ".": ".", ",": ",", ":": ":", "!": ".", ";": ","}

_IMAGE_END = r"(?: [.?])?"  # a caption request's own end mark, replaced with the canonical " ."
CAPTION = "describe the image ."
_PLURALS = ["shapes", *world.PLURALS.values()]

# (pattern, replacement), applied in order to lower-case text whose words and marks are separated by
# single spaces. Replacements are literal (no group references). Each one must leave canonical text as it
# is: tests/restore/zoo/test_tokenizer.py checks every generated question, answer and caption.
PHRASES: list[tuple[str, str]] = [
    # words the world spells one way
    (r"\b(?:pictures?|photos?|photographs?|pics?|images|scenes?|illustrations?|drawings?)\b", "image"),
    (r"\bthis image\b", "the image"),
    (r"\bcolor\b", "colour"),
    (r"\b(?:centre|middle)\b", "center"),
    (r"\b(?:higher than|on top of|over)\b", "above"),
    (r"\b(?:lower than|underneath|beneath|under)\b", "below"),
    (r"\bupper\b", "top"),
    (r"\blower\b", "bottom"),
    (r"\b(?:to|on) the left of\b", "left of"),
    (r"\b(?:to|on) the right of\b", "right of"),
    (r"\b(?:objects|things|items|figures)\b", "shapes"),
    (r"\bnumber\b", "digit"),
    (r"\ban\b", "a"),
    # captions: the world asks "describe the image ."
    (r"\b(?:describe|caption)(?: the image| it| what you see(?: (?:in|on) the image)?"
     r"| what (?:is|you can see) (?:in|on|shown in|shown on) the image)(?: in detail)?" + _IMAGE_END, CAPTION),
    (r"\bwhat (?:is|are) (?:there )?(?:in|on|shown in|shown on) the image" + _IMAGE_END, CAPTION),
    (r"\bwhat does the image (?:show|contain|depict)" + _IMAGE_END, CAPTION),
    (r"\bwhat (?:do|can) you see(?: (?:in|on) the image)?" + _IMAGE_END, CAPTION),
    (r"\b(?:give|write|generate|provide)(?: me)? (?:a|the) (?:caption|description)(?: (?:of|for) the image)?"
     + _IMAGE_END, CAPTION),
    # attributes and glyphs: "what colour is the small square ?", "what digit is written at the top left ?"
    (r"\bwhich colour\b", "what colour"),
    (r"\bwhat is the colour of the\b", "what colour is the"),
    (r"\bwhich digit\b", "what digit"),
    (r"\bwhat is the digit\b", "what digit is"),
    (r"\bdigit is (?:(?:shown|printed|drawn|written|displayed) )?(?:in|at|on) the\b", "digit is written at the"),
    # motion: "which direction does the red circle move ?"
    (r"\b(?:moving|moves|going|goes|go|heading|travell?ing|travels?)\b", "move"),
    (r"\b(?:in )?(?:which|what) (?:way|direction)\b", "which direction"),
    (r"\bwhich direction is the\b", "which direction does the"),
    (r"\bwhere does the\b", "which direction does the"),
    # existence and counting: "is there a red circle ?", "how many red shapes are there ?"
    (r"\b(?:do|can) you (?:see|find|spot) a\b", "is there a"),
    (r"\bdoes the image (?:contain|have|show|include) a\b", "is there a"),
    (r"\bis there any\b", "is there a"),
    (r"\b(?:do|can) you (?:see|find|spot|count)\b", "are there"),
    (r"\bdoes the image (?:contain|have|show|include)\b", "are there"),
    (r"\bare (?:there )?(?:in|on) the image\b", "are there"),
    (r"\b(?:are (?:visible|present|shown)|can be seen|exist)\b", "are there"),
    (r"\bthere are(?= [.?])", "are there"),
    (r"\bcount(?: all)?(?: of)?(?: the)?\b", "how many"),
    (r"\bin total\b", ""),
    *[(rf"\b{p} [.?]", f"{p} are there ?") for p in _PLURALS],
    # places: "where is the red circle ?", and no question ends "in the image"
    (r"\bwhere in the image is\b", "where is"),
    (r" (?:in|on) the image(?= [.?])", ""),
]


def normalizer(words: list[str] = WORDS) -> normalizers.Normalizer:
    """The whole normaliser: characters, phrases, then words outside `words` dropped."""
    steps = [
        normalizers.NFKC(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[\u2018\u2019`]"), "'"),
        normalizers.Replace(Regex(r"'s\b"), " is"),
        normalizers.Replace(Regex(r"'re\b"), " are"),
        normalizers.Replace(Regex("[^a-z0-9" + "".join(PUNCTUATION) + r"\s]"), " "),
        *[normalizers.Replace(mark, f" {token} ") for mark, token in PUNCTUATION.items()],
        normalizers.Replace(Regex(r"\s+"), " "),
        *[normalizers.Replace(Regex(pattern), repl) for pattern, repl in PHRASES],
    ]
    known = sorted((w for w in words if w.isalpha()), key=lambda w: (-len(w), w))
    steps += [
        normalizers.Replace(Regex(r"\b(?!(?:" + "|".join(known) + r")\b)[a-z]+\b"), " "),
        normalizers.Replace(Regex(r"\s+"), " "),
    ]
    return normalizers.Sequence(steps)


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Words at spaces, every punctuation mark on its own (a guard: the normaliser spaces them already), and
    numbers digit by digit (the vocabulary has the ten digits)."""
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated"),
                                    pre_tokenizers.Digits(individual_digits=True)])


def apply(backend: Tokenizer, words: list[str] = WORDS) -> Tokenizer:
    """Install the normaliser and pre-tokenizer on a `tokenizers.Tokenizer` (in place; returned)."""
    backend.normalizer = normalizer(words)
    backend.pre_tokenizer = pre_tokenizer()
    return backend


def build():
    """The default model's tokenizer (a transformers fast tokenizer), normaliser included."""
    from restore.archs import word_tokenizer

    tok = word_tokenizer(WORDS, SPECIALS)
    apply(tok.backend_tokenizer)
    return tok


def normalise(text: str) -> str:
    """What the normaliser makes of `text` (without special tokens): for reading, tests and docs."""
    return normalizer().normalize_str(text).strip()


def rewrite_model_dir(model_dir: Path) -> Path:
    """Put the normaliser into `model_dir/tokenizer.json`; its vocabulary must be the world's (ids unchanged)."""
    path = Path(model_dir) / "tokenizer.json"
    backend = Tokenizer.from_file(str(path))
    want = {t: i for i, t in enumerate(SPECIALS + [w for w in WORDS if w not in SPECIALS])}
    if backend.get_vocab(with_added_tokens=True) != want:
        raise ValueError(f"{path}: its vocabulary is not the world's ({len(want)} tokens); retrain instead")
    apply(backend)
    # the layout transformers writes (save_pretrained), so that a retrain ships a byte-identical file
    path.write_text(json.dumps(json.loads(backend.to_str()), indent=2, ensure_ascii=False))
    return path


def main(argv=None) -> int:
    from restore.hub import DEFAULT_MODEL_DIR

    p = argparse.ArgumentParser(prog="python -m restore.zoo.tokenizer",
                                description="Write the natural-phrasing normaliser into a world model's tokenizer.json.")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model folder whose tokenizer.json to rewrite")
    p.add_argument("--show", nargs="*", default=[], help="print what the normaliser makes of these texts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for text in args.show:
        print(f"{text!r} -> {normalise(text)!r}")
    if not args.show:
        logger.info("wrote %s", rewrite_model_dir(Path(args.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
