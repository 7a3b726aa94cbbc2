"""One `TaskSpec` per benchmark: where its Parquet lives, which columns it reads, its prompt, its score.

The column names are those of the Parquet splits the benchmarks are published as on the Hugging Face
hub (the lmms-lab/* datasets lmms-eval reads), with the variants other uploads use accepted too. Every
task's `score` returns a dict of metrics whose "score" is the headline number the paper averages
(in %, or MME's points), so "% of the full model" is score / full score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from restore.bench.real import metrics

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Example:
    """One question: `id` is stable across runs ('<file>#<row>'); `target` is what the metric compares
    against (a yes/no, a letter, an answer, or the human answers); `meta` holds what scoring groups by."""

    id: str
    prompt: str
    target: Any
    options: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    hub: str  # where the published Parquet comes from, for messages and docs
    metric: str  # what "score" is
    build: Callable[[dict, str], Example | None]  # a row (non-image columns) and its id → an Example
    score: Callable[[Sequence[Example], Sequence[str]], dict]
    configs: tuple[str, ...] = ()  # preferred hub config folders, e.g. 'en' of MMBench
    splits: tuple[str, ...] = ()  # preferred splits, matched against file names and folders
    image_table: tuple[str, str] | None = None  # (column naming the image, key column of the image table)
    image_configs: tuple[str, ...] = ()  # config folders of the image table
    drop_rows_without_image: bool = False
    sample_group: Callable[[Example], Any] | None = None  # --limit samples whole groups (MME image pairs)
    note: str = ""


def short_prompt(question: str) -> str:
    return f"{str(question).strip()}\n{SHORT_ANSWER}"


def choice_prompt(question: str, options: Sequence[str], hint: str | None = None, hint_prefix: str = "") -> str:
    lines = [f"{hint_prefix}{hint.strip()}"] if hint else []
    lines.append(str(question).strip())
    lines += [f"{metrics.LETTERS[i]}. {str(o).strip()}" for i, o in enumerate(options)]
    lines.append(LETTER_ANSWER)
    return "\n".join(lines)


def pick(row: dict, *names: str, required: bool = True, what: str = "") -> Any:
    """The value of the first of `names` the row has (column-name variants of different uploads)."""
    for n in names:
        if n in row:
            return row[n]
    if required:
        raise KeyError(f"{what}: none of the columns {list(names)} is present (columns: {sorted(row)})")
    return None


def present(value: Any) -> bool:
    """False for None, NaN and the 'nan' strings pandas-made uploads carry for empty cells."""
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str) and value.strip().lower() in ("", "nan", "none"))


def human_answers(value: Any) -> list[str]:
    """VQA answers as strings: a list of strings (TextVQA) or of {'answer': ...} records (VQAv2)."""
    if not value:
        return []
    out = []
    for a in value:
        if isinstance(a, dict):
            a = a.get("answer")
        if present(a):
            out.append(str(a))
    return out


# --- POPE ---------------------------------------------------------------------------------------------


def _pope(row: dict, rid: str) -> Example:
    q = pick(row, "question", "text", what="pope")
    a = str(pick(row, "answer", "label", what="pope")).strip().lower()
    split = pick(row, "category", "split", "type", required=False)
    return Example(rid, short_prompt(q), a, meta={"split": str(split) if present(split) else "all"})


def _pope_score(examples, replies) -> dict:
    out = metrics.pope_scores(replies, [e.target for e in examples], [e.meta["split"] for e in examples])
    return {"score": 100 * out["f1"], **out}


# --- GQA ----------------------------------------------------------------------------------------------


def _gqa(row: dict, rid: str) -> Example:
    q = pick(row, "question", what="gqa")
    a = pick(row, "answer", what="gqa")
    image = pick(row, "imageId", "image_id", what="gqa")
    return Example(rid, short_prompt(q), str(a), meta={"image_ref": str(image)})


def _gqa_score(examples, replies) -> dict:
    acc = metrics.mean([metrics.exact_match(r, e.target) for e, r in zip(examples, replies, strict=True)])
    return {"score": 100 * acc, "accuracy": acc}


# --- VQAv2 and TextVQA --------------------------------------------------------------------------------


def _vqav2(row: dict, rid: str) -> Example | None:
    q = pick(row, "question", what="vqav2")
    answers = human_answers(pick(row, "answers", required=False))
    if not answers:
        return None  # test splits carry no answers
    return Example(rid, short_prompt(q), answers, meta={"answer_type": row.get("answer_type") or ""})


def _textvqa_builder(ocr: bool) -> Callable[[dict, str], Example | None]:
    def build(row: dict, rid: str) -> Example | None:
        q = str(pick(row, "question", what="textvqa")).strip()
        answers = human_answers(pick(row, "answers", required=False))
        if not answers:
            return None
        tokens = row.get("ocr_tokens") if ocr else None
        if tokens:
            q = f"{q}\nReference OCR token: {', '.join(str(t) for t in tokens)}"
        return Example(rid, short_prompt(q), answers)

    return build


def _vqa_score(examples, replies) -> dict:
    acc = metrics.mean([metrics.vqa_soft_accuracy(r, e.target) for e, r in zip(examples, replies, strict=True)])
    return {"score": 100 * acc, "accuracy": acc}


# --- MME ----------------------------------------------------------------------------------------------


def _mme(row: dict, rid: str) -> Example:
    q = pick(row, "question", what="mme")
    a = str(pick(row, "answer", what="mme")).strip().lower()
    cat = pick(row, "category", what="mme")
    # Two questions per image; lmms-lab/MME names the image in question_id ('artwork/10002.jpg').
    image = pick(row, "question_id", "image_path", "image_id", required=False)
    return Example(rid, short_prompt(q), a, meta={"category": str(cat), "image": str(image) if image else rid})


def _mme_score(examples, replies) -> dict:
    out = metrics.mme_scores(replies, [e.target for e in examples], [e.meta["category"] for e in examples],
                             [(e.meta["category"], e.meta["image"]) for e in examples])
    return {"score": out["total"], **out}


# --- multiple choice: ScienceQA-IMG, MMBench, SEED-Bench ----------------------------------------------


def _sqa(row: dict, rid: str) -> Example:
    q = pick(row, "question", what="sqa_img")
    choices = [str(c) for c in pick(row, "choices", what="sqa_img")]
    answer = pick(row, "answer", what="sqa_img")
    target = metrics.LETTERS[int(answer)] if not isinstance(answer, str) or answer.isdigit() else answer.upper()
    hint = pick(row, "hint", "context", required=False)
    prompt = choice_prompt(q, choices, hint if present(hint) else None, hint_prefix="Context: ")
    return Example(rid, prompt, target, tuple(choices), meta={"subject": row.get("subject") or ""})


def _mmbench(row: dict, rid: str) -> Example:
    q = pick(row, "question", what="mmbench")
    options = []
    for letter in "ABCDE":  # options stop at the first empty one (some questions have 2 or 3)
        v = row.get(letter)
        if not present(v):
            break
        options.append(str(v))
    hint = row.get("hint")
    index = pick(row, "index", "question_id", "id", required=False)
    # Circularly shifted copies of a question share index % 1e6 (the CircularEval layout of the dev split).
    group = int(index) % 1_000_000 if present(index) and str(index).lstrip("-").isdigit() else rid
    return Example(rid, choice_prompt(q, options, hint if present(hint) else None), str(row["answer"]).strip(),
                   tuple(options), meta={"group": group, "category": row.get("category") or ""})


def _choice_correct(examples, replies) -> list[bool]:
    return [metrics.extract_choice(r, e.options) == e.target for e, r in zip(examples, replies, strict=True)]


def _mmbench_score(examples, replies) -> dict:
    ok = _choice_correct(examples, replies)
    groups = [e.meta["group"] for e in examples]
    acc = metrics.mean(ok)
    circular = metrics.circular_accuracy(ok, groups)
    has_copies = len(set(groups)) < len(groups)
    return {"score": 100 * (circular if has_copies else acc), "accuracy": acc, "circular": circular,
            "circular_eval": has_copies}


def _seed(row: dict, rid: str) -> Example:
    q = pick(row, "question", what="seed")
    options = [str(pick(row, f"choice_{c}", f"option_{c}", c.upper(), what="seed")) for c in "abcd"]
    kind = pick(row, "data_type", required=False) or "image"
    return Example(rid, choice_prompt(q, options), str(row["answer"]).strip().upper(), tuple(options),
                   meta={"data_type": str(kind), "question_type": row.get("question_type_id")})


def _choice_score(examples, replies) -> dict:
    acc = metrics.mean(_choice_correct(examples, replies))
    return {"score": 100 * acc, "accuracy": acc}


def _seed_score(examples, replies) -> dict:
    ok = _choice_correct(examples, replies)
    by_kind = {}
    for kind in sorted({e.meta["data_type"] for e in examples}):
        by_kind[kind] = metrics.mean([o for o, e in zip(ok, examples) if e.meta["data_type"] == kind])
    acc = metrics.mean(ok)
    return {"score": 100 * acc, "accuracy": acc, "by_data_type": by_kind}


def task_specs(textvqa_ocr: bool = True) -> dict[str, TaskSpec]:
    """Every benchmark, by the name used on the command line and as the folder under --data."""
    specs = [
        TaskSpec("gqa", "GQA", "lmms-lab/GQA: testdev_balanced_instructions + testdev_balanced_images",
                 "exact match (%)", _gqa, _gqa_score, configs=("testdev_balanced_instructions",),
                 splits=("testdev",), image_table=("imageId", "id"), image_configs=("testdev_balanced_images",)),
        TaskSpec("mmbench", "MMBench", "lmms-lab/MMBench: en, dev split", "CircularEval accuracy (%)",
                 _mmbench, _mmbench_score, configs=("en",), splits=("dev",),
                 sample_group=lambda e: e.meta["group"],
                 note="the test split has no answers (scored by the MMBench server); use dev"),
        TaskSpec("mme", "MME", "lmms-lab/MME: test split", "perception + cognition score", _mme, _mme_score,
                 splits=("test",), sample_group=lambda e: (e.meta["category"], e.meta["image"])),
        TaskSpec("pope", "POPE", "lmms-lab/POPE: test split", "F1 (%), mean of its splits", _pope, _pope_score,
                 splits=("test",)),
        TaskSpec("sqa_img", "ScienceQA-IMG", "lmms-lab/ScienceQA: ScienceQA-IMG, test split", "accuracy (%)",
                 _sqa, _choice_score, configs=("ScienceQA-IMG",), splits=("test",),
                 drop_rows_without_image=True),
        TaskSpec("vqav2", "VQAv2", "lmms-lab/VQAv2: validation split", "VQA accuracy (%)", _vqav2, _vqa_score,
                 splits=("validation", "val"),
                 note="test-dev has no answers (scored by the EvalAI server); use validation (and --limit)"),
        TaskSpec("textvqa", "TextVQA", "lmms-lab/textvqa: validation split", "VQA accuracy (%)",
                 _textvqa_builder(textvqa_ocr), _vqa_score, splits=("validation", "val"),
                 note="the test split has no answers; use validation"),
        TaskSpec("seed", "SEED-Bench", "lmms-lab/SEED-Bench: test split", "accuracy (%)", _seed, _seed_score,
                 splits=("test",)),
    ]
    return {s.name: s for s in specs}


TASKS = tuple(task_specs())
PAPER_TASKS = ("gqa", "mmbench", "mme", "pope", "sqa_img", "vqav2", "textvqa", "seed")
