"""The invented world behind `make_reader_examples`: names, values and relation templates.

Pure data and pure functions of a seeded ``random.Random`` (no I/O, no models).

Disjoint from the synthetic benchmark by construction: every word of every name
made here starts with a letter cluster that `synthetic_world._word` can never
produce (``INITIALS``: J, Qu, X, Y, W, Ch, or a consonant pair such as "Pl" or
"Sk" whose second letter the benchmark never puts after that first letter), so no
entity of the benchmark (any split, any seed) is ever named in reader data.
The relations and attributes are many more than the benchmark's, and leave out
the kinds the unseen-template corpus (`benchmarks/unseen_corpus.py`) asks about
(colours, instruments, durations, weights, prices).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

INITIALS = ("J", "Qu", "X", "Y", "W", "Ch", "Cl", "Tw", "Sk", "Pl", "Fr", "Wr", "Gl", "Bl", "Sn", "Sp")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "j", "ch", "qu", "x")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "x", "nd", "rt")


def word(rng: random.Random, syllables: int) -> str:
    """A capitalised invented word whose first cluster is one of `INITIALS`."""
    first = rng.choice(INITIALS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
    rest = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables - 1)]
    return (first + "".join(rest)).lower().capitalize()


def _w(rng: random.Random) -> str:
    return word(rng, rng.choice((1, 2, 2, 3)))


NAME_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "person": lambda r: f"{_w(r)} {_w(r)}",
    "city": lambda r: _w(r) + r.choice(("ton", "burg", "port", "haven", "field", "gate", "by", "mouth", "")),
    "country": lambda r: word(r, r.randint(1, 2)) + r.choice(("ia", "land", "ora", "istan", "a")),
    "river": lambda r: word(r, r.randint(2, 3)),
    "mountain": lambda r: r.choice(("Mount {}", "{} Peak", "the {} Horn")).format(word(r, 2)),
    "company": lambda r: f"{_w(r)} {r.choice(('Ltd', 'Group', 'Industries', 'and Sons', 'Partners', 'Holdings'))}",
    "ship": lambda r: f"{_w(r)} {r.choice(('Star', 'Dawn', 'Wind', 'Queen', 'Spirit', 'Arrow'))}",
    "book": lambda r: f"The {r.choice(('Lantern', 'Orchard', 'Bridge', 'Harvest', 'Winter', 'Tower'))} of {_w(r)}",
    "festival": lambda r: f"the {_w(r)} {r.choice(('Fair', 'Festival', 'Games', 'Carnival'))}",
    "island": lambda r: f"{_w(r)} Island",
}

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
POOLS: dict[str, tuple[str, ...]] = {
    "profession": (
        "architect",
        "surgeon",
        "ship's carpenter",
        "astronomer",
        "judge",
        "chemist",
        "sculptor",
        "schoolteacher",
        "mapmaker",
        "engineer",
        "baker",
        "journalist",
        "botanist",
        "lawyer",
    ),
    "product": (
        "steam engines",
        "printing presses",
        "bicycles",
        "fishing nets",
        "wooden toys",
        "typewriters",
        "glass bottles",
        "leather boots",
        "garden tools",
        "telescopes",
        "sewing machines",
        "paper",
    ),
    "dish": (
        "fish stew",
        "honey cakes",
        "roast lamb",
        "pickled herring",
        "barley soup",
        "plum dumplings",
        "spiced sausages",
        "baked apples",
        "onion pie",
    ),
    "crop": ("wheat", "olives", "rice", "tea", "cotton", "grapes", "potatoes", "tobacco", "sugar beet"),
    "title_word": ("the Bold", "the Wise", "the Younger", "the Silent", "the Great", "the Just"),
    "sport": ("rowing", "archery", "wrestling", "chess", "fencing", "sailing", "cycling"),
    "genre": ("mystery novel", "travel memoir", "children's book", "history", "book of poems", "cookbook"),
}


def pool(name: str) -> Callable[[random.Random, Pools], str]:
    return lambda rng, names: rng.choice(POOLS[name])


class Pools:
    """Every name issued so far, by kind (refs reuse them so facts link entities)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.by_kind: dict[str, list[str]] = {kind: [] for kind in NAME_MAKERS}
        self.used: set[str] = set()

    def new(self, kind: str) -> str:
        while True:
            name = NAME_MAKERS[kind](self.rng)
            if name not in self.used:
                self.used.add(name)
                self.by_kind[kind].append(name)
                return name

    def ref(self, kind: str, avoid: str = "") -> str:
        names = [n for n in self.by_kind[kind][-40:] if n != avoid]
        return self.rng.choice(names) if names and self.rng.random() < 0.5 else self.new(kind)


Value = Callable[[random.Random, Pools], str]


def ref(kind: str) -> Value:
    return lambda rng, names: names.ref(kind)


def year(rng: random.Random, names: Pools) -> str:
    return str(rng.randint(1480, 2021))


def date(rng: random.Random, names: Pools) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1500, 2020)}"


def number(low: int, high: int, unit: str = "", commas: bool = True) -> Value:
    def make(rng: random.Random, names: Pools) -> str:
        n = rng.randint(low, high)
        text = f"{n:,}" if commas and rng.random() < 0.5 else str(n)
        return f"{text} {unit}".strip()

    return make


def language(rng: random.Random, names: Pools) -> str:
    return word(rng, rng.randint(1, 2)) + rng.choice(("ish", "ese", "ic", "an"))


def nickname(rng: random.Random, names: Pools) -> str:
    return f"{word(rng, 2)} {rng.choice(POOLS['title_word'])}"


@dataclass(frozen=True)
class Relation:
    """One fact kind: how to draw a value, state it in a passage, and ask for it."""

    name: str
    value: Value
    facts: tuple[str, ...]
    questions: tuple[str, ...]


_R = Relation
RELATIONS: dict[str, tuple[Relation, ...]] = {
    "person": (
        _R(
            "birth_year",
            year,
            (
                "{name} was born in {value}.",
                "Born in {value}, {name} was the eldest of five children.",
                "{name} (born {value}) spent most of a long life abroad.",
            ),
            ("In which year was {name} born?", "When was {name} born?", "What year was {name} born in?"),
        ),
        _R(
            "birthplace",
            ref("city"),
            ("{name} was born in {value}.", "{name} came from {value}.", "The birthplace of {name} was {value}."),
            ("Where was {name} born?", "Which city was {name} born in?", "What is the birthplace of {name}?"),
        ),
        _R(
            "profession",
            pool("profession"),
            (
                "{name} was a {value} by profession.",
                "{name} worked as a {value}.",
                "For thirty years {name} earned a living as a {value}.",
            ),
            ("What was the profession of {name}?", "What did {name} work as?", "What was {name}'s job?"),
        ),
        _R(
            "spouse",
            ref("person"),
            (
                "{name} married {value}.",
                "{name} was married to {value}.",
                "{value} became the wife of {name} after a short engagement.",
            ),
            ("Who did {name} marry?", "Who was the spouse of {name}?", "Who was {name} married to?"),
        ),
        _R(
            "death_date",
            date,
            ("{name} died on {value}.", "{name} passed away on {value}."),
            ("When did {name} die?", "On what date did {name} die?"),
        ),
        _R(
            "nickname",
            nickname,
            ("{name} was known to friends as {value}.", "People called {name} {value}."),
            ("What was the nickname of {name}?", "What did people call {name}?"),
        ),
    ),
    "city": (
        _R(
            "founded",
            year,
            (
                "{name} was founded in {value}.",
                "The city of {name} dates from {value}.",
                "Traders built the first houses of {name} in {value}.",
            ),
            (
                "When was {name} founded?",
                "In what year was {name} founded?",
                "How old is {name}? Give the founding year.",
            ),
        ),
        _R(
            "population",
            number(900, 2_000_000),
            (
                "{name} has a population of {value}.",
                "About {value} people live in {name}.",
                "The last census counted {value} residents in {name}.",
            ),
            (
                "What is the population of {name}?",
                "How many people live in {name}?",
                "How many residents does {name} have?",
            ),
        ),
        _R(
            "country",
            ref("country"),
            (
                "{name} is a city in {value}.",
                "{name} lies in the north of {value}.",
                "{name} is the second largest city of {value}.",
            ),
            ("In which country is {name}?", "Which country is {name} in?", "What country does {name} belong to?"),
        ),
        _R(
            "mayor",
            ref("person"),
            (
                "The mayor of {name} is {value}.",
                "{value} was elected mayor of {name}.",
                "{name} is governed by its mayor, {value}.",
            ),
            ("Who is the mayor of {name}?", "Who governs {name} as mayor?", "Who was elected mayor of {name}?"),
        ),
        _R(
            "dish",
            pool("dish"),
            ("{name} is famous for its {value}.", "Visitors to {name} always try the local {value}."),
            ("What food is {name} famous for?", "Which dish is {name} known for?"),
        ),
        _R(
            "river",
            ref("river"),
            (
                "The river {value} flows through {name}.",
                "{name} stands on the {value} river.",
                "{name} was built on both banks of the {value}.",
            ),
            ("Which river flows through {name}?", "What river runs through {name}?", "On which river is {name}?"),
        ),
    ),
    "country": (
        _R(
            "capital",
            ref("city"),
            (
                "{value} is the capital of {name}.",
                "The capital of {name} is {value}.",
                "The government of {name} sits in its capital, {value}.",
            ),
            (
                "What is the capital of {name}?",
                "Which city is the capital of {name}?",
                "Where is the capital of {name}?",
            ),
        ),
        _R(
            "language",
            language,
            ("The official language of {name} is {value}.", "Most people in {name} speak {value}."),
            ("What language is spoken in {name}?", "What is the official language of {name}?"),
        ),
        _R(
            "independence",
            date,
            ("{name} became independent on {value}.", "{name} declared independence on {value}."),
            ("When did {name} become independent?", "On what date did {name} declare independence?"),
        ),
        _R(
            "crop",
            pool("crop"),
            ("The main crop of {name} is {value}.", "Farmers in {name} mostly grow {value}."),
            ("What is the main crop of {name}?", "What do farmers in {name} mostly grow?"),
        ),
        _R(
            "ruler",
            ref("person"),
            ("{name} is ruled by {value}.", "The head of state of {name} is {value}."),
            ("Who rules {name}?", "Who is the head of state of {name}?"),
        ),
    ),
    "river": (
        _R(
            "source",
            ref("mountain"),
            ("The {name} rises on {value}.", "The source of the {name} is on {value}."),
            ("Where does the {name} rise?", "Where is the source of the {name}?"),
        ),
        _R(
            "length",
            number(30, 4000, "kilometres"),
            ("The {name} is {value} long.", "The {name} river runs for {value}."),
            ("How long is the {name}?", "What is the length of the {name} river?"),
        ),
        _R(
            "mouth",
            ref("city"),
            ("The {name} flows into the sea at {value}.", "The {name} reaches the coast at {value}."),
            ("Where does the {name} reach the sea?", "At which city does the {name} flow into the sea?"),
        ),
    ),
    "mountain": (
        _R(
            "height",
            number(600, 8800, "metres"),
            ("{name} is {value} high.", "{name} rises to {value} above sea level."),
            ("How high is {name}?", "What is the height of {name}?"),
        ),
        _R(
            "first_climber",
            ref("person"),
            ("{name} was first climbed by {value}.", "{value} was the first to reach the top of {name}."),
            ("Who first climbed {name}?", "Who was the first person to climb {name}?"),
        ),
        _R(
            "first_ascent",
            year,
            ("The first ascent of {name} was in {value}.", "Nobody stood on {name} before {value}."),
            ("When was {name} first climbed?", "In which year was {name} first climbed?"),
        ),
    ),
    "company": (
        _R(
            "founder",
            ref("person"),
            (
                "{name} was founded by {value}.",
                "{value} started {name} in a small shed.",
                "{value} is the founder of {name}.",
            ),
            ("Who founded {name}?", "Who is the founder of {name}?", "Who started {name}?"),
        ),
        _R(
            "founded",
            year,
            ("{name} was founded in {value}.", "{name} has been trading since {value}."),
            ("When was {name} founded?", "In which year was {name} founded?"),
        ),
        _R(
            "product",
            pool("product"),
            (
                "{name} makes {value}.",
                "{name} is best known for its {value}.",
                "The factories of {name} produce {value}.",
            ),
            ("What does {name} make?", "What is {name} known for producing?", "What does {name} produce?"),
        ),
        _R(
            "headquarters",
            ref("city"),
            ("{name} is based in {value}.", "The head office of {name} is in {value}."),
            ("Where is {name} based?", "Where is the head office of {name}?"),
        ),
        _R(
            "employees",
            number(12, 90_000),
            ("{name} employs {value} people.", "{name} has {value} employees."),
            ("How many people does {name} employ?", "How many employees does {name} have?"),
        ),
        _R(
            "ceo",
            ref("person"),
            ("{value} is the chief executive of {name}.", "{name} is run by {value}."),
            ("Who runs {name}?", "Who is the chief executive of {name}?"),
        ),
    ),
    "ship": (
        _R(
            "captain",
            ref("person"),
            ("The {name} was commanded by {value}.", "{value} was captain of the {name}."),
            ("Who was the captain of the {name}?", "Who commanded the {name}?"),
        ),
        _R(
            "launched",
            date,
            ("The {name} was launched on {value}.", "The {name} first went to sea on {value}."),
            ("When was the {name} launched?", "On what date was the {name} launched?"),
        ),
        _R(
            "home_port",
            ref("city"),
            ("The home port of the {name} was {value}.", "The {name} sailed from {value}."),
            ("What was the home port of the {name}?", "From which port did the {name} sail?"),
        ),
        _R(
            "crew",
            number(8, 900),
            ("The {name} carried a crew of {value}.", "{value} sailors served on the {name}."),
            ("How many sailors served on the {name}?", "How large was the crew of the {name}?"),
        ),
    ),
    "book": (
        _R(
            "author",
            ref("person"),
            ("{name} was written by {value}.", "{value} is the author of {name}."),
            ("Who wrote {name}?", "Who is the author of {name}?"),
        ),
        _R(
            "published",
            year,
            ("{name} was published in {value}.", "{name} first appeared in {value}."),
            ("When was {name} published?", "In which year was {name} published?"),
        ),
        _R(
            "pages",
            number(60, 1400, "pages", commas=False),
            ("{name} runs to {value}.", "{name} has {value}."),
            ("How many pages does {name} have?", "How long is {name}?"),
        ),
        _R(
            "genre",
            pool("genre"),
            ("{name} is a {value}.", "Critics described {name} as a {value}."),
            ("What kind of book is {name}?", "What genre is {name}?"),
        ),
    ),
    "festival": (
        _R(
            "city",
            ref("city"),
            ("{name} is held every year in {value}.", "{value} hosts {name}."),
            ("Where is {name} held?", "Which city hosts {name}?"),
        ),
        _R(
            "first_held",
            year,
            ("{name} was first held in {value}.", "{name} began in {value}."),
            ("When was {name} first held?", "In which year did {name} begin?"),
        ),
        _R(
            "sport",
            pool("sport"),
            ("The main event of {name} is {value}.", "{name} is famous for its {value} contest."),
            ("What is the main event of {name}?", "Which contest is {name} famous for?"),
        ),
    ),
    "island": (
        _R(
            "area",
            number(2, 9000, "square kilometres"),
            ("{name} covers {value}.", "{name} has an area of {value}."),
            ("How big is {name}?", "What is the area of {name}?"),
        ),
        _R(
            "owner",
            ref("country"),
            ("{name} belongs to {value}.", "{name} is part of {value}."),
            ("Which country does {name} belong to?", "To which country does {name} belong?"),
        ),
        _R(
            "discovered_by",
            ref("person"),
            ("{name} was discovered by {value}.", "{value} was the first to land on {name}."),
            ("Who discovered {name}?", "Who first landed on {name}?"),
        ),
    ),
}
KINDS = tuple(RELATIONS)
