"""Answer-span picking for answer-aware question generation: rules over plain text, no model.

Boundary: pure functions of a string (and a seeded ``random.Random``); no I/O, no models.

Spans come in three tiers, best first; within a tier the order is drawn from ``rng``:

1. numbers: years, counts, a number with its unit ("2900 kilometres");
2. names: runs of capitalised words ("Talvo Brenn", "Mount Kelda", "Dorak Mills"), leading
   function words dropped ("At Brenvik" -> "Brenvik"); a lone capitalised word that only
   starts a sentence ("Records show ...") is not a name;
3. object phrases: short lowercase noun phrases, preferring those after an article or a
   copula ("a glassblower", "is dried figs") and at a clause's end.

The passage's own title (its entity) is never an answer: questions are about it.
"""

from __future__ import annotations

import random
import re

_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "then",
        "than",
        "that",
        "this",
        "these",
        "those",
        "there",
        "here",
        "it",
        "its",
        "it's",
        "their",
        "his",
        "her",
        "hers",
        "they",
        "them",
        "he",
        "she",
        "we",
        "you",
        "i",
        "me",
        "my",
        "our",
        "your",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "to",
        "with",
        "without",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "above",
        "below",
        "across",
        "along",
        "around",
        "after",
        "before",
        "during",
        "since",
        "until",
        "upon",
        "near",
        "far",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "will",
        "would",
        "can",
        "could",
        "shall",
        "should",
        "may",
        "might",
        "must",
        "not",
        "no",
        "nor",
        "so",
        "such",
        "very",
        "also",
        "just",
        "only",
        "even",
        "still",
        "yet",
        "all",
        "any",
        "each",
        "every",
        "most",
        "more",
        "much",
        "many",
        "some",
        "few",
        "other",
        "others",
        "own",
        "same",
        "one",
        "first",
        "last",
        "who",
        "whom",
        "whose",
        "which",
        "what",
        "when",
        "where",
        "why",
        "how",
        "while",
        "often",
        "once",
        "always",
        "never",
        "said",
        "says",
        "say",
        "known",
        "called",
        "named",
        "became",
        "become",
        "becomes",
    ]
)
_VERBISH = re.compile(r"^(?:\w+(?:ed|ly|es)|\w{4,}ing|was|is|grew|ran|rose|ends|runs|makes|sell|sells|loved|worked)$")
_DET = frozenset(["a", "an", "the", "is", "was", "as", "are", "were"])
_PREPS = frozenset(
    [
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "to",
        "with",
        "into",
        "onto",
        "over",
        "under",
        "about",
        "across",
        "along",
        "around",
        "near",
    ]
)
_LEAD = frozenset(
    [
        "a",
        "an",
        "the",
        "at",
        "in",
        "on",
        "by",
        "from",
        "of",
        "to",
        "for",
        "born",
        "since",
        "after",
        "before",
        "during",
        "with",
        "near",
    ]
)
_UNITS = re.compile(r"^(?:[a-z]+s|km|m|kg|g|cm|mm|ft|mi|%|percent|per\s?cent)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d[\d,.]*\d|\d")
_MAX_WORDS = 4


def _sentences(text: str) -> list[tuple[int, str]]:
    """(offset, sentence) pairs."""
    out, pos = [], 0
    for part in _SENTENCE_END.split(text):
        start = text.find(part, pos)
        out.append((start, part))
        pos = start + len(part)
    return out


def _numbers(words: list[re.Match]) -> list[tuple[int, int]]:
    spans = []
    for i, w in enumerate(words):
        if not w.group()[0].isdigit():
            continue
        end = w.end()
        if i + 1 < len(words) and _UNITS.match(words[i + 1].group()) and words[i + 1].group() not in _STOP:
            end = words[i + 1].end()
        spans.append((w.start(), end))
    return spans


def _is_cap(word: str) -> bool:
    return word[0].isupper() and word.lower() not in _LEAD


def _names(words: list[re.Match]) -> list[tuple[int, int]]:
    spans, i = [], 0
    while i < len(words):
        if not _is_cap(words[i].group()):
            i += 1
            continue
        j = i
        while j + 1 < len(words) and _is_cap(words[j + 1].group()) and words[j + 1].start() - words[j].end() <= 1:
            j += 1
        sentence_start_only = i == 0 and j == 0
        if not sentence_start_only:
            spans.append((words[i].start(), words[j].end()))
        i = j + 1
    return spans


def _phrases(words: list[re.Match]) -> list[tuple[float, int, int]]:
    """Lowercase content-word runs with a score (higher is likelier an answer)."""
    out, i = [], 0
    while i < len(words):
        w = words[i].group()
        if not w[0].islower() or w.lower() in _STOP or _VERBISH.match(w):
            i += 1
            continue
        j = i
        while (
            j + 1 < len(words)
            and j - i + 1 < _MAX_WORDS
            and words[j + 1].group()[0].islower()
            and words[j + 1].group() not in _STOP
            and words[j + 1].start() - words[j].end() <= 1
        ):
            j += 1
        before = words[i - 1].group().lower() if i else ""
        if before in {"a", "an"} and j > i and words[j].group().endswith("s"):
            j -= 1  # "a" + singular noun: a closing "-s" word is the verb ("A swan appears on ...")
        score = 2.0 * (before in _DET) + (j == len(words) - 1) + 1.5 * bool(_VERBISH.match(before))
        if before in {"a", "an", "the"} and i >= 2 and words[i - 2].group().lower() in _PREPS:
            score -= 2.5  # the object of a preposition ("across the region") is rarely the point
        out.append((score, words[i].start(), words[j].end()))
        i = j + 1
    return out


def _tiers(text: str, title: str | None) -> list[list[str]]:
    tiers: list[list[str]] = [[], [], []]
    scored: list[tuple[float, str]] = []
    for _offset, sentence in _sentences(text):
        words = list(_WORD.finditer(sentence))
        tiers[0] += [sentence[a:b] for a, b in _numbers(words)]
        tiers[1] += [sentence[a:b] for a, b in _names(words)]
        scored += [(s, sentence[a:b]) for s, a, b in _phrases(words)]
    best = max((s for s, _ in scored), default=0.0)
    tiers[2] = [p for s, p in scored if s == best]
    banned = {title.strip().lower()} if title and title.strip() else set()
    return [[s for s in tier if s.lower() not in banned and not _part_of(s, banned)] for tier in tiers]


def _part_of(span: str, banned: set[str]) -> bool:
    return any(span.lower() in b.split() or span.lower() in b for b in banned)


def pick_answers(passage_text: str, n: int, rng: random.Random, *, title: str | None = None) -> list[str]:
    """Up to ``n`` distinct answer spans that occur verbatim in ``passage_text``.

    Numbers first, then names, then object phrases (see the module docstring); the order
    inside a tier is drawn from ``rng``, so a seeded ``rng`` gives the same spans every time.

    Args:
        passage_text: The passage.
        n: How many spans at most (>= 0).
        rng: The random source (only its shuffle is used).
        title: The passage's title or entity; spans equal to (or inside) it are skipped,
            since a question should ask *about* the entity, not for it.

    Returns:
        The spans, each a substring of ``passage_text``; fewer than ``n`` (maybe none) when
        the rules find fewer.

    Raises:
        TypeError: ``passage_text`` is not a str or ``rng`` not a ``random.Random``.
        ValueError: ``n`` is not an int >= 0.

    Example:
        >>> pick_answers("Dorak Mills was founded by Talvo Brenn in 1901.", 2, random.Random(0),
        ...              title="Dorak Mills")
        ['1901', 'Talvo Brenn']
    """
    if not isinstance(passage_text, str):
        raise TypeError(f"passage_text: expected a str, got {type(passage_text).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng: expected a random.Random (e.g. random.Random(seed)), got {type(rng).__name__}")
    picked: list[str] = []
    for tier in _tiers(passage_text, title):
        unique = list(dict.fromkeys(s.strip(" ,;:") for s in tier))
        rng.shuffle(unique)
        picked += [s for s in unique if s and s not in picked and s in passage_text]
    return picked[:n]
