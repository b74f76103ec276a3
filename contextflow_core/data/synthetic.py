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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from contextflow_core.data.readers import QAExample
from contextflow_core.types import Passage

# ---------------------------------------------------------------------------- names

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p",
           "r", "s", "sh", "st", "t", "th", "v", "z")
_VOWELS = "aeiou"
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "th")
_TOWN_SUFFIXES = ("vik", "holm", "dell", "mar", "ford", "stead", "wick")
_COMPANY_SUFFIXES = ("Works", "Trading", "Mills", "Foundry", "Brothers", "Company")


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


_NAME_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "person": lambda r: f"{_word(r, r.randint(1, 2))} {_word(r, 2)}",
    "town": lambda r: _word(r, r.randint(1, 2)) + r.choice(_TOWN_SUFFIXES),
    "river": lambda r: _word(r, r.randint(2, 3)),
    "company": lambda r: f"{_word(r, 2)} {r.choice(_COMPANY_SUFFIXES)}",
}
KINDS = tuple(_NAME_MAKERS)


class _World:
    """Entity names by kind, plus every name ever issued (real or decoy)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self.used: set[str] = set()

    def new_name(self, kind: str) -> str:
        while True:
            name = _NAME_MAKERS[kind](self.rng)
            if name not in self.used:
                self.used.add(name)
                return name

    def near_miss(self, name: str) -> str:
        """Returns an unused name that differs from ``name`` by one lowercase vowel."""
        positions = [i for i, ch in enumerate(name) if ch in _VOWELS]
        for _ in range(50):
            i = self.rng.choice(positions)
            vowel = self.rng.choice([v for v in _VOWELS if v != name[i]])
            candidate = name[:i] + vowel + name[i + 1:]
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate
        return self.near_miss(name + "e")  # pragma: no cover - vanishingly rare


# ---------------------------------------------------------------------------- values

ValueMaker = Callable[[random.Random, _World, str], str]


def _year(rng: random.Random, world: _World, name: str) -> str:
    return str(rng.randint(1620, 1990))


def _choice(pool: tuple[str, ...]) -> ValueMaker:
    return lambda rng, world, name: rng.choice(pool)


@dataclass(frozen=True)
class _Ref:
    """Value maker: the name of another entity of ``kind`` (a fresh name if none exist)."""

    kind: str

    def __call__(self, rng: random.Random, world: _World, name: str) -> str:
        pool = world.names[self.kind]
        for _ in range(8 if pool else 0):
            candidate = rng.choice(pool)
            if candidate != name:
                return candidate
        return world.new_name(self.kind)


def _mountain(rng: random.Random, world: _World, name: str) -> str:
    return f"Mount {_word(rng, 2)}"


def _length(rng: random.Random, world: _World, name: str) -> str:
    return f"{rng.randint(40, 2900)} kilometres"


_COLORS = ("amber", "teal", "ochre", "violet", "crimson", "saffron", "indigo", "olive",
           "maroon", "turquoise", "lilac", "scarlet", "beige", "cobalt blue", "moss green")
_PROFESSIONS = ("glassblower", "cartographer", "beekeeper", "clockmaker", "ferryman",
                "bookbinder", "tanner", "lighthouse keeper", "potter", "saddler", "weaver")
_EXPORTS = ("blue salt", "copper wire", "dried figs", "glass beads", "wool rugs", "smoked eel",
            "tin cups", "pine resin", "cork tiles", "silver thread", "barley wine", "rope")
_ANIMALS = ("heron", "lynx", "otter", "stag", "wren", "badger", "salmon", "owl", "hare",
            "falcon", "boar", "swan")
_PRODUCTS = ("clockwork toys", "paper lanterns", "brass valves", "wax candles", "felt hats",
             "ceramic pipes", "oak barrels", "sail cloth", "spring scales", "iron kettles")


@dataclass(frozen=True)
class _Attribute:
    """One attribute: how to draw a value, state it, ask for it, and mislead about it."""

    name: str
    value: ValueMaker
    facts: tuple[str, ...]
    questions: tuple[str, ...]
    red_herrings: tuple[str, ...]


_A = _Attribute
ATTRIBUTES: dict[str, tuple[_Attribute, ...]] = {
    "person": (
        _A("birth_year", _year,
           ("{name} was born in {value}.", "Records show that {name} came into the world in {value}.",
            "Born in {value}, {name} grew up far from the sea."),
           ("In which year was {name} born?", "What is the birth year of {name}?",
            "When did {name} enter this life?"),
           ("{name} moved to the coast in {value}.", "In {value}, {name} published a slim book of riddles.")),
        _A("home_town", _Ref("town"),
           ("{name} grew up in the town of {value}.", "{name} is a native of {value}.",
            "The town of {value} is where {name} was raised."),
           ("Which town is {name} from?", "What is the home town of {name}?",
            "Where did {name} spend their childhood?"),
           ("{name} once spent a winter in {value}.", "{name} gave a lecture in {value}.")),
        _A("profession", _choice(_PROFESSIONS),
           ("{name} worked as a {value} for most of their life.", "By trade, {name} was a {value}.",
            "{name} earned a living as a {value}."),
           ("What was the occupation of {name}?", "What job did {name} have?",
            "Which trade did {name} practise?"),
           ("The neighbour of {name} worked as a {value}.", "{name} once hired a {value}.")),
        _A("favorite_color", _choice(_COLORS),
           ("The favourite colour of {name} was {value}.", "{name} always dressed in {value}.",
            "Friends said {name} loved the colour {value} above all others."),
           ("What colour did {name} like best?", "Which colour was {name} most fond of?",
            "What was the preferred colour of {name}?"),
           ("{name} once painted a fence {value} for a friend.", "{name} disliked the colour {value}.")),
    ),
    "town": (
        _A("founding_year", _year,
           ("{name} was founded in {value}.", "The town of {name} dates back to {value}.",
            "Settlers established {name} in {value}."),
           ("What is the founding year of {name}?", "In which year did the town of {name} begin?",
            "When was {name} first settled?"),
           ("A great fair was held in {name} in {value}.", "{name} was badly flooded in {value}.")),
        _A("export", _choice(_EXPORTS),
           ("{name} is known for exporting {value}.", "The main export of {name} is {value}.",
            "Merchants from {name} sell {value} across the region."),
           ("What does {name} export?", "Which goods is {name} famous for shipping abroad?",
            "What is the chief trade good of {name}?"),
           ("{name} imports most of its {value}.", "A shipment of {value} once sank near {name}.")),
        _A("emblem", _choice(_ANIMALS),
           ("The emblem of {name} is a {value}.", "A {value} appears on the crest of {name}.",
            "{name} chose the {value} as its symbol."),
           ("Which animal is on the coat of arms of {name}?", "What animal represents {name}?",
            "What creature stands for the town of {name}?"),
           ("A stuffed {value} stands in the town hall of {name}.", "{name} holds a yearly {value} parade.")),
        _A("river", _Ref("river"),
           ("The {value} river flows through {name}.", "{name} lies on the banks of the {value}.",
            "{name} was built where the {value} river bends."),
           ("Which river runs through {name}?", "On what river is {name} situated?",
            "What river passes {name}?"),
           ("A bridge in {name} is named after the {value} river.", "{name} once feuded over the {value}.")),
    ),
    "river": (
        _A("source", _mountain,
           ("The {name} river rises on {value}.", "The source of the {name} is high on {value}.",
            "The {name} begins as a spring on {value}."),
           ("Where does the {name} river start?", "On which mountain does the {name} have its origin?",
            "From what peak does the {name} river come?"),
           ("Hikers can see the {name} river from {value}.", "{value} casts a shadow over the {name} valley.")),
        _A("length", _length,
           ("The {name} river is {value} long.", "From source to mouth, the {name} runs for {value}.",
            "The {name} stretches {value}."),
           ("How long is the {name} river?", "What is the length of the {name}?",
            "Over what distance does the {name} river extend?"),
           ("A canal of {value} links the {name} to a lake.", "The {name} river is navigable for {value}.")),
        _A("mouth", _Ref("town"),
           ("The {name} river reaches the sea at {value}.", "The {name} ends its course at {value}.",
            "At {value}, the {name} river flows into the sea."),
           ("Where does the {name} river meet the sea?", "At which town does the {name} river end?",
            "What town lies at the mouth of the {name}?"),
           ("Fishermen from {value} often fish the {name} river.", "{value} is a day's walk from the {name}.")),
    ),
    "company": (
        _A("founder", _Ref("person"),
           ("{name} was founded by {value}.", "{value} started {name} with a small loan.",
            "The company {name} owes its existence to {value}."),
           ("Who founded {name}?", "Who is the founder of {name}?", "Which person set up {name}?"),
           ("{value} once bought shares in {name}.", "{value} worked briefly as a clerk at {name}.")),
        _A("founding_year", _year,
           ("{name} opened its doors in {value}.", "{name} has been in business since {value}.",
            "The company {name} was registered in {value}."),
           ("In what year was {name} founded?", "When did {name} start trading?",
            "What is the founding year of the company {name}?"),
           ("{name} opened a second office in {value}.", "{name} nearly went bankrupt in {value}.")),
        _A("product", _choice(_PRODUCTS),
           ("{name} makes {value}.", "The best-known product of {name} is {value}.",
            "{name} manufactures {value} for export."),
           ("What does {name} produce?", "Which goods come out of the workshops of {name}?",
            "What is {name} best known for making?"),
           ("{name} buys {value} from a rival.", "{name} stopped selling {value} long ago.")),
        _A("headquarters", _Ref("town"),
           ("{name} is headquartered in {value}.", "The head office of {name} is in {value}.",
            "{name} runs its business from {value}."),
           ("Where is {name} based?", "In which town does {name} have its main office?",
            "What town is home to the company {name}?"),
           ("{name} has a small warehouse in {value}.", "{name} sponsors a football club in {value}.")),
    ),
}


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

    def to_jsonl(self, directory: Union[str, "os.PathLike[str]"]) -> Path:
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
    meta: dict[str, Any] = {"entity": entity, "kind": fact.kind, "attribute": fact.attribute.name,
                            "value": value, "distractor": bool(distractor_type)}
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
    return examples[:n_train], examples[n_train:n_train + n_val], examples[n_train + n_val:]
