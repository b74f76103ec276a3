"""Behaviour of the synthetic fictional-knowledge benchmark."""
import json
import random
import time

import pytest

from contextflow_core.data import SyntheticDataset, make_synthetic
from contextflow_core.data.synthetic import ATTRIBUTES, DISTRACTOR_TYPES


def _as_rows(ds: SyntheticDataset):
    passages = [(p.id, p.text, p.title, json.dumps(p.metadata, sort_keys=True)) for p in ds.passages]
    splits = [[ex.to_dict() for ex in getattr(ds, s)] for s in ("train", "val", "test")]
    return passages, splits


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(num_entities=200, seed=0)


def test_same_seed_gives_identical_output_and_leaves_global_rng_alone():
    random.seed(123)
    state = random.getstate()
    a = make_synthetic(num_entities=40, seed=7)
    assert random.getstate() == state
    random.random()  # perturb the global RNG: must not matter
    b = make_synthetic(num_entities=40, seed=7)
    assert _as_rows(a) == _as_rows(b)


def test_different_seed_gives_different_output():
    assert _as_rows(make_synthetic(num_entities=40, seed=0)) != _as_rows(make_synthetic(num_entities=40, seed=1))


def test_sizes_ids_and_speed():
    start = time.perf_counter()
    ds = make_synthetic(num_entities=200, seed=3, distractors_per_entity=2)
    assert time.perf_counter() - start < 1.0
    per_kind = {kind: len(attrs) for kind, attrs in ATTRIBUTES.items()}
    expected_questions = sum(per_kind[k] for k in ATTRIBUTES for _ in range(50))
    assert len(ds.questions) == expected_questions
    assert len(ds.passages) == expected_questions + 2 * 200
    ids = [p.id for p in ds.passages]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 6 and i.startswith("p") and i[1:].isdigit() for i in ids)


def test_every_gold_passage_contains_its_answer(ds):
    by_id = {p.id: p for p in ds.passages}
    for ex in ds.questions:
        assert len(ex.gold_ids) == 1
        gold = by_id[ex.gold_ids[0]]
        assert ex.answer in gold.text
        assert gold.title == ex.metadata["entity"]
        assert gold.metadata["entity"] == ex.metadata["entity"]
        assert gold.metadata["attribute"] == ex.metadata["attribute"]
        assert gold.metadata["distractor"] is False


def test_answers_are_short_and_questions_do_not_copy_passages(ds):
    by_id = {p.id: p for p in ds.passages}
    for ex in ds.questions:
        assert 1 <= len(ex.answer.split()) <= 3
        assert ex.answer not in ex.question
        assert ex.question != by_id[ex.gold_ids[0]].text
        assert ex.aliases == [ex.answer]


def test_splits_are_disjoint_and_follow_fractions(ds):
    questions = [ex.question for ex in ds.questions]
    assert len(set(questions)) == len(questions)
    n = len(questions)
    assert abs(len(ds.train) - 0.8 * n) <= 1 and abs(len(ds.val) - 0.1 * n) <= 1
    train = {ex.question for ex in ds.train}
    assert not train & {ex.question for ex in ds.val}
    assert not train & {ex.question for ex in ds.test}


def test_near_miss_distractors_exist(ds):
    distractors = [p for p in ds.passages if p.metadata["distractor"]]
    assert len(distractors) == 200
    assert {p.metadata["distractor_type"] for p in distractors} == set(DISTRACTOR_TYPES)
    gold_ids = {g for ex in ds.questions for g in ex.gold_ids}
    assert not gold_ids & {p.id for p in distractors}
    confusable = 0
    for ex in ds.questions:
        entity = ex.metadata["entity"]
        if any(entity in p.text or ex.answer in p.text or p.metadata.get("near_miss_of") == entity
               for p in distractors):
            confusable += 1
    assert confusable > len(ds.questions) // 2
    similar = [p for p in distractors if p.metadata["distractor_type"] == "similar_name"]
    for p in similar:  # one vowel apart, never the same name
        original = p.metadata["near_miss_of"]
        assert p.metadata["entity"] != original and len(p.metadata["entity"]) == len(original)
        assert sum(a != b for a, b in zip(p.metadata["entity"], original)) == 1


def test_no_distractors_when_zero():
    ds = make_synthetic(num_entities=12, seed=0, distractors_per_entity=0)
    assert not any(p.metadata["distractor"] for p in ds.passages)
    assert len(ds.passages) == len(ds.questions)


def test_tiny_world_still_valid():
    ds = make_synthetic(num_entities=1, seed=5, distractors_per_entity=3, splits=(1.0, 0.0, 0.0))
    assert len(ds.train) == len(ATTRIBUTES["person"]) and not ds.val and not ds.test
    by_id = {p.id: p for p in ds.passages}
    assert all(ex.answer in by_id[ex.gold_ids[0]].text for ex in ds.train)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_entities": 0}, "num_entities"),
        ({"distractors_per_entity": -1}, "distractors_per_entity"),
        ({"splits": (0.5, 0.5, 0.5)}, "splits"),
        ({"splits": (1.0, 0.0)}, "splits"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)
