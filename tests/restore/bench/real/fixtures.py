"""Tiny benchmark folders in the published Parquet schemas (lmms-lab/* on the Hugging Face hub): a few
rows each, images generated as PNG bytes in {bytes, path} struct cells as `datasets` stores them, laid
out as the hub repos are (config folders, 'split-0000x-of-0000n.parquet'), with decoy configs and splits
that must not be read.

The answers are chosen so that a constant reply scores a number worked out by hand (see HAND).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from restore.bench.real import metrics

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def cell(seed: int) -> dict:
    return {"bytes": png(seed), "path": f"{seed}.png"}


def write(path: Path, columns: dict, types: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    types = types or {}
    arrays = {k: pa.array(v, type=types.get(k, IMAGE if k == "image" else None)) for k, v in columns.items()}
    pq.write_table(pa.table(arrays), path, row_group_size=2)  # several row groups per file


def pope(root: Path) -> None:
    cats = ["adversarial", "adversarial", "popular", "popular", "popular", "random", "random"]
    answers = ["yes", "no", "yes", "yes", "no", "yes", "no"]
    n = len(cats)
    write(root / "pope/data/test-00000-of-00001.parquet", {
        "id": [str(i) for i in range(n)], "question_id": [str(i) for i in range(n)],
        "question": [f"Is there a dog in the image {i}?" for i in range(n)], "answer": answers,
        "image_source": [f"COCO_val2014_{i:012d}" for i in range(n)], "image": [cell(i) for i in range(n)],
        "category": cats,
    })


def mme(root: Path) -> None:
    rows = [("existence", "e1.jpg", "Yes"), ("existence", "e1.jpg", "No"), ("count", "c1.jpg", "Yes"),
            ("count", "c1.jpg", "No"), ("code_reasoning", "0020.png", "Yes"), ("code_reasoning", "0020.png", "No")]
    write(root / "mme/data/test-00000-of-00001.parquet", {
        "question_id": [f"{c}/{img}" for c, img, _ in rows], "image": [cell(10 + i // 2) for i in range(len(rows))],
        "question": [f"Is this {i}? Please answer yes or no." for i in range(len(rows))],
        "answer": [a for _, _, a in rows], "category": [c for c, _, _ in rows],
    })


def gqa(root: Path) -> None:
    answers = ["yes", "no", "left", "table"]
    images = ["n1", "n2", "n1", "n3"]
    write(root / "gqa/testdev_balanced_instructions/testdev-00000-of-00001.parquet", {
        "id": [f"20{i}" for i in range(4)], "imageId": images, "question": [f"What is {i}?" for i in range(4)],
        "answer": answers, "fullAnswer": [f"It is {a}." for a in answers], "isBalanced": [True] * 4,
    })
    write(root / "gqa/testdev_balanced_images/testdev-00000-of-00001.parquet",
          {"id": ["n1", "n2", "n3"], "image": [cell(20), cell(21), cell(22)]})
    # A decoy config: must not be read (its image is in no table).
    write(root / "gqa/train_balanced_instructions/train-00000-of-00001.parquet", {
        "id": ["x"], "imageId": ["missing"], "question": ["?"], "answer": ["no"], "fullAnswer": ["No."],
        "isBalanced": [True],
    })


TEXTVQA_ANSWERS = [["nokia"] * 10, ["cat"] * 2 + ["dog"] * 8, ["two"] * 3 + ["2"] * 3 + ["3"] * 4]


def textvqa(root: Path) -> None:
    n = len(TEXTVQA_ANSWERS)
    base = {
        "image_id": [f"t{i}" for i in range(n)], "question_id": list(range(n)),
        "question": [f"what is written {i}?" for i in range(n)], "question_tokens": [["what"]] * n,
        "image": [cell(30 + i) for i in range(n)], "image_width": [16] * n, "image_height": [16] * n,
        "flickr_original_url": [""] * n, "flickr_300k_url": [""] * n, "image_classes": [["sign"]] * n,
        "set_name": ["val"] * n, "ocr_tokens": [["nokia", "3310"]] * n,
    }
    write(root / "textvqa/data/validation-00000-of-00001.parquet", {**base, "answers": TEXTVQA_ANSWERS})
    # The test split carries no answers; a folder holding every split must still read validation only.
    write(root / "textvqa/data/test-00000-of-00001.parquet", {**base, "answers": [None] * n},
          {"answers": pa.list_(pa.string())})


VQAV2_ANSWERS = [["yes"] * 10, ["no"] * 7 + ["yes"] * 3, ["2"] * 10]


def vqav2(root: Path) -> None:
    n = len(VQAV2_ANSWERS)
    answers = [[{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(row)]
               for row in VQAV2_ANSWERS]
    write(root / "vqav2/data/validation-00000-of-00001.parquet", {
        "question_type": ["is the"] * n, "multiple_choice_answer": [row[0] for row in VQAV2_ANSWERS],
        "answers": answers, "image_id": list(range(n)), "answer_type": ["yes/no", "yes/no", "number"],
        "question_id": list(range(n)), "question": [f"Is it {i}?" for i in range(n)],
        "image": [cell(40 + i) for i in range(n)],
    })


def sqa_img(root: Path) -> None:
    choices = [["cat", "dog"], ["red", "green", "blue"], ["one", "two", "three"], ["x", "y"]]
    write(root / "sqa_img/ScienceQA-IMG/test-00000-of-00001.parquet", {
        "image": [cell(50), cell(51), cell(52), None], "question": [f"Which {i}?" for i in range(4)],
        "choices": choices, "answer": [0, 1, 2, 0], "hint": ["A hint.", "", "", ""],
        "task": ["closed choice"] * 4, "grade": ["grade1"] * 4, "subject": ["natural science"] * 4,
        "topic": ["biology"] * 4, "category": ["c"] * 4, "skill": ["s"] * 4, "lecture": [""] * 4,
        "solution": [""] * 4,
    })


def mmbench(root: Path) -> None:
    cols = {
        "index": [0, 1000000, 1], "question": ["Which animal?", "Which animal?", "Is it day?"],
        "hint": ["nan", "nan", "Look at the sky."], "A": ["cat", "dog", "yes"], "B": ["dog", "cat", "no"],
        "C": [None, None, None], "D": [None, None, None], "answer": ["A", "B", "B"],
        "category": ["animal"] * 3, "image": [cell(60), cell(60), cell(61)], "source": ["s"] * 3,
        "L2-category": ["l2"] * 3, "comment": [None] * 3, "split": ["dev"] * 3,
    }
    write(root / "mmbench/en/dev-00000-of-00001.parquet", cols, {"C": pa.string(), "D": pa.string(),
                                                                "comment": pa.string()})
    write(root / "mmbench/cn/dev-00000-of-00001.parquet", cols, {"C": pa.string(), "D": pa.string(),
                                                                "comment": pa.string()})


def seed(root: Path) -> None:
    frames = pa.list_(IMAGE)
    write(root / "seed/data/test-00000-of-00001.parquet", {
        "answer": ["A", "C", "D"], "choice_a": ["a0", "a1", "a2"], "choice_b": ["b0", "b1", "b2"],
        "choice_c": ["c0", "c1", "c2"], "choice_d": ["d0", "d1", "d2"], "data_id": ["1.jpg", "2.jpg", "v.mp4"],
        "data_type": ["image", "image", "video"], "question": ["Q0?", "Q1?", "Q2?"], "question_id": ["0", "1", "2"],
        "question_type_id": [1, 2, 10], "image": [[cell(70)], [cell(71)], [cell(72), cell(73), cell(74)]],
    }, {"image": frames})


BUILDERS = {"pope": pope, "mme": mme, "gqa": gqa, "textvqa": textvqa, "vqav2": vqav2, "sqa_img": sqa_img,
            "mmbench": mmbench, "seed": seed}
QUESTIONS = {"pope": 7, "mme": 6, "gqa": 4, "textvqa": 3, "vqav2": 3, "sqa_img": 3, "mmbench": 3, "seed": 3}

# Constant reply → the task's headline score, worked out by hand from the rows above.
HAND = {
    # POPE 'yes': F1 per split adversarial and random 2/3 (p=1/2, r=1), popular 4/5 (p=2/3, r=1); mean.
    ("pope", "yes"): 100 * (2 / 3 + 4 / 5 + 2 / 3) / 3,
    ("pope", "no"): 0.0,  # no 'yes' said: precision and recall 0
    # MME 'yes': every category acc 50 (one of its two), acc+ 0; perception existence+count, cognition code.
    ("mme", "yes"): 150.0,
    ("gqa", "yes"): 25.0,
    ("gqa", "Left."): 25.0,
    # TextVQA '2': rows 0 and 1 never; row 2 has 'two' (= '2') ×3 + '2' ×3: 6 ≥ 3 in every 9-subset → 1.
    ("textvqa", "2"): 100 / 3,
    # 'cat': row 1 has 2 cats of 10: 2 subsets (a cat left out) 1/3, 8 subsets 2/3 → 0.6.
    ("textvqa", "cat"): 100 * 0.6 / 3,
    # VQAv2 'yes': row 0 → 1; row 1 (3 yes of 10): 3 subsets 2/3, 7 subsets 1 → 0.9; row 2 → 0.
    ("vqav2", "yes"): 100 * (1 + 0.9 + 0) / 3,
    ("sqa_img", "A"): 100 / 3,  # answers A, B, C (the row without an image is dropped)
    ("mmbench", "A"): 0.0,  # CircularEval: question 0 right only in one of its two shifts; question 1 wrong
    ("seed", "A"): 100 / 3,
}
MMBENCH_PLAIN_A = 1 / 3  # per-row accuracy of 'A' on MMBench


def build(root: Path, tasks=None) -> Path:
    for name in tasks or BUILDERS:
        BUILDERS[name](root)
    return root


def oracle(example) -> str:
    """A perfect reply: the yes/no, letter or answer itself; for VQA, the most common human answer."""
    return metrics.most_common(example.target) if isinstance(example.target, list) else str(example.target)
