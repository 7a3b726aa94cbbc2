"""The benchmarks' metrics on hand-made cases whose answers are worked out by hand."""

import pytest

from restore.bench.real import metrics as m


@pytest.mark.parametrize("raw, norm", [
    ("Yes", "yes"),
    ("  The Two Dogs. ", "2 dogs"),
    ("a cat", "cat"),
    ("an apple!", "apple"),
    ("100,978", "100978"),
    ("3.5", "3.5"),
    ("red, white", "red white"),
    ("dont know", "don't know"),
    ("girl's", "girl's"),
    ("2:30 pm", "2:30 pm"),
    ("none", "0"),
    ("black/white", "black white"),
    ("ten", "10"),
])
def test_vqa_normalisation(raw, norm):
    assert m.normalize_vqa(raw) == norm


def test_vqa_soft_accuracy_by_hand():
    assert m.vqa_soft_accuracy("yes", ["yes"] * 10) == 1.0
    assert m.vqa_soft_accuracy("no", ["yes"] * 10) == 0.0
    # 2 of 10 said cat: leaving a cat out (2 subsets) leaves 1 → 1/3; leaving another out (8) leaves 2 → 2/3.
    assert m.vqa_soft_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx((2 / 3 + 8 * 2 / 3) / 10)
    # 3 of 10: 3 subsets keep 2 → 2/3, 7 subsets keep 3 → 1.
    assert m.vqa_soft_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # 4 or more agreeing humans: every subset keeps at least 3.
    assert m.vqa_soft_accuracy("dog", ["dog"] * 4 + ["cat"] * 6) == 1.0
    # Normalisation applies to prediction and answers alike.
    assert m.vqa_soft_accuracy("Two.", ["2"] * 10) == 1.0
    assert m.vqa_soft_accuracy("The dog", ["dog"] * 10) == 1.0
    # Fewer than two answers: exact match.
    assert m.vqa_soft_accuracy("dog", ["dog"]) == 1.0 and m.vqa_soft_accuracy("dog", []) == 0.0


def test_exact_match():
    assert m.exact_match("Yes.", "yes") == 1.0
    assert m.exact_match(" left ", "Left") == 1.0
    assert m.exact_match("on the left", "left") == 0.0


@pytest.mark.parametrize("reply, default, want", [
    ("Yes", None, "yes"), ("No.", None, "no"), ("yes, there is a dog", None, "yes"),
    ("There is no dog.", None, "no"), ("It is not there", None, "no"), ("I think yes", None, "yes"),
    ("maybe", None, None), ("maybe", "yes", "yes"), ("", "yes", "yes"),
])
def test_parse_yes_no(reply, default, want):
    assert m.parse_yes_no(reply, default) == want


def test_pope_by_hand():
    targets = ["yes", "yes", "no", "no"]
    # tp 1, fn 1, fp 1, tn 1: precision 1/2, recall 1/2, F1 1/2, accuracy 1/2, yes ratio 1/2.
    out = m.pope_scores(["Yes", "No", "Yes, it is", "no"], targets, ["random"] * 4)
    assert out["splits"]["random"] == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5})
    # All 'yes': precision = share of positives 1/2, recall 1, F1 2/3; an unreadable reply counts as yes.
    out = m.pope_scores(["yes", "yes", "hmm", "yes"], targets, ["a", "a", "a", "a"])
    assert out["f1"] == pytest.approx(2 / 3) and out["accuracy"] == 0.5 and out["yes_ratio"] == 1.0
    # The headline is the mean over splits: perfect on one, all-'no' (F1 0) on the other.
    out = m.pope_scores(["yes", "no", "no", "no"], ["yes", "no", "yes", "no"], ["a", "a", "b", "b"])
    assert out["splits"]["a"]["f1"] == 1.0 and out["splits"]["b"]["f1"] == 0.0 and out["f1"] == 0.5
    assert out["accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_mme_by_hand():
    cats = ["existence"] * 4 + ["code_reasoning"] * 2
    images = ["a", "a", "b", "b", "c", "c"]
    targets = ["yes", "no", "yes", "no", "yes", "no"]
    # existence: 3 of 4 right (acc 75), image a both right, b not (acc+ 50) → 125; code: both → 200.
    replies = ["Yes", "No", "Yes", "Yes", "yes", "no"]
    out = m.mme_scores(replies, targets, cats, images)
    assert out["categories"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert out["perception"] == 125.0 and out["cognition"] == 200.0 and out["total"] == 325.0
    # A reply that is neither yes nor no is wrong; constant 'yes' is 50 per category.
    assert m.mme_scores(["perhaps"] * 6, targets, cats, images)["total"] == 0.0
    assert m.mme_scores(["yes"] * 6, targets, cats, images)["total"] == 100.0
    assert m.mme_category("OCR") == "OCR" and m.mme_category("ocr") == "OCR"
    assert m.mme_category("Commonsense Reasoning") == "commonsense_reasoning"
    assert len(m.MME_PERCEPTION) == 10 and len(m.MME_COGNITION) == 4


@pytest.mark.parametrize("reply, want", [
    ("B", "B"), ("B.", "B"), ("(C)", "C"), ("C) blue", "C"), ("The answer is B.", "B"), ("Answer: c", "C"),
    ("green", "B"), ("Green.", "B"), ("I pick A here", "A"), ("E", None), ("none of them", None), ("", None),
])
def test_extract_choice(reply, want):
    assert m.extract_choice(reply, ["red", "green", "blue"]) == want


def test_choice_and_circular_accuracy():
    options = [["a", "b"], ["a", "b"], ["a", "b", "c"]]
    assert m.choice_accuracy(["A", "b", "C."], ["A", "B", "C"], options) == 1.0
    assert m.choice_accuracy(["A", "A", "A"], ["A", "B", "C"], options) == pytest.approx(1 / 3)
    # Question 1 is answered right in both shifts, question 2 in one of two: 1 of 2.
    assert m.circular_accuracy([True, True, True, False], [1, 1, 2, 2]) == 0.5
    assert m.circular_accuracy([], []) == 0.0


def test_most_common_answer():
    assert m.most_common(["two", "2", "3"]) == "2"
    assert m.most_common(["dog", "cat"]) == "dog"
