"""Readers for user QA data and passage files."""
import json

import pytest

from contextflow_core.data import QAExample, load_passages, load_qa, make_synthetic
from contextflow_core.types import Passage


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_through_to_jsonl(tmp_path):
    ds = make_synthetic(num_entities=16, seed=2, distractors_per_entity=2)
    out = ds.to_jsonl(tmp_path / "bench")
    assert sorted(p.name for p in out.iterdir()) == ["passages.jsonl", "test.jsonl", "train.jsonl", "val.jsonl"]
    passages = load_passages(out / "passages.jsonl")
    assert [(p.id, p.text, p.title, p.metadata) for p in passages] == [
        (p.id, p.text, p.title, p.metadata) for p in ds.passages
    ]
    for split in ("train", "val", "test"):
        assert load_qa(out / f"{split}.jsonl") == getattr(ds, split)
    assert load_qa(str(out / "train.jsonl")) == ds.train  # str paths too


def test_csv_with_pipe_separated_gold_ids(tmp_path):
    path = _write(
        tmp_path / "qa.csv",
        'question,answer,gold_ids\n"Who founded Brakton, the firm?",Ilsa Morn,p1|p2\nWhat colour?,teal,\n',
    )
    got = load_qa(path)
    assert got == [
        QAExample("Who founded Brakton, the firm?", "Ilsa Morn", ["p1", "p2"]),
        QAExample("What colour?", "teal", []),
    ]
    assert got[0].aliases == ["Ilsa Morn"]


def test_tsv_and_single_gold_id(tmp_path):
    path = _write(tmp_path / "qa.tsv", "question\tanswer\tgold_id\nWhere?\tOrvik\tp7\n")
    assert load_qa(path) == [QAExample("Where?", "Orvik", ["p7"])]


def test_json_array_and_answer_lists(tmp_path):
    rows = [{"question": "Which animal?", "answer": ["heron", "grey heron"], "gold_id": "p3"}]
    path = _write(tmp_path / "qa.json", json.dumps(rows))
    (ex,) = load_qa(path)
    assert (ex.answer, ex.aliases, ex.gold_ids) == ("heron", ["heron", "grey heron"], ["p3"])


def test_in_memory_sources():
    tuples = load_qa([("Q1?", "a1"), ("Q2?", "a2", ["p9"])])
    assert tuples == [QAExample("Q1?", "a1"), QAExample("Q2?", "a2", ["p9"])]
    dicts = load_qa([{"question": "Q?", "answer": "a", "aliases": ["A."], "metadata": {"k": 1}}])
    assert dicts[0].aliases == ["a", "A."] and dicts[0].metadata == {"k": 1}
    assert load_qa(tuples) == tuples  # QAExample passes through


class FakeDataset:
    """Duck-typed stand-in for datasets.Dataset (the real package is not installed)."""

    def __init__(self, rows, column_names=None):
        self.rows = rows
        self.column_names = column_names if column_names is not None else list(rows[0])

    def __iter__(self):
        return iter(self.rows)


def test_hf_dataset_duck_typed_with_squad_answers():
    ds = FakeDataset([{"question": "Q?", "answers": {"text": ["x", "y"], "answer_start": [0, 4]}}])
    assert load_qa(ds) == [QAExample("Q?", "x", aliases=["x", "y"])]


def test_hf_dataset_missing_column_and_dataset_dict():
    with pytest.raises(ValueError, match="missing column 'answer'.*FakeDataset"):
        load_qa(FakeDataset([{"question": "Q?"}]))
    with pytest.raises(TypeError, match="pass one split"):
        load_qa(FakeDataset([], column_names={"train": ["question", "answer"]}))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_qa(missing)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_passages(missing)


def test_missing_column_names_column_file_and_line(tmp_path):
    path = _write(tmp_path / "qa.jsonl", '{"question": "Q?", "answer": "a"}\n\n{"question": "R?"}\n')
    with pytest.raises(ValueError, match=r"missing column 'answer' in .*qa\.jsonl, line 3"):
        load_qa(path)
    csv_path = _write(tmp_path / "qa.csv", "query,answer\nQ?,a\n")
    with pytest.raises(ValueError, match=r"missing column 'question' in .*qa\.csv, line 2"):
        load_qa(csv_path)
    passages = _write(tmp_path / "p.jsonl", '{"id": "p0", "text": "x"}\n{"id": "p1"}\n')
    with pytest.raises(ValueError, match=r"missing key 'text' in .*p\.jsonl, line 2"):
        load_passages(passages)


@pytest.mark.parametrize(
    "rows, match",
    [
        ([("Q?", "a"), ("", "b")], r"row 1 .*question must be a non-empty string; got ''"),
        ([("Q?", "   ")], r"row 0 .*answer must be a non-empty string; got '   '"),
        ([{"question": 42, "answer": "a"}], r"row 0 .*question .*got 42"),
        ([{"question": "Q?", "answer": None}], r"row 0 .*answer .*got None"),
        ([("Q?", [])], r"row 0 .*answer list is empty"),
        ([("Q?",)], r"row 0: expected \(question, answer\)"),
    ],
)
def test_bad_rows_name_index_and_value(rows, match):
    with pytest.raises(ValueError, match=match):
        load_qa(rows)


def test_bad_file_rows(tmp_path):
    bad_json = _write(tmp_path / "bad.jsonl", '{"question": "Q?", "answer": "a"}\n{not json\n')
    with pytest.raises(ValueError, match=r"invalid JSON in .*bad\.jsonl, line 2"):
        load_qa(bad_json)
    empty_answer = _write(tmp_path / "e.csv", "question,answer\nQ?,\n")
    with pytest.raises(ValueError, match=r"row 0 \(.*e\.csv, line 2\): answer .*got ''"):
        load_qa(empty_answer)
    dup = _write(tmp_path / "dup.jsonl", '{"id": "p0", "text": "x"}\n{"id": "p0", "text": "y"}\n')
    with pytest.raises(ValueError, match="duplicate passage id 'p0'.*line 2.*first on line 1"):
        load_passages(dup)
    with pytest.raises(ValueError, match=r"unsupported file extension '\.txt'"):
        load_qa(_write(tmp_path / "qa.txt", "x"))


@pytest.mark.parametrize("source", [42, {"question": "Q?", "answer": "a"}, b"bytes"])
def test_unsupported_source_type_names_type_and_accepted(source):
    with pytest.raises(TypeError, match=rf"got {type(source).__name__}; expected a path"):
        load_qa(source)


def test_unsupported_row_type_names_row():
    with pytest.raises(TypeError, match="row 1: got int"):
        load_qa([("Q?", "a"), 5])


def test_load_passages_optional_fields(tmp_path):
    path = _write(tmp_path / "p.jsonl", '{"id": 3, "text": "Quenia exports blue salt."}\n')
    assert load_passages(path) == [Passage(id="3", text="Quenia exports blue salt.")]
