"""`contextflow demo`: three columns (raw model, reader before training, after joint training)."""
from __future__ import annotations

import pytest

from contextflow_core import demo


@pytest.mark.embedded
@pytest.mark.slow
def test_demo_prints_raw_reader_and_trained_columns_from_one_run(tmp_path, monkeypatch, capsys):
    """A small quick-mode run of the real demo: the reader column comes from the shipped adapter, the raw
    column from the model without it, and the trained model saved starts from the reader."""
    from contextflow_core import RAGSequence, cli
    from contextflow_core.models.reader import reader_of

    monkeypatch.setitem(demo.SIZES, "quick", (12, 4, 2, 1))  # a short run (see demo.SIZES)
    run_demo, result = demo.main, {}

    def recording_main(**kwargs):  # the real demo; keeps what it returns
        result.update(run_demo(**kwargs))

    monkeypatch.setattr(demo, "main", recording_main)
    assert cli.main(["demo", "--quick", "--output-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out

    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert [c.strip() for c in header.split("|")] == ["metric", *demo.COLUMNS]
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
            for line in out.splitlines() if line.split("|")[0].strip() in demo.METRICS}
    assert set(rows) == set(demo.METRICS)
    for i, column in enumerate(("raw", "reader", "after")):  # the table prints this run's figures
        assert rows["exact_match"][i] == f"{result[column]['exact_match']:.4g}"
    # the untrained instruct model answers in sentences; the reader answers with the span
    assert result["raw"]["exact_match"] < result["reader"]["exact_match"]
    assert result["raw"]["loss"] > result["reader"]["loss"]
    # one index, one encoder: retrieval is the same for both untrained columns
    assert result["raw"]["recall@1"] == result["reader"]["recall@1"]
    saved = RAGSequence.from_pretrained(tmp_path / "demo" / "model")
    assert reader_of(saved.generator) is not None


def test_comparison_rows_keep_each_metric_of_each_column():
    raw, reader, after = ({"loss": v, "exact_match": v / 10} for v in (3.0, 2.0, 1.0))
    rows = demo.comparison_rows(raw, reader, after, keys=("loss", "exact_match"))
    assert rows == [{"metric": "loss", demo.COLUMNS[0]: 3.0, demo.COLUMNS[1]: 2.0, demo.COLUMNS[2]: 1.0},
                    {"metric": "exact_match", demo.COLUMNS[0]: 0.3, demo.COLUMNS[1]: 0.2, demo.COLUMNS[2]: 0.1}]
