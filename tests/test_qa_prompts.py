"""Question writers for generated QA: answer-span picking, reply parsing, the cloze and embedded writers."""
import random

import pytest
import tiny

from contextflow_core.data import make_synthetic
from contextflow_core.data.qa_prompts import (
    ABSTRACTIVE_TEMPLATE,
    DEFAULT_QUESTION_TEMPLATE,
    STOPS,
    WRITERS,
    ClozeWriter,
    EmbeddedQuestionWriter,
    parse_qa,
    parse_question,
    pick_answers,
)


def _prompt(passage, answer, title="X"):
    return DEFAULT_QUESTION_TEMPLATE.format(title=title, passage=passage, answer=answer)


# ------------------------------------------------------------------------- pick_answers

def test_pick_answers_prefers_numbers_then_names():
    text = "Dorak Mills was founded by Talvo Brenn in 1901."
    assert pick_answers(text, 3, random.Random(0), title="Dorak Mills") == ["1901", "Talvo Brenn"]
    assert pick_answers(text, 1, random.Random(5), title="Dorak Mills") == ["1901"]


def test_pick_answers_numbers_keep_their_unit_and_names_drop_leading_words():
    assert pick_answers("The Zirgun river is 2900 kilometres long.", 1, random.Random(0)) == ["2900 kilometres"]
    assert pick_answers("At Brenvik, the Sterlum river flows into the sea.", 1, random.Random(0),
                        title="Sterlum") == ["Brenvik"]
    assert pick_answers("The source of the Rintal is high on Mount Zenlok.", 1, random.Random(0),
                        title="Rintal") == ["Mount Zenlok"]


def test_pick_answers_object_phrases_when_no_name_or_number():
    rng = random.Random(0)
    assert pick_answers("Mi Gersher worked as a ferryman for most of their life.", 1, rng,
                        title="Mi Gersher") == ["ferryman"]
    assert pick_answers("A swan appears on the crest of Riksadell.", 1, rng, title="Riksadell") == ["swan"]
    assert pick_answers("Merchants from Hemford sell tin cups across the region.", 1, rng,
                        title="Hemford") == ["tin cups"]


def test_pick_answers_spans_are_verbatim_distinct_and_seeded():
    data = make_synthetic(num_entities=40, seed=4)
    for i, p in enumerate(data.passages):
        spans = pick_answers(p.text, 3, random.Random(i), title=p.title)
        assert all(s in p.text for s in spans) and len(set(spans)) == len(spans)
        assert p.title not in spans
        assert spans == pick_answers(p.text, 3, random.Random(i), title=p.title)


def test_pick_answers_finds_the_synthetic_value_in_most_gold_passages():
    data = make_synthetic(num_entities=40, seed=2)
    gold = [p for p in data.passages if not p.metadata["distractor"]]
    hits = sum(pick_answers(p.text, 1, random.Random(0), title=p.title) == [p.metadata["value"]] for p in gold)
    assert hits / len(gold) >= 0.9, hits / len(gold)


def test_pick_answers_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n: expected an int >= 0"):
        pick_answers("Tarsk was founded in 1204.", -1, random.Random(0))
    with pytest.raises(TypeError, match="rng: expected a random.Random"):
        pick_answers("Tarsk was founded in 1204.", 1, 0)
    with pytest.raises(TypeError, match="passage_text: expected a str"):
        pick_answers(None, 1, random.Random(0))
    assert pick_answers("no names here at all", 0, random.Random(0)) == []


# ------------------------------------------------------------------------- parsers

@pytest.mark.parametrize("reply,expected", [
    (" What does Korvik export?", "What does Korvik export?"),
    ("Question: Who founded Hollin Mills?\nAnswer: Dara Venn", "Who founded Hollin Mills?"),
    ('"In which year was Tarsk founded?" is a good one.', "In which year was Tarsk founded?"),
    ("\n\n1. Q: Where is Dorak Mills based? And why?", "Where is Dorak Mills based?"),
    ("In which year was Mira Talos born", "In which year was Mira Talos born?"),
])
def test_parse_question_good_replies(reply, expected):
    assert parse_question(reply) == expected


@pytest.mark.parametrize("reply", ["", "   \n ", "I cannot do that.", "Answer: 1901", "?", "x" * 400 + "?", None])
def test_parse_question_bad_replies(reply):
    assert parse_question(reply) is None


@pytest.mark.parametrize("reply,expected", [
    (" What does Korvik export?\nAnswer: dried figs.", ("What does Korvik export?", "dried figs")),
    ("Question: Who founded Hollin Mills?\nAnswer:\nDara Venn", ("Who founded Hollin Mills?", "Dara Venn")),
])
def test_parse_qa_good_replies(reply, expected):
    assert parse_qa(reply) == expected


@pytest.mark.parametrize("reply", ["", "What does Korvik export?", "Answer: rope\nWhat does Korvik export?",
                                   "no question here\nAnswer: rope", "What is it?\nAnswer:  ", None])
def test_parse_qa_bad_replies(reply):
    assert parse_qa(reply) is None


def test_templates_have_their_fields():
    filled = DEFAULT_QUESTION_TEMPLATE.format(title="T", passage="P text.", answer="A span")
    assert filled.rstrip().endswith("Question:") and "P text." in filled and "A span" in filled
    assert "P text." in ABSTRACTIVE_TEMPLATE.format(title="T", passage="P text.")
    with pytest.raises(KeyError):
        ABSTRACTIVE_TEMPLATE.format(passage="x")


# ------------------------------------------------------------------------- ClozeWriter

@pytest.mark.parametrize("passage,answer,question", [
    ("Talvo Brenn was born in 1901.", "1901", "In what year was Talvo Brenn born?"),
    ("The main export of Korvik is dried figs.", "dried figs", "What is the main export of Korvik?"),
    ("Korvik is known for exporting rope.", "rope", "What is Korvik known for exporting?"),
    ("Dara Venn started Hollin Mills with a small loan.", "Dara Venn", "Who started Hollin Mills with a small loan?"),
    ("Hollin Mills was founded by Dara Venn.", "Dara Venn", "By whom was Hollin Mills founded?"),
    ("Hollin Mills is headquartered in Brenvik.", "Brenvik", "Where is Hollin Mills headquartered?"),
    ("Hollin Mills has been in business since 1893.", "1893", "Since what year has Hollin Mills been in business?"),
    ("The Zirgun river is 2900 kilometres long.", "2900 kilometres", "How many kilometres is the Zirgun river long?"),
    ("Hollin Mills makes clockwork toys.", "clockwork toys", "Hollin Mills makes what?"),
    ("It rained. Tarsk was founded in 1204. It rained again.", "1204", "In what year was Tarsk founded?"),
])
def test_cloze_writer_questions(passage, answer, question):
    assert ClozeWriter()(_prompt(passage, answer)) == question


def test_cloze_writer_bad_prompts_give_empty_replies():
    w = ClozeWriter()
    assert w("no fields here") == ""
    assert w(_prompt("Tarsk was founded in 1204.", "1999")) == ""  # answer not in the passage
    assert w.batch([_prompt("Tarsk was founded in 1204.", "1204"), "x"]) == ["In what year was Tarsk founded?", ""]
    with pytest.raises(TypeError, match="prompt: expected a str"):
        w(3)


def test_writers_registry():
    assert WRITERS == {"embedded": EmbeddedQuestionWriter, "cloze": ClozeWriter}


# ------------------------------------------------------------------------- EmbeddedQuestionWriter

def _tiny_writer(**kwargs):
    return EmbeddedQuestionWriter(generator=tiny.tiny_generator(), tokenizer=tiny.tiny_tokenizer(), **kwargs)


def test_embedded_writer_is_greedy_and_batching_does_not_change_replies():
    prompts = [_prompt("Tarsk was founded in 1204.", "1204"), _prompt("Quenia exports blue salt.", "blue salt"),
               "short"]
    batched = _tiny_writer(max_new_tokens=6, batch_size=3).batch(prompts)
    one_by_one = [_tiny_writer(max_new_tokens=6, batch_size=1)(p) for p in prompts]
    assert batched == one_by_one
    assert batched == _tiny_writer(max_new_tokens=6, batch_size=2).batch(prompts)
    assert all(isinstance(r, str) for r in batched) and len(set(batched)) > 1
    assert _tiny_writer().batch([]) == []


def test_embedded_writer_restores_train_mode_and_does_not_touch_the_tokenizer():
    model, tok = tiny.tiny_generator(), tiny.tiny_tokenizer()
    model.train()
    side = tok.padding_side
    EmbeddedQuestionWriter(generator=model, tokenizer=tok, max_new_tokens=2)("hello")
    assert all(m.training for m in model.modules())
    assert tok.padding_side == side


def test_embedded_writer_without_chat_template_uses_plain_text():
    w = EmbeddedQuestionWriter(generator=tiny.tiny_generator(), tokenizer=tiny.tiny_tokenizer(chat_template=False),
                               max_new_tokens=3)
    assert w._ids("ab") == tiny.byte_ids("ab")
    assert isinstance(w("ab"), str)


def test_embedded_writer_is_lazy_and_checks_arguments():
    w = EmbeddedQuestionWriter()
    assert w.model is None  # nothing loaded until the first call
    with pytest.raises(ValueError, match="generator/tokenizer: pass both"):
        EmbeddedQuestionWriter(generator=tiny.tiny_generator())
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1"):
        EmbeddedQuestionWriter(max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        EmbeddedQuestionWriter(batch_size=True)
    with pytest.raises(TypeError, match="reader: expected True or False"):
        EmbeddedQuestionWriter(reader="yes")
    with pytest.raises(TypeError, match=r"prompts\[1\]: expected a str"):
        _tiny_writer().batch(["a", 2])


@pytest.mark.parametrize("rule,text,end", [
    ("question", " What does Korvik export?\nAnswer: rope\n", len(" What does Korvik export?")),
    ("question", "\n\nNo question here\nmore", len("\n\nNo question here\n")),
    ("question", " What does Korvik", 0),
    ("answer", " What does Korvik export?\nAnswer: rope\nPassage:", len(" What does Korvik export?\nAnswer: rope\n")),
    ("answer", " What does Korvik export?\nAnswer:", 0),
])
def test_stop_rules(rule, text, end):
    assert STOPS[rule](text) == end


def test_embedded_writer_stop_cuts_the_greedy_reply_where_the_rule_says():
    prompts = ["Passage: p\nAnswer: a\nQuestion:", "Passage: p\nQuestion:", "no markers"]
    for prompt, rule in zip(prompts, ("question", "answer", None)):
        full = _tiny_writer(max_new_tokens=24, stop=None)(prompt)
        end = STOPS[rule](full) if rule else 0
        assert _tiny_writer(max_new_tokens=24)(prompt) == (full[:end] if end else full)
    with pytest.raises(ValueError, match="stop: expected None, 'auto' or one of"):
        EmbeddedQuestionWriter(stop="never")


def test_writers_name_their_settings_for_the_cache():
    assert ClozeWriter().cache_id == "ClozeWriter/1"
    a, b = EmbeddedQuestionWriter(), EmbeddedQuestionWriter(max_new_tokens=7)
    assert a.cache_id != b.cache_id and "max_new_tokens=7" in b.cache_id
    assert "reader" in EmbeddedQuestionWriter(reader=True).cache_id


@pytest.mark.embedded
def test_embedded_writer_real_model_writes_usable_questions():
    data = make_synthetic(num_entities=8, seed=0)
    gold = [p for p in data.passages if not p.metadata["distractor"]][:2]
    prompts = [_prompt(p.text, pick_answers(p.text, 1, random.Random(0), title=p.title)[0], p.title) for p in gold]
    writer = EmbeddedQuestionWriter(max_new_tokens=24)
    replies = writer.batch(prompts)
    assert replies == writer.batch(prompts)  # greedy: deterministic
    questions = [parse_question(r) for r in replies]
    usable = [q for q, p in zip(questions, gold) if q and q.endswith("?") and p.title.split()[0] in q]
    assert usable, replies
