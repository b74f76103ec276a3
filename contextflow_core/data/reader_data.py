"""Reader training data: questions over short passages, answered by a span of one of them.

Boundary: pure-Python data generation (no torch, no tokenizers, no I/O). All
randomness comes from one ``random.Random`` seeded with the string
``"contextflow-reader:<seed>"``, a seed space apart from the synthetic
benchmark's integer seeds; the global RNG is never touched.

Each `ReaderExample` asks one question about an invented entity (ten kinds, 43
relations, see `reader_world`). Its gold passage states one to four facts about
that entity in prose or as a fact sheet, in shuffled order, sometimes with a
filler sentence; the answer (a year, a date, a number with or without unit, a
name, a place or a multi-word phrase) is a verbatim span of it. Zero to three
distractor passages are added: another entity of the same kind with the same
relation, other facts about the same entity, or an unrelated entity. Passages
are shuffled; titles (the entity's name) are present in about half the examples.

Names never meet the benchmark's (see `reader_world`), so no question or answer
entity of `make_synthetic`'s test split can appear here.

Example:
    >>> ex = make_reader_examples(3, seed=0)[0]
    >>> ex.answer in ex.passages[ex.gold_index].text
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from contextflow_core.data.reader_world import KINDS, RELATIONS, Pools, Relation
from contextflow_core.types import Passage

__all__ = ["ReaderExample", "make_reader_examples", "DISTRACTOR_KINDS"]

_FILLERS = (
    "Little else is recorded about {name}.",
    "Much has been written about {name} since then.",
    "Local historians still argue about the details.",
    "Records from that period are incomplete.",
    "{name} appears in several old travel guides.",
)


@dataclass
class ReaderExample:
    """One question, its passages (gold and distractors, shuffled) and the answer span.

    Attributes:
        question: The question text.
        passages: Gold passage and 0..3 distractors, in random order.
        gold_index: Position of the gold passage in `passages`.
        answer: The answer; a verbatim span of ``passages[gold_index].text``.
        metadata: ``kind``, ``relation``, ``entity``, ``style``, ``distractors`` (their types).
    """

    question: str
    passages: list[Passage]
    gold_index: int
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def gold(self) -> Passage:
        """The passage that contains the answer."""
        return self.passages[self.gold_index]


def make_reader_examples(num_examples: int, seed: int = 0, max_distractors: int = 3) -> list[ReaderExample]:
    """Generates `num_examples` reader examples, identical for identical arguments.

    Args:
        num_examples: How many examples, >= 1.
        seed: Seed of the private ``random.Random`` (in the reader's own seed space).
        max_distractors: Most distractor passages per example, >= 0.

    Returns:
        The examples.

    Raises:
        ValueError: An argument is out of range.
    """
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples: expected an int >= 1, got {num_examples!r}")
    if not isinstance(max_distractors, int) or max_distractors < 0:
        raise ValueError(f"max_distractors: expected an int >= 0, got {max_distractors!r}")
    rng = random.Random(f"contextflow-reader:{seed}")
    names = Pools(rng)
    return [_example(rng, names, f"r{seed}-{i}", max_distractors) for i in range(num_examples)]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _facts(rng: random.Random, names: Pools, entity: str, relations: list[Relation]) -> list[tuple[Relation, str]]:
    """Draws a value per relation, distinct from the entity and from each other."""
    out: list[tuple[Relation, str]] = []
    for rel in relations:
        for _ in range(20):
            value = rel.value(rng, names)
            if value != entity and all(value not in v and v not in value for _, v in out) and value not in entity:
                out.append((rel, value))
                break
    return out


def _render(rng: random.Random, entity: str, facts: list[tuple[Relation, str]], style: str) -> str:
    if style == "sheet":
        rows = [f"{rel.name.replace('_', ' ').capitalize()}: {value}." for rel, value in facts]
        return " ".join([f"{_sentence(entity)}."] + rows)
    sentences = [_sentence(rng.choice(rel.facts).format(name=entity, value=value)) for rel, value in facts]
    if rng.random() < 0.3:
        sentences.insert(rng.randint(0, len(sentences)), _sentence(rng.choice(_FILLERS).format(name=entity)))
    return " ".join(sentences)


def _entity_passage(rng, names, kind, entity, relations, style) -> tuple[str, list[tuple[Relation, str]]]:
    facts = _facts(rng, names, entity, relations)
    return _render(rng, entity, facts, style), facts


def _same_kind(rng, names, kind, entity, asked, style):
    other = names.new(kind)
    extra = [r for r in RELATIONS[kind] if r is not asked]
    rels = [asked] + rng.sample(extra, rng.randint(0, min(2, len(extra))))
    return other, _entity_passage(rng, names, kind, other, rels, style)[0]


def _same_entity(rng, names, kind, entity, asked, style):
    extra = [r for r in RELATIONS[kind] if r is not asked]
    return entity, _entity_passage(
        rng, names, kind, entity, rng.sample(extra, rng.randint(1, min(2, len(extra)))), style
    )[0]


def _other_kind(rng, names, kind, entity, asked, style):
    other_kind = rng.choice([k for k in KINDS if k != kind])
    other = names.new(other_kind)
    rels = rng.sample(RELATIONS[other_kind], rng.randint(1, 2))
    return other, _entity_passage(rng, names, other_kind, other, rels, style)[0]


_DISTRACTORS = {"same_kind": _same_kind, "same_entity": _same_entity, "other_kind": _other_kind}
DISTRACTOR_KINDS = tuple(_DISTRACTORS)


def _distractor(rng, names, kind_of_distractor, kind, entity, asked) -> tuple[str, str]:
    """(title, text) of one distractor; only "same_entity" may name the asked entity (never its asked fact)."""
    for _ in range(20):
        style = "sheet" if rng.random() < 0.1 else "prose"
        title, text = _DISTRACTORS[kind_of_distractor](rng, names, kind, entity, asked, style)
        if kind_of_distractor == "same_entity" or entity not in text:
            return title, text
    return _other_kind(rng, names, kind, entity, asked, "prose")  # pragma: no cover - vanishingly rare


def _example(rng: random.Random, names: Pools, prefix: str, max_distractors: int) -> ReaderExample:
    kind = rng.choice(KINDS)
    entity = names.new(kind)
    relations = list(RELATIONS[kind])
    n_facts = min(len(relations), rng.choice((1, 1, 2, 2, 3, 4)))
    chosen = rng.sample(relations, n_facts)
    style = "sheet" if rng.random() < 0.15 else "prose"
    text, facts = _entity_passage(rng, names, kind, entity, chosen, style)
    asked, answer = rng.choice(facts)
    titled = rng.random() < 0.5
    drafts = [(entity, text)]
    types = [rng.choice(DISTRACTOR_KINDS) for _ in range(rng.randint(0, max_distractors))]
    for t in types:
        drafts.append(_distractor(rng, names, t, kind, entity, asked))
    order = list(range(len(drafts)))
    rng.shuffle(order)
    passages = [
        Passage(id=f"{prefix}-{j}", text=drafts[i][1], title=drafts[i][0] if titled else None)
        for j, i in enumerate(order)
    ]
    question = _sentence(rng.choice(asked.questions).format(name=entity))
    meta = {"kind": kind, "relation": asked.name, "entity": entity, "style": style, "distractors": types}
    return ReaderExample(question, passages, order.index(0), answer, meta)
