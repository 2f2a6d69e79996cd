"""One CodeSystem version in memory: its concepts by code, the is-a hierarchy, and a word index.

Built once per CodeSystem version and process from the stored resource (see
`resolver.py`), then every `$lookup`, `$validate-code`, `$expand` filter and
`:below` search is a dictionary or bisect away: the ICD-10 type-ahead box needs
answers in milliseconds, and the database's own text matching cannot do
"every typed word is the start of some word of the title, accents ignored".

Text is matched folded (`text.fold`: "Tăng huyết áp" → "tang huyet ap", "đ" → "d");
codes are matched without their dots and dagger/asterisk marks, so "I10.0",
"I100" and "i10" all find I10.0.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fhir_store.text import fold

PARENT = "parent"
CHILD = "child"
NOT_SELECTABLE = "notSelectable"


def search_tokens(text: str) -> list[str]:
    """The folded words of a title, a code, or what a user typed."""
    return fold(text.replace(".", "").replace("†", "").replace("*", "")).split()


def _value(prop: dict[str, Any]) -> Any:
    for key, value in prop.items():
        if key.startswith("value"):
            return value
    return None


def same_language(wanted: str, have: str | None) -> bool:
    """`en` matches `en-US`; `vi` matches `vi-VN`."""
    if not have:
        return False
    return have.lower() == wanted.lower() or have.lower().split("-")[0] == wanted.lower().split("-")[0]


@dataclass(slots=True)
class Concept:
    code: str
    display: str
    definition: str | None
    order: int
    designations: list[dict[str, Any]] = field(default_factory=list)
    properties: dict[str, list[Any]] = field(default_factory=dict)  # code → values
    raw_properties: list[dict[str, Any]] = field(default_factory=list)  # as written, typed
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)

    @property
    def abstract(self) -> bool:
        return any(v is True for v in self.properties.get(NOT_SELECTABLE, []))

    @property
    def inactive(self) -> bool:
        if any(v is True for v in self.properties.get("inactive", [])):
            return True
        return any(v in ("retired", "inactive") for v in self.properties.get("status", []))

    def property_strings(self, code: str) -> list[str]:
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in self.properties.get(code, [])]


class CodeSystemIndex:
    """The concepts of one CodeSystem version (`key` = "CodeSystem/id", `vid` = its version id)."""

    def __init__(self, resource: dict[str, Any], *, key: str, vid: int) -> None:
        self.key = key
        self.vid = vid
        self.url: str = resource.get("url", "")
        self.version: str | None = resource.get("version")
        self.name: str = resource.get("title") or resource.get("name") or self.url
        self.language: str | None = resource.get("language")
        self.case_sensitive: bool = bool(resource.get("caseSensitive", True))
        self.content: str = resource.get("content", "complete")
        self.concepts: dict[str, Concept] = {}
        self._folded_codes: dict[str, str] = {}
        self._add(resource.get("concept", []), None)
        for concept in self.concepts.values():
            for parent in concept.properties.get(PARENT, []):
                self._link(str(parent), concept.code)
            for child in concept.properties.get(CHILD, []):
                self._link(concept.code, str(child))
        self._ordered = sorted(self.concepts.values(), key=lambda c: c.order)
        self._postings: dict[str, list[int]] = {}
        self._by_code_key: dict[str, int] = {}
        for concept in self._ordered:
            code_words = search_tokens(concept.code)
            self._by_code_key.setdefault("".join(code_words), concept.order)
            words = set(code_words)
            for text in self.texts(concept):
                words.update(search_tokens(text))
            for word in words:
                self._postings.setdefault(word, []).append(concept.order)
        self._words = sorted(self._postings)

    def _add(self, concepts: Iterable[dict[str, Any]], parent: str | None) -> None:
        for raw in concepts:
            code = raw.get("code")
            if not isinstance(code, str):
                continue
            concept = self.concepts.get(code)
            if concept is None:  # a code listed twice keeps its first definition
                concept = Concept(code, raw.get("display") or "", raw.get("definition"), len(self.concepts),
                                  list(raw.get("designation", [])))
                concept.raw_properties = list(raw.get("property", []))
                for prop in concept.raw_properties:
                    concept.properties.setdefault(prop.get("code", ""), []).append(_value(prop))
                self.concepts[code] = concept
                if not self.case_sensitive:
                    self._folded_codes[code.lower()] = code
            if parent is not None:
                self._link(parent, code)
            self._add(raw.get("concept", []), code)

    def _link(self, parent: str, child: str) -> None:
        if parent in self.concepts and child in self.concepts:
            if parent not in self.concepts[child].parents:
                self.concepts[child].parents.append(parent)
            if child not in self.concepts[parent].children:
                self.concepts[parent].children.append(child)

    # ---- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        return iter(self._ordered)

    def get(self, code: str) -> Concept | None:
        concept = self.concepts.get(code)
        if concept is None and not self.case_sensitive:
            folded = self._folded_codes.get(code.lower())
            concept = self.concepts.get(folded) if folded else None
        return concept

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}" if self.version else self.url

    def texts(self, concept: Concept) -> list[str]:
        return [t for t in [concept.display, *(d.get("value", "") for d in concept.designations)] if t]

    def is_title(self, concept: Concept, display: str) -> bool:
        """Whether `display` is one of the concept's titles, any language (case and outer spaces ignored)."""
        wanted = display.strip().casefold()
        return any(t.strip().casefold() == wanted for t in self.texts(concept))

    def display(self, concept: Concept, language: str | None) -> str:
        """The concept's title in `language` when the code system has one, else its display."""
        if language and not same_language(language, self.language):
            for designation in concept.designations:
                if same_language(language, designation.get("language")) and designation.get("value"):
                    return str(designation["value"])
            if not self.language and concept.display:
                return concept.display  # no declared language: the display is the only title
        return concept.display

    def descendants(self, code: str) -> list[Concept]:
        """`code` and every concept below it (is-a), in code system order."""
        root = self.get(code)
        if root is None:
            return []
        seen = {root.code}
        stack = [root.code]
        while stack:
            for child in self.concepts[stack.pop()].children:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return sorted((self.concepts[c] for c in seen), key=lambda c: c.order)

    def ancestors(self, code: str) -> list[Concept]:
        """`code` and every concept above it."""
        start = self.get(code)
        if start is None:
            return []
        seen = {start.code}
        stack = [start.code]
        while stack:
            for parent in self.concepts[stack.pop()].parents:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return sorted((self.concepts[c] for c in seen), key=lambda c: c.order)

    def matching(self, text: str) -> list[Concept]:
        """Concepts where every typed word starts a word of a title or the code; exact code first."""
        tokens = search_tokens(text)
        if not tokens:
            return list(self._ordered)
        hits: set[int] | None = None
        for token in sorted(set(tokens), key=len, reverse=True):  # longest first: smallest sets early
            found: set[int] = set()
            start = bisect_left(self._words, token)
            for word in self._words[start:]:
                if not word.startswith(token):
                    break
                found.update(self._postings[word])
            hits = found if hits is None else hits & found
            if not hits:
                return []
        ordered = sorted(hits or ())
        exact = self._by_code_key.get("".join(tokens))
        if exact is not None and exact in (hits or ()):  # the code typed in full comes first
            ordered.remove(exact)
            ordered.insert(0, exact)
        return [self._ordered[i] for i in ordered]
