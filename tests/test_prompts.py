"""f(x, z): expected ids and label masks spelled out by hand for the byte tokenizer."""
import pytest
import torch
from tiny import ASSISTANT, BOS, EOS, PAD, SYSTEM, USER, byte_ids, tiny_tokenizer

from contextflow_core.config import PromptConfig
from contextflow_core.prompts import IGNORE_INDEX, PromptBuilder
from contextflow_core.types import Passage

CFG = dict(system_prompt="S", instruction="I")
P = Passage(id="p1", text="body", title="T")


def test_chat_template_ids_and_labels_by_hand():
    builder = PromptBuilder(tiny_tokenizer(chat_template=True), PromptConfig(**CFG))
    enc = builder.encode("q?", P, "ans")
    prompt = (
        [SYSTEM] + byte_ids("S\n") + [USER] + byte_ids("I\n\nPassage:\n") + byte_ids("Title: T\nbody")
        + byte_ids("\n\nQuestion: q?\n") + [ASSISTANT]
    )
    answer = byte_ids("ans") + [EOS]
    assert enc.input_ids == prompt + answer
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert enc.prompt_length == len(prompt) and enc.passage_tokens_cut == 0


def test_plain_format_ids_and_labels_by_hand():
    builder = PromptBuilder(tiny_tokenizer(chat_template=False), PromptConfig(**CFG))
    assert not builder.uses_chat_template
    enc = builder.encode("q?", Passage(id="x", text="body"), "ans")
    prompt = [BOS] + byte_ids("S\n\nI\n\nPassage:\nbody\n\nQuestion: q?\nAnswer: ")
    assert enc.input_ids == prompt + byte_ids("ans") + [EOS]
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + byte_ids("ans") + [EOS]


def test_unicode_answer_labels_are_its_bytes_plus_eos():
    builder = PromptBuilder(tiny_tokenizer(), PromptConfig(**CFG))
    enc = builder.encode("¿qué? 🙂", "Zürich 東京", "naïve 🚀")
    answer = byte_ids("naïve 🚀") + [EOS]
    assert enc.labels[enc.prompt_length:] == answer
    assert enc.input_ids[-len(answer):] == answer


def test_long_passage_is_cut_but_question_and_answer_are_kept():
    full = PromptBuilder(tiny_tokenizer(), PromptConfig(**CFG)).encode("q?", "x" * 50, "ans")
    budget = len(full.input_ids) - 20
    builder = PromptBuilder(tiny_tokenizer(), PromptConfig(**CFG, max_length=budget))
    enc = builder.encode("q?", "x" * 50, "ans")
    assert len(enc.input_ids) == budget and enc.passage_tokens_cut == 20
    expected = (
        [SYSTEM] + byte_ids("S\n") + [USER] + byte_ids("I\n\nPassage:\n") + byte_ids("x" * 30)
        + byte_ids("\n\nQuestion: q?\n") + [ASSISTANT] + byte_ids("ans") + [EOS]
    )
    assert enc.input_ids == expected


def test_no_room_for_question_and_answer_raises_clear_error():
    builder = PromptBuilder(tiny_tokenizer(), PromptConfig(**CFG, max_length=10))
    with pytest.raises(ValueError, match=r"max_length.*need \d+ tokens"):
        builder.encode("a long question here?", "p", "answer")


def test_concat_prompt_joins_passages_with_separator():
    builder = PromptBuilder(tiny_tokenizer(chat_template=False), PromptConfig(**CFG))
    enc = builder.encode("q", [Passage("a", "one"), Passage("b", "two", title="B")])
    assert enc.input_ids == [BOS] + byte_ids("S\n\nI\n\nPassage:\none\n\nTitle: B\ntwo\n\nQuestion: q\nAnswer: ")
    assert enc.labels == [IGNORE_INDEX] * len(enc.input_ids)


def test_encode_batch_matches_encode_row_major():
    builder = PromptBuilder(tiny_tokenizer(), PromptConfig(**CFG))
    qs, ps, ans = ["q1", "q2"], [["a", "b"], ["c", "d"]], ["x", "yy"]
    batch = builder.encode_batch(qs, ps, ans)
    single = [builder.encode(q, p, a) for q, row, a in zip(qs, ps, ans) for p in row]
    assert [e.input_ids for e in batch] == [e.input_ids for e in single]
    assert [e.labels for e in batch] == [e.labels for e in single]


def test_collate_left_pads_and_counts_positions_from_first_real_token():
    builder = PromptBuilder(tiny_tokenizer(), PromptConfig(**CFG))
    encs = builder.encode_batch(["q", "qq"], [["a"], ["bbb"]], ["x", "y"])
    batch = builder.collate(encs)
    n0, n1 = len(encs[0].input_ids), len(encs[1].input_ids)
    L = max(n0, n1)
    assert batch["input_ids"].shape == (2, L)
    assert batch["input_ids"][0, : L - n0].tolist() == [PAD] * (L - n0)
    assert batch["attention_mask"][0].tolist() == [0] * (L - n0) + [1] * n0
    assert batch["position_ids"][0, L - n0 :].tolist() == list(range(n0))
    assert batch["labels"][0, -2:].tolist() == byte_ids("x") + [EOS]
    assert (batch["labels"][0, : L - n0] == IGNORE_INDEX).all()


@pytest.mark.parametrize("bad, err", [("", ValueError), ("   ", ValueError), (3, TypeError)])
def test_empty_or_non_string_question_and_answer_rejected(bad, err):
    builder = PromptBuilder(tiny_tokenizer(), PromptConfig(**CFG))
    with pytest.raises(err, match="question"):
        builder.encode(bad, "p", "a")
    with pytest.raises(err, match="answer"):
        builder.encode("q", "p", bad)


def test_tokenizer_without_eos_rejected():
    tok = tiny_tokenizer()
    tok.eos_token = None
    with pytest.raises(ValueError, match="generator_tokenizer.*EOS"):
        PromptBuilder(tok)


def test_forcing_chat_template_without_one_rejected():
    with pytest.raises(ValueError, match="chat_template"):
        PromptBuilder(tiny_tokenizer(chat_template=False), PromptConfig(use_chat_template=True))


@pytest.mark.parametrize("field, value", [("passage_format", "no text"), ("question_format", "Q"),
                                          ("user_format", "{question}"), ("max_length", 0)])
def test_prompt_config_rejects_contradictions(field, value):
    with pytest.raises(ValueError, match=field):
        PromptConfig(**{field: value})
