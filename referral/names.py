"""Vietnamese personal names compared as a records clerk would compare them.

A name is family name first, then middle and given names ("Nguyễn Thị Ánh Tuyết"). Desks type
names with or without tone marks, so words are compared folded ("Nguyen" = "Nguyễn", "đ" = "d"),
but when both sides carry marks and they differ the names are told apart: "Đoàn" and "Doãn" fold
to the same word and are different names (`../shared/notes/vietnam.md`). Nguyễn alone is the
family name of about 39% of people, so a family name never counts as a match by itself; the given
name (the last word, the one people are called by) must agree.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from fhir_store import fold_text
from referral.values import items

#: A word written with the same marks on both sides; a word without marks on one side (it could not say more).
SAME = 1.0
UNMARKED = 0.95
#: The same words in another order (given and middle names swapped, or written given-name first).
REORDERED = 0.85
#: The same family and given name, middle names differing or missing ("Nguyễn Lan" / "Nguyễn Thị Lan").
MIDDLE_DIFFERS = 0.7
#: Words that fold alike but carry different marks: possibly a typing slip, possibly another name.
OTHER_MARKS = 0.6

_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Name:
    """One HumanName as words, family first: `words` lower-case NFC, `folded` the same without marks."""

    words: tuple[str, ...]
    folded: tuple[str, ...]

    @property
    def family(self) -> str:
        return self.folded[0]

    @property
    def given(self) -> str:
        """The name a person is called by: the last word."""
        return self.folded[-1]


def _words(text: str) -> list[str]:
    return [w for w in _SEPARATORS.split(unicodedata.normalize("NFC", text).lower()) if w]


def names_of(patient: dict[str, Any]) -> list[Name]:
    """Every name of a Patient (official, usual, …), family first; `text` is read family first when the name
    has no parts, as Vietnamese names are written."""
    found: list[Name] = []
    for human in items(patient.get("name")):
        if not isinstance(human, dict):
            continue
        family = str(human["family"]) if isinstance(human.get("family"), str) else ""
        given = [g for g in items(human.get("given")) if isinstance(g, str)]
        text = human.get("text") if isinstance(human.get("text"), str) else ""
        words = _words(" ".join([family, *given])) if family or given else _words(str(text))
        if words:
            found.append(Name(tuple(words), tuple(fold_text(w) for w in words)))
    return found


def _word_score(a: str, b: str) -> float:
    if a == b:
        return SAME
    if fold_text(a) != fold_text(b):
        return 0.0
    return UNMARKED if fold_text(a) in (a, b) else OTHER_MARKS


def _aligned(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """The weakest word of two names with the same folded words in the same order."""
    return min(_word_score(x, y) for x, y in zip(a, b, strict=True))


def name_similarity(a: Name, b: Name) -> float:
    """0..1: how well two names agree (the module's constants), 0 when the given names differ."""
    if a.folded == b.folded:
        return _aligned(a.words, b.words)
    if sorted(a.folded) == sorted(b.folded):
        return REORDERED * _aligned(tuple(sorted(a.words, key=fold_text)), tuple(sorted(b.words, key=fold_text)))
    if a.family == b.family and a.given == b.given and min(len(a.folded), len(b.folded)) >= 2:
        return MIDDLE_DIFFERS * min(_word_score(a.words[0], b.words[0]), _word_score(a.words[-1], b.words[-1]))
    return 0.0


def best_name_similarity(a: list[Name], b: list[Name]) -> float | None:
    """The best agreement of any two of the names; None when either side has none."""
    if not a or not b:
        return None
    return max(name_similarity(x, y) for x in a for y in b)
