"""evaluate(): loss, SQuAD answer metrics and retrieval metrics against hand-computed values."""
import json
import math

import pytest
import torch
from train_tiny import QA, build_rag

from contextflow_core.evaluation import evaluate
from contextflow_core.training import make_dataloader
from contextflow_core.types import RagAnswer

QUESTIONS = [q for q, _, _ in QA[:4]]
ANSWERS = [a for _, a, _ in QA[:4]]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest, and reproducibly, on one thread (the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model():
    return build_rag(num_docs=2)


def _with_gold(model):
    """Gold ids chosen from the model's own retrieval: rank 2, rank 1, not retrieved, none."""
    _, retrieved = model.retrieve(QUESTIONS, 2)
    ids = retrieved.ids
    missing = next(p for p in model.index.ids if p not in ids[2])
    gold = [[ids[0][1]], [ids[1][0], "zzz"], [missing], []]
    return [{"question": q, "answer": a, "gold_ids": g} for q, a, g in zip(QUESTIONS, ANSWERS, gold)]


def _fixed_answers(model, texts):
    def generate(questions, num_docs=None, max_new_tokens=128, decoding="thorough", **kwargs):
        assert decoding == "fast" and max_new_tokens == 5 and num_docs == 2
        return [RagAnswer(texts[QUESTIONS.index(q)], [], 0.0) for q in questions]

    model.generate = generate


def test_metric_values_match_hand_computation(model):
    # predictions: exact after normalisation, wrong, half of "blue salt", exact after dropping punctuation
    _fixed_answers(model, ["the Zorblat!", "Tarsk", "blue", "1204."])
    data = _with_gold(model)
    metrics = evaluate(model, data, batch_size=3, decoding="fast", max_new_tokens=5)
    with torch.no_grad():
        losses = [model(questions=[q], answers=[a]).loss.item() for q, a in zip(QUESTIONS, ANSWERS)]
    assert metrics["loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert metrics["exact_match"] == pytest.approx(2 / 4)
    assert metrics["f1"] == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)
    assert metrics["recall@1"] == pytest.approx(1 / 3)  # the question without gold ids is not scored
    assert metrics["recall@k"] == pytest.approx(2 / 3)
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert metrics["num_examples"] == 4 and metrics["num_docs"] == 2


def test_examples_path_and_dataloader_give_the_same_metrics(model, tmp_path):
    data = _with_gold(model)
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data))
    kwargs = dict(generate=False)
    a = evaluate(model, data, **kwargs)
    b = evaluate(model, str(path), **kwargs)
    c = evaluate(model, make_dataloader(data, batch_size=2, shuffle=False), **kwargs)
    d = evaluate(model, [{"questions": QUESTIONS, "answers": ANSWERS, "gold_ids": [r["gold_ids"] for r in data]}],
                 **kwargs)
    for other in (b, c, d):
        assert other.keys() == a.keys()
        assert all(other[k] == pytest.approx(a[k], nan_ok=True) for k in a)


def test_without_generation_or_gold_ids_those_metrics_are_nan(model):
    model.train()
    metrics = evaluate(model, [(q, a) for q, a in zip(QUESTIONS, ANSWERS)], generate=False)
    assert math.isfinite(metrics["loss"])
    assert all(math.isnan(metrics[k]) for k in ("exact_match", "f1", "recall@1", "recall@k", "mrr"))
    assert model.training  # the mode is restored


def test_real_generation_runs_deterministically(model):
    data = list(zip(QUESTIONS[:2], ANSWERS[:2]))
    a = evaluate(model, data, max_new_tokens=3, decoding="fast")
    b = evaluate(model, data, max_new_tokens=3, decoding="fast")
    assert a == b and 0.0 <= a["f1"] <= 1.0


def test_empty_data_is_rejected(model):
    with pytest.raises(ValueError, match="data: expected at least one question/answer example"):
        evaluate(model, [], generate=False)
