"""Deterministic synthetic QA benchmark about invented entities.

Boundary: pure-Python data generation (no torch model code, no tokenizers, no I/O
except `SyntheticDataset.to_jsonl`). All randomness comes from one seeded
``random.Random``; the global RNG is never touched.

The world holds invented people, towns, rivers and companies whose attributes
(birth year, home town, founder, export, ...) no pretrained LLM can know, so a
model can only answer by retrieving the right passage. Each attribute has several
passage templates and several question templates worded differently from the
passages. Near-miss distractor passages make retrieval non-trivial:

* ``similar_name``: an entity whose name differs by one vowel, same attribute,
  different value ("Talva Brenn was born in 1901." next to "Talvo Brenn ...").
* ``same_entity``: the same entity with a red-herring fact of the same value type
  ("Talvo Brenn moved to the coast in 1901.").
* ``shared_value``: another entity with the same attribute value.

Every question has exactly one gold passage, which contains the answer verbatim.

Example:
    >>> ds = make_synthetic(num_entities=20, seed=0)
    >>> ex = ds.train[0]
    >>> gold = {p.id: p for p in ds.passages}[ex.gold_ids[0]]
    >>> ex.answer in gold.text
    True
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contextflow_core.data.readers import QAExample
from contextflow_core.data.synthetic_world import ATTRIBUTES, KINDS, _Attribute, _Ref, _World
from contextflow_core.types import Passage

# ---------------------------------------------------------------------------- dataset


@dataclass
class SyntheticDataset:
    """A generated benchmark: one shared passage corpus and disjoint question splits.

    Attributes:
        passages: The corpus (gold and distractor passages, shuffled), ids ``p00000``...
            Each has ``title`` = entity name and metadata ``entity``, ``kind``,
            ``attribute``, ``value``, ``distractor`` (and ``distractor_type``).
        train: Training questions.
        val: Validation questions.
        test: Test questions.
    """

    passages: list[Passage]
    train: list[QAExample] = field(default_factory=list)
    val: list[QAExample] = field(default_factory=list)
    test: list[QAExample] = field(default_factory=list)

    @property
    def questions(self) -> list[QAExample]:
        """All questions, train then val then test."""
        return self.train + self.val + self.test

    def to_jsonl(self, directory: str | os.PathLike[str]) -> Path:
        """Writes ``passages.jsonl`` and ``{train,val,test}.jsonl`` into ``directory``.

        The files are read back by `load_passages` and `load_qa`.

        Args:
            directory: Target folder, created if missing.

        Returns:
            The folder as a `Path`.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"id": p.id, "text": p.text, "title": p.title, "metadata": p.metadata} for p in self.passages]
        _write_jsonl(out / "passages.jsonl", rows)
        for split in ("train", "val", "test"):
            _write_jsonl(out / f"{split}.jsonl", [ex.to_dict() for ex in getattr(self, split)])
        return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@dataclass
class _Fact:
    kind: str
    name: str
    attribute: _Attribute
    value: str


@dataclass
class _Draft:
    text: str
    title: str
    metadata: dict[str, Any]


def make_synthetic(
    num_entities: int = 200,
    seed: int = 0,
    distractors_per_entity: int = 1,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> SyntheticDataset:
    """Generates a fictional-knowledge QA benchmark, identical for identical arguments.

    Entities cycle through the kinds person, town, river, company; each entity gets
    one gold passage and one question per attribute of its kind (3 or 4), so there
    are about 3.75 questions per entity.

    Args:
        num_entities: Number of real (asked-about) entities, >= 1.
        seed: Seed of the private ``random.Random``; different seeds give different data.
        distractors_per_entity: Near-miss passages added per entity (>= 0); their
            types rotate through ``similar_name``, ``same_entity``, ``shared_value``.
        splits: Fractions of questions for (train, val, test); non-negative, sum 1.

    Returns:
        The dataset; splits are disjoint by question and share the whole corpus.

    Raises:
        ValueError: An argument is out of range.
    """
    _check_args(num_entities, distractors_per_entity, splits)
    rng = random.Random(seed)
    world = _World(rng)
    entities = []  # (kind, name), kinds in rotation
    for i in range(num_entities):
        kind = KINDS[i % len(KINDS)]
        entities.append((kind, world.new_name(kind)))
        world.names[kind].append(entities[-1][1])
    facts_by_entity = [_draw_facts(world, kind, name) for kind, name in entities]
    facts = [fact for entity_facts in facts_by_entity for fact in entity_facts]
    drafts = [_gold_draft(rng, fact) for fact in facts]  # drafts[i] is the gold of facts[i]
    for e, entity_facts in enumerate(facts_by_entity):
        for j in range(distractors_per_entity):
            maker = _DISTRACTORS[DISTRACTOR_TYPES[(e + j) % len(DISTRACTOR_TYPES)]]
            drafts.append(maker(world, rng.choice(entity_facts)))
    passages, ids = _assign_ids(rng, drafts)
    examples = [_question(rng, fact, ids[i]) for i, fact in enumerate(facts)]
    train, val, test = _split(rng, examples, splits)
    return SyntheticDataset(passages=passages, train=train, val=val, test=test)


def _check_args(num_entities: int, distractors_per_entity: int, splits: tuple[float, ...]) -> None:
    if not isinstance(num_entities, int) or num_entities < 1:
        raise ValueError(f"num_entities must be an int >= 1; got {num_entities!r}")
    if not isinstance(distractors_per_entity, int) or distractors_per_entity < 0:
        raise ValueError(f"distractors_per_entity must be an int >= 0; got {distractors_per_entity!r}")
    if len(splits) != 3 or any(s < 0 for s in splits) or abs(sum(splits) - 1.0) > 1e-6:
        raise ValueError(f"splits must be three non-negative fractions summing to 1; got {splits!r}")


def _draw_value(world: _World, attribute: _Attribute, name: str, avoid: str = "") -> str:
    """Draws a value of ``attribute`` for entity ``name`` that differs from ``avoid``."""
    for _ in range(50):
        value = attribute.value(world.rng, world, name)
        if value != avoid:
            return value
    if isinstance(attribute.value, _Ref):  # the only other entity is ``avoid``
        return world.new_name(attribute.value.kind)
    raise RuntimeError(f"could not draw a fresh {attribute.name} value")  # pragma: no cover


def _draw_facts(world: _World, kind: str, name: str) -> list[_Fact]:
    return [_Fact(kind, name, attr, _draw_value(world, attr, name)) for attr in ATTRIBUTES[kind]]


def _metadata(fact: _Fact, entity: str, value: str, distractor_type: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {
        "entity": entity,
        "kind": fact.kind,
        "attribute": fact.attribute.name,
        "value": value,
        "distractor": bool(distractor_type),
    }
    if distractor_type:
        meta["distractor_type"] = distractor_type
    return meta


def _gold_draft(rng: random.Random, fact: _Fact) -> _Draft:
    text = rng.choice(fact.attribute.facts).format(name=fact.name, value=fact.value)
    return _Draft(text, fact.name, _metadata(fact, fact.name, fact.value))


def _similar_name(world: _World, fact: _Fact) -> _Draft:
    decoy = world.near_miss(fact.name)
    value = _draw_value(world, fact.attribute, decoy, avoid=fact.value)
    text = world.rng.choice(fact.attribute.facts).format(name=decoy, value=value)
    meta = _metadata(fact, decoy, value, "similar_name")
    meta["near_miss_of"] = fact.name
    return _Draft(text, decoy, meta)


def _same_entity(world: _World, fact: _Fact) -> _Draft:
    value = _draw_value(world, fact.attribute, fact.name, avoid=fact.value)
    text = world.rng.choice(fact.attribute.red_herrings).format(name=fact.name, value=value)
    return _Draft(text, fact.name, _metadata(fact, fact.name, value, "same_entity"))


def _shared_value(world: _World, fact: _Fact) -> _Draft:
    decoy = world.new_name(fact.kind)
    text = world.rng.choice(fact.attribute.facts).format(name=decoy, value=fact.value)
    return _Draft(text, decoy, _metadata(fact, decoy, fact.value, "shared_value"))


_DISTRACTORS: dict[str, Callable[[_World, _Fact], _Draft]] = {
    "similar_name": _similar_name,
    "same_entity": _same_entity,
    "shared_value": _shared_value,
}
DISTRACTOR_TYPES = tuple(_DISTRACTORS)


def _assign_ids(rng: random.Random, drafts: list[_Draft]) -> tuple[list[Passage], list[str]]:
    """Shuffles the corpus and numbers it; returns passages and the id of each draft."""
    order = list(range(len(drafts)))
    rng.shuffle(order)
    width = max(5, len(str(len(drafts) - 1)))
    ids = [""] * len(drafts)
    passages = []
    for position, i in enumerate(order):
        ids[i] = f"p{position:0{width}d}"
        d = drafts[i]
        passages.append(Passage(id=ids[i], text=d.text, title=d.title, metadata=d.metadata))
    return passages, ids


def _question(rng: random.Random, fact: _Fact, gold_id: str) -> QAExample:
    question = rng.choice(fact.attribute.questions).format(name=fact.name)
    meta = {"entity": fact.name, "kind": fact.kind, "attribute": fact.attribute.name}
    return QAExample(question=question, answer=fact.value, gold_ids=[gold_id], metadata=meta)


def _split(
    rng: random.Random, examples: list[QAExample], splits: tuple[float, float, float]
) -> tuple[list[QAExample], list[QAExample], list[QAExample]]:
    examples = list(examples)
    rng.shuffle(examples)
    n = len(examples)
    n_train = round(n * splits[0])
    n_val = min(round(n * splits[1]), n - n_train)
    return examples[:n_train], examples[n_train : n_train + n_val], examples[n_train + n_val :]
