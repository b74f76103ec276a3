"""Answer and retrieval metrics against hand-computed values."""
import math

import pytest

from contextflow_core.evaluation import exact_match, f1_score, mrr, normalize_answer, qa_metrics, recall_at_k


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The Blue Salt", "blue salt"),
        ("  an  Otter, a heron!  ", "otter heron"),
        ("theatre", "theatre"),  # articles only as whole words
        ("A.B.C.", "abc"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match():
    assert exact_match("The heron.", "heron") == 1.0
    assert exact_match("grey heron", "heron") == 0.0
    assert exact_match("Mount Kelvar", ["Kelvar", "mount kelvar"]) == 1.0
    with pytest.raises(ValueError, match="ground_truths is empty"):
        exact_match("x", [])


def test_f1_hand_computed():
    # pred {blue, salt}, ref {blue, salt, exports}: P = 2/2, R = 2/3, F1 = 2*(1*2/3)/(1+2/3) = 0.8
    assert f1_score("the blue salt", "blue salt exports") == pytest.approx(0.8)
    # pred {x, b, c}, ref {b, c, d, e}: P = 2/3, R = 2/4, F1 = 2*(1/3)/(7/6) = 4/7
    assert f1_score("x b c", "b c d e") == pytest.approx(4 / 7)
    # repeated tokens count as a multiset: pred {salt, salt}, ref {salt}: P = 1/2, R = 1, F1 = 2/3
    assert f1_score("salt salt", "salt") == pytest.approx(2 / 3)
    assert f1_score("copper", "blue salt") == 0.0
    # max over aliases
    assert f1_score("blue salt", ["red rope", "salt"]) == pytest.approx(2 * 0.5 / 1.5)
    # empty after normalisation: 1 only if both are empty
    assert f1_score("the", "a") == 1.0
    assert f1_score("the", "salt") == 0.0


def test_qa_metrics_means_as_fractions():
    preds = ["heron", "the blue salt", "copper"]
    refs = ["Heron", ["blue salt exports", "salt"], "tin"]
    # EM: 1, 0, 0 -> 1/3. F1: 1, max(0.8, 2/3)=0.8, 0 -> 1.8/3 = 0.6
    got = qa_metrics(preds, refs)
    assert got == {"exact_match": pytest.approx(1 / 3), "f1": pytest.approx(0.6)}
    empty = qa_metrics([], [])
    assert math.isnan(empty["exact_match"]) and math.isnan(empty["f1"])
    with pytest.raises(ValueError, match="differ in length: 1 vs 2"):
        qa_metrics(["a"], ["a", "b"])


RETRIEVED = [["p1", "p2", "p3"], ["p4", "p5", "p6"], ["p7", "p8", "p9"], ["p1", "p2", "p3"]]
GOLD = [["p2"], ["p9", "p6"], ["p0"], []]  # last question has no gold: skipped


def test_recall_at_k_hand_computed():
    assert recall_at_k(RETRIEVED, GOLD, k=1) == 0.0
    assert recall_at_k(RETRIEVED, GOLD, k=2) == pytest.approx(1 / 3)
    assert recall_at_k(RETRIEVED, GOLD, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(RETRIEVED, GOLD, k=100) == pytest.approx(2 / 3)


def test_mrr_hand_computed():
    # ranks: 2, 3, none -> (1/2 + 1/3 + 0) / 3 = 5/18
    assert mrr(RETRIEVED, GOLD) == pytest.approx(5 / 18)
    # with k=2 the rank-3 hit no longer counts: (1/2) / 3 = 1/6
    assert mrr(RETRIEVED, GOLD, k=2) == pytest.approx(1 / 6)


def test_retrieval_metrics_edge_cases():
    assert math.isnan(recall_at_k([["p1"]], [[]], k=1))
    assert math.isnan(mrr([["p1"]], [[]]))
    with pytest.raises(ValueError, match="differ in length"):
        recall_at_k([["p1"]], [], k=1)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            recall_at_k(RETRIEVED, GOLD, k=bad_k)
