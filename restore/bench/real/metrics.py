"""The benchmarks' metrics, as pure functions on answer strings, written from each benchmark's definition.

- VQAv2 / TextVQA: soft accuracy over the human answers, min(1, #humans who gave the answer / 3),
  averaged over the 10 leave-one-annotator-out subsets, after the VQA answer normalisation
  (`normalize_vqa`), applied to the prediction and to every human answer alike.
- GQA: exact match after lower-casing and dropping punctuation.
- POPE: the reply read as yes/no; accuracy, precision, recall, F1 (positive = "yes") and the yes ratio,
  per split (adversarial/popular/random) and their mean.
- MME: per category, acc (questions right, %) plus acc+ (images whose questions are all right, %);
  the perception score sums its 10 categories, the cognition score its 4 (max 2000 and 800).
- Multiple choice (MMBench, ScienceQA, SEED-Bench): the option letter read from the reply; MMBench's
  CircularEval counts a question right only when every circular shift of its options is answered right.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

# --- VQA answer normalisation -------------------------------------------------------------------------
# The VQA evaluation description: lower-case; drop periods except in decimals; number words to digits;
# drop the articles a/an/the; restore the apostrophe of contractions written without one; every other
# punctuation mark but the apostrophe and the colon becomes a space; a comma between digits is dropped.

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophe. Forms that are words of their own ("its", "id", "hell",
# "well", "were", "shed", "wed", "ill") are left alone.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hes": "he's", "hows": "how's", "im": "i'm", "isnt": "isn't", "itll": "it'll",
    "ive": "i've", "lets": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "shant": "shan't", "shes": "she's",
    "shouldnt": "shouldn't", "shouldve": "should've", "thats": "that's", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "weve": "we've", "werent": "weren't", "whats": "what's", "wheres": "where's", "whos": "who's",
    "wont": "won't", "wouldnt": "wouldn't", "wouldve": "would've", "yall": "y'all", "youd": "you'd",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
_SPACED = "".join(c for c in string.punctuation if c not in "':.")
_TO_SPACE = str.maketrans({c: " " for c in _SPACED})


def normalize_vqa(text: str) -> str:
    """The VQA answer normalisation: '  The Two Dogs.' → '2 dogs'; '100,978' → '100978'; 'dont' → "don't"."""
    s = " ".join(str(text).lower().split())
    s = re.sub(r"(?<=\d),(?=\d)", "", s)  # 100,978 → 100978
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)  # periods go, except inside a decimal number
    s = s.translate(_TO_SPACE)
    words = []
    for w in s.split():
        w = NUMBER_WORDS.get(w, w)
        if w in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (10 for VQAv2 and TextVQA).

    Each subset of all-but-one annotators gives min(1, matches / 3); the result is their mean. With fewer
    than two answers there is no subset to leave out, and the score is exact match.
    """
    pred = normalize_vqa(prediction)
    gold = [normalize_vqa(a) for a in answers]
    if len(gold) < 2:
        return float(pred in gold)
    hits = [g == pred for g in gold]
    total = sum(hits)
    return sum(min(1.0, (total - h) / 3.0) for h in hits) / len(gold)


# --- exact match (GQA) --------------------------------------------------------------------------------

_NO_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_exact(text: str) -> str:
    """Lower-case, punctuation dropped, spaces collapsed: 'Yes.' → 'yes'."""
    return " ".join(str(text).lower().translate(_NO_PUNCT).split())


def exact_match(prediction: str, target: str) -> float:
    return float(normalize_exact(prediction) == normalize_exact(target))


# --- yes/no (POPE, MME) -------------------------------------------------------------------------------


def parse_yes_no(text: str, default: str | None = None) -> str | None:
    """'yes' or 'no' from a reply: its first word when that is yes/no, else 'no' when it says no/not,
    else 'yes' when it says yes anywhere, else `default`."""
    words = re.findall(r"[a-z]+", str(text).lower())
    if words and words[0] in ("yes", "no"):
        return words[0]
    if "no" in words or "not" in words:
        return "no"
    if "yes" in words:
        return "yes"
    return default


def binary_scores(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """POPE's numbers for yes/no predictions against yes/no targets, positive = 'yes' (fractions)."""
    tp = sum(p == "yes" and t == "yes" for p, t in zip(predictions, targets, strict=True))
    fp = sum(p == "yes" and t == "no" for p, t in zip(predictions, targets, strict=True))
    fn = sum(p != "yes" and t == "yes" for p, t in zip(predictions, targets, strict=True))
    n = len(targets)
    correct = sum(p == t for p, t in zip(predictions, targets, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": sum(p == "yes" for p in predictions) / n if n else 0.0,
    }


def pope_scores(replies: Sequence[str], targets: Sequence[str], splits: Sequence[str]) -> dict:
    """POPE per split and their mean. A reply that says neither yes nor no counts as 'yes', as POPE's
    own evaluation reads it (anything without no/not)."""
    preds = [parse_yes_no(r, default="yes") for r in replies]
    gold = [str(t).strip().lower() for t in targets]
    by_split: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(splits):
        by_split[str(s)].append(i)
    per = {s: binary_scores([preds[i] for i in idx], [gold[i] for i in idx]) for s, idx in sorted(by_split.items())}
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    mean = {k: sum(v[k] for v in per.values()) / len(per) for k in keys} if per else dict.fromkeys(keys, 0.0)
    return {"splits": per, **mean}


# --- MME ----------------------------------------------------------------------------------------------

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_category(name: str) -> str:
    """Canonical MME category name ('ocr' and 'OCR' alike; spaces as underscores)."""
    key = str(name).strip().replace(" ", "_")
    return "OCR" if key.lower() == "ocr" else key.lower()


def mme_scores(replies: Sequence[str], targets: Sequence[str], categories: Sequence[str],
               images: Sequence[Hashable]) -> dict:
    """MME: per category acc + acc+ (each in %, so a category scores at most 200); perception and
    cognition sum their categories; a reply that is neither yes nor no is wrong."""
    right: dict[str, list[bool]] = defaultdict(list)
    per_image: dict[str, dict[Hashable, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for reply, target, cat, image in zip(replies, targets, categories, images, strict=True):
        cat = mme_category(cat)
        ok = parse_yes_no(reply) == str(target).strip().lower()
        right[cat].append(ok)
        per_image[cat][image].append(ok)
    cats = {}
    for cat, oks in sorted(right.items()):
        acc = 100.0 * sum(oks) / len(oks)
        acc_plus = 100.0 * sum(all(v) for v in per_image[cat].values()) / len(per_image[cat])
        cats[cat] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    perception = sum(v["score"] for c, v in cats.items() if c in MME_PERCEPTION)
    cognition = sum(v["score"] for c, v in cats.items() if c in MME_COGNITION)
    unknown = sorted(c for c in cats if c not in MME_PERCEPTION and c not in MME_COGNITION)
    return {"perception": perception, "cognition": cognition, "total": perception + cognition,
            "categories": cats, "unknown_categories": unknown}


# --- multiple choice ----------------------------------------------------------------------------------

LETTERS = string.ascii_uppercase


def extract_choice(reply: str, options: Sequence[str]) -> str | None:
    """The option letter a reply picks among `options` (A, B, ... in order), or None.

    Read in this order: a leading letter ('B', 'B.', '(B)', 'B) dog'); 'answer is B' / 'option B';
    a reply that is one option's text; a lone capital letter of a valid option anywhere.
    """
    letters = LETTERS[: len(options)]
    text = str(reply).strip()
    m = re.match(r"^\(?([A-Z])\)?(?:[.:)\s]|$)", text)
    if m and m.group(1) in letters:
        return m.group(1)
    m = re.search(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b", text, flags=re.IGNORECASE)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    plain = normalize_exact(text)
    same = [letters[i] for i, o in enumerate(options) if plain and normalize_exact(o) == plain]
    if len(same) == 1:
        return same[0]
    for m in re.finditer(r"\b([A-Z])\b", text):
        if m.group(1) in letters:
            return m.group(1)
    return None


def choice_accuracy(replies: Sequence[str], targets: Sequence[str], options: Sequence[Sequence[str]]) -> float:
    """Share of replies whose extracted letter is the target letter."""
    if not targets:
        return 0.0
    picks = [extract_choice(r, o) for r, o in zip(replies, options, strict=True)]
    return sum(p == str(t).strip().upper() for p, t in zip(picks, targets, strict=True)) / len(targets)


def circular_accuracy(correct: Sequence[bool], groups: Sequence[Hashable]) -> float:
    """MMBench's CircularEval: a question (a group of its circularly shifted copies) counts only when
    every copy is right."""
    by: dict[Hashable, bool] = {}
    for ok, g in zip(correct, groups, strict=True):
        by[g] = by.get(g, True) and bool(ok)
    return sum(by.values()) / len(by) if by else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def most_common(answers: Sequence[str]) -> str:
    """The most frequent normalised answer (ties: the first seen); what a perfect VQA model would say."""
    counts = Counter(normalize_vqa(a) for a in answers)
    return max(counts, key=counts.__getitem__) if counts else ""
