"""Rule-based wh-question from a sentence and its answer span (the engine of `ClozeWriter`).

Boundary: pure string rules, no model, no I/O.

The sentence holding the answer is rewritten in one of three ways, first that applies:

1. the answer opens the sentence: it becomes the wh-word ("Dara Venn started X." ->
   "Who started X?");
2. an auxiliary ("is", "was", ...) comes before the answer: subject-auxiliary inversion
   with the wh-phrase fronted ("X was born in 1901." -> "In what year was X born?");
3. otherwise an echo question: the answer is replaced in place ("X makes what?").
"""

from __future__ import annotations

import re

_AUX = ("is", "was", "are", "were", "has been", "had been", "has", "had", "will", "can")
_PLACE_PREPS = {"in", "at", "on", "from", "near", "to", "into"}
_ORG_WORDS = {"mills", "works", "company", "trading", "foundry", "brothers", "inc", "ltd", "corporation", "bank"}
_YEAR = re.compile(r"^(1[0-9]{3}|20[0-9]{2})$")
_NUMBER_UNIT = re.compile(r"^\d[\d,.]*\s+([A-Za-z]+)$")
_NUMBER = re.compile(r"^\d[\d,.]*$")
_LOWER_LEAD = {"the", "a", "an", "this", "that", "these", "those", "its", "his", "her", "their"}


def _sentence_with(text: str, answer: str) -> str | None:
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if answer in sentence:
            return sentence.strip().rstrip(".!?").strip()
    return None


def _is_person(answer: str) -> bool:
    words = answer.split()
    return (
        len(words) >= 2
        and all(w[0].isupper() for w in words)
        and words[-1].lower() not in _ORG_WORDS
        and words[0] not in {"Mount", "Lake", "River"}
    )


def _wh(answer: str, prep: str) -> tuple[str, bool]:
    """(wh-phrase, whether it absorbs the preposition before the answer)."""
    if _YEAR.match(answer):
        if prep in {"in", "since"}:
            return f"{prep} what year", True
        return "what year", False
    unit = _NUMBER_UNIT.match(answer)
    if unit:
        return f"how many {unit.group(1)}", False
    if _NUMBER.match(answer):
        return "how many", False
    if answer[0].isupper():
        if prep == "by":
            return "by whom", True
        if prep in _PLACE_PREPS and not _is_person(answer):
            return "where", True
        if _is_person(answer):
            return ("whom" if prep in {"to", "with", "for"} else "who"), False
        return "what", False
    return "what", False


def _lower_lead(subject: str) -> str:
    first, _, rest = subject.partition(" ")
    return (first.lower() + (" " + rest if rest else "")) if first.lower() in _LOWER_LEAD else subject


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _invert(before: str, after: str, wh: str) -> str | None:
    """Subject-aux inversion when `before` (the text before the wh-gap) holds an auxiliary."""
    for aux in _AUX:
        match = re.search(rf"^(.+?)\s+{aux}\b\s*(.*)$", before)
        if match and match.group(1).strip():
            subject, middle = match.group(1).strip(), match.group(2).strip()
            tail = " ".join(part for part in (middle, after.strip()) if part)
            first, _, rest = aux.partition(" ")
            body = " ".join(part for part in (wh, first, _lower_lead(subject), rest, tail) if part)
            return _cap(body) + "?"
    return None


def cloze_question(passage: str, answer: str, title: str | None = None) -> str | None:
    """A wh-question whose answer is ``answer``, from the passage sentence holding it.

    Args:
        passage: The passage text.
        answer: A span of the passage.
        title: Unused by the rules today; accepted so callers can pass the passage title.

    Returns:
        The question (ending with ``?``), or None when ``answer`` is empty or not in ``passage``.

    Example:
        >>> cloze_question("The main export of Korvik is dried figs.", "dried figs")
        'What is the main export of Korvik?'
    """
    answer = answer.strip()
    sentence = _sentence_with(passage, answer) if answer else None
    if sentence is None:
        return None
    before, _, after = sentence.partition(answer)
    before, after = before.rstrip(), after.strip().strip(",").strip()
    words = before.split()
    prep = words[-1].lower() if words else ""
    wh, absorbs = _wh(answer, prep)
    if absorbs or (prep in {"a", "an"} and wh == "what"):
        before = " ".join(words[:-1])
    if not before.strip():
        return _cap(" ".join(part for part in (wh, after) if part)) + "?"
    inverted = _invert(before, after, wh)
    if inverted:
        return inverted
    return _cap(" ".join(part for part in (before, wh, after) if part)) + "?"
