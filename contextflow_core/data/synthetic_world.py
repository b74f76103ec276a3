"""The invented world behind `make_synthetic`: name makers, value pools and the attribute table
(passage, question and red-herring templates per attribute). Pure data and pure functions of a
seeded ``random.Random``."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# ---------------------------------------------------------------------------- names

_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "sh",
    "st",
    "t",
    "th",
    "v",
    "z",
)
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
            candidate = name[:i] + vowel + name[i + 1 :]
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


_COLORS = (
    "amber",
    "teal",
    "ochre",
    "violet",
    "crimson",
    "saffron",
    "indigo",
    "olive",
    "maroon",
    "turquoise",
    "lilac",
    "scarlet",
    "beige",
    "cobalt blue",
    "moss green",
)
_PROFESSIONS = (
    "glassblower",
    "cartographer",
    "beekeeper",
    "clockmaker",
    "ferryman",
    "bookbinder",
    "tanner",
    "lighthouse keeper",
    "potter",
    "saddler",
    "weaver",
)
_EXPORTS = (
    "blue salt",
    "copper wire",
    "dried figs",
    "glass beads",
    "wool rugs",
    "smoked eel",
    "tin cups",
    "pine resin",
    "cork tiles",
    "silver thread",
    "barley wine",
    "rope",
)
_ANIMALS = ("heron", "lynx", "otter", "stag", "wren", "badger", "salmon", "owl", "hare", "falcon", "boar", "swan")
_PRODUCTS = (
    "clockwork toys",
    "paper lanterns",
    "brass valves",
    "wax candles",
    "felt hats",
    "ceramic pipes",
    "oak barrels",
    "sail cloth",
    "spring scales",
    "iron kettles",
)


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
        _A(
            "birth_year",
            _year,
            (
                "{name} was born in {value}.",
                "Records show that {name} came into the world in {value}.",
                "Born in {value}, {name} grew up far from the sea.",
            ),
            ("In which year was {name} born?", "What is the birth year of {name}?", "When did {name} enter this life?"),
            ("{name} moved to the coast in {value}.", "In {value}, {name} published a slim book of riddles."),
        ),
        _A(
            "home_town",
            _Ref("town"),
            (
                "{name} grew up in the town of {value}.",
                "{name} is a native of {value}.",
                "The town of {value} is where {name} was raised.",
            ),
            (
                "Which town is {name} from?",
                "What is the home town of {name}?",
                "Where did {name} spend their childhood?",
            ),
            ("{name} once spent a winter in {value}.", "{name} gave a lecture in {value}."),
        ),
        _A(
            "profession",
            _choice(_PROFESSIONS),
            (
                "{name} worked as a {value} for most of their life.",
                "By trade, {name} was a {value}.",
                "{name} earned a living as a {value}.",
            ),
            ("What was the occupation of {name}?", "What job did {name} have?", "Which trade did {name} practise?"),
            ("The neighbour of {name} worked as a {value}.", "{name} once hired a {value}."),
        ),
        _A(
            "favorite_color",
            _choice(_COLORS),
            (
                "The favourite colour of {name} was {value}.",
                "{name} always dressed in {value}.",
                "Friends said {name} loved the colour {value} above all others.",
            ),
            (
                "What colour did {name} like best?",
                "Which colour was {name} most fond of?",
                "What was the preferred colour of {name}?",
            ),
            ("{name} once painted a fence {value} for a friend.", "{name} disliked the colour {value}."),
        ),
    ),
    "town": (
        _A(
            "founding_year",
            _year,
            (
                "{name} was founded in {value}.",
                "The town of {name} dates back to {value}.",
                "Settlers established {name} in {value}.",
            ),
            (
                "What is the founding year of {name}?",
                "In which year did the town of {name} begin?",
                "When was {name} first settled?",
            ),
            ("A great fair was held in {name} in {value}.", "{name} was badly flooded in {value}."),
        ),
        _A(
            "export",
            _choice(_EXPORTS),
            (
                "{name} is known for exporting {value}.",
                "The main export of {name} is {value}.",
                "Merchants from {name} sell {value} across the region.",
            ),
            (
                "What does {name} export?",
                "Which goods is {name} famous for shipping abroad?",
                "What is the chief trade good of {name}?",
            ),
            ("{name} imports most of its {value}.", "A shipment of {value} once sank near {name}."),
        ),
        _A(
            "emblem",
            _choice(_ANIMALS),
            (
                "The emblem of {name} is a {value}.",
                "A {value} appears on the crest of {name}.",
                "{name} chose the {value} as its symbol.",
            ),
            (
                "Which animal is on the coat of arms of {name}?",
                "What animal represents {name}?",
                "What creature stands for the town of {name}?",
            ),
            ("A stuffed {value} stands in the town hall of {name}.", "{name} holds a yearly {value} parade."),
        ),
        _A(
            "river",
            _Ref("river"),
            (
                "The {value} river flows through {name}.",
                "{name} lies on the banks of the {value}.",
                "{name} was built where the {value} river bends.",
            ),
            ("Which river runs through {name}?", "On what river is {name} situated?", "What river passes {name}?"),
            ("A bridge in {name} is named after the {value} river.", "{name} once feuded over the {value}."),
        ),
    ),
    "river": (
        _A(
            "source",
            _mountain,
            (
                "The {name} river rises on {value}.",
                "The source of the {name} is high on {value}.",
                "The {name} begins as a spring on {value}.",
            ),
            (
                "Where does the {name} river start?",
                "On which mountain does the {name} have its origin?",
                "From what peak does the {name} river come?",
            ),
            ("Hikers can see the {name} river from {value}.", "{value} casts a shadow over the {name} valley."),
        ),
        _A(
            "length",
            _length,
            (
                "The {name} river is {value} long.",
                "From source to mouth, the {name} runs for {value}.",
                "The {name} stretches {value}.",
            ),
            (
                "How long is the {name} river?",
                "What is the length of the {name}?",
                "Over what distance does the {name} river extend?",
            ),
            ("A canal of {value} links the {name} to a lake.", "The {name} river is navigable for {value}."),
        ),
        _A(
            "mouth",
            _Ref("town"),
            (
                "The {name} river reaches the sea at {value}.",
                "The {name} ends its course at {value}.",
                "At {value}, the {name} river flows into the sea.",
            ),
            (
                "Where does the {name} river meet the sea?",
                "At which town does the {name} river end?",
                "What town lies at the mouth of the {name}?",
            ),
            ("Fishermen from {value} often fish the {name} river.", "{value} is a day's walk from the {name}."),
        ),
    ),
    "company": (
        _A(
            "founder",
            _Ref("person"),
            (
                "{name} was founded by {value}.",
                "{value} started {name} with a small loan.",
                "The company {name} owes its existence to {value}.",
            ),
            ("Who founded {name}?", "Who is the founder of {name}?", "Which person set up {name}?"),
            ("{value} once bought shares in {name}.", "{value} worked briefly as a clerk at {name}."),
        ),
        _A(
            "founding_year",
            _year,
            (
                "{name} opened its doors in {value}.",
                "{name} has been in business since {value}.",
                "The company {name} was registered in {value}.",
            ),
            (
                "In what year was {name} founded?",
                "When did {name} start trading?",
                "What is the founding year of the company {name}?",
            ),
            ("{name} opened a second office in {value}.", "{name} nearly went bankrupt in {value}."),
        ),
        _A(
            "product",
            _choice(_PRODUCTS),
            (
                "{name} makes {value}.",
                "The best-known product of {name} is {value}.",
                "{name} manufactures {value} for export.",
            ),
            (
                "What does {name} produce?",
                "Which goods come out of the workshops of {name}?",
                "What is {name} best known for making?",
            ),
            ("{name} buys {value} from a rival.", "{name} stopped selling {value} long ago."),
        ),
        _A(
            "headquarters",
            _Ref("town"),
            (
                "{name} is headquartered in {value}.",
                "The head office of {name} is in {value}.",
                "{name} runs its business from {value}.",
            ),
            (
                "Where is {name} based?",
                "In which town does {name} have its main office?",
                "What town is home to the company {name}?",
            ),
            ("{name} has a small warehouse in {value}.", "{name} sponsors a football club in {value}."),
        ),
    ),
}
