"""Search parameters per resource type, from the spec's own SearchParameter definitions.

`spec/search-parameters.json` is the FHIR R4 (4.0.1) definitions Bundle, shipped
as published. Each definition's expression is compiled for each of its base
types (and `Resource`/`DomainResource` ones for every type). The same registry
drives extraction, query parsing and the CapabilityStatement, so what is
advertised is exactly what works.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fhir_store.resource_types import resource_types
from fhir_store.search.paths import Leaf, Unsupported, compile_expression

log = logging.getLogger(__name__)

SPEC_FILE = Path(__file__).resolve().parent.parent / "spec" / "search-parameters.json"

#: Parameters answered from top-level document fields rather than `ix`.
SPECIAL_FIELDS = {"_id": "id", "_lastUpdated": "ts"}

#: Modifiers accepted per parameter type. Token `in`, `not-in`, `below`, `above` (and `text` on code
#: titles) need the terminology service (`fhir_store.terminology`) attached to the store.
MODIFIERS: dict[str, tuple[str, ...]] = {
    "string": ("missing", "exact", "contains"),
    "token": ("missing", "not", "text", "of-type", "in", "not-in", "below", "above"),
    "reference": ("missing", "identifier", "[type]"),
    "date": ("missing",),
    "number": ("missing",),
    "quantity": ("missing",),
    "uri": ("missing", "above", "below"),
    "composite": ("missing",),
}


@dataclass(frozen=True)
class Component:
    param_type: str
    leaves: tuple[Leaf, ...]  # relative to the composite's base element


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    url: str
    expression: str
    leaves: tuple[Leaf, ...]
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = field(default_factory=tuple)
    #: a parameter that is computed rather than walked (Patient.deceased)
    computed: str | None = None
    #: the resource type this compiled parameter belongs to
    owner: str = ""


class Registry:
    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        by_url = {d["url"]: d for d in definitions}
        self._params: dict[str, dict[str, SearchParam]] = {t: {} for t in resource_types()}
        for d in definitions:
            bases = d.get("base", [])
            types = list(resource_types()) if set(bases) & {"Resource", "DomainResource"} else bases
            for rtype in types:
                if rtype not in self._params:
                    continue
                param = self._compile(d, rtype, by_url)
                if param is not None:
                    self._params[rtype][param.code] = param

    def params(self, resource_type: str) -> dict[str, SearchParam]:
        return self._params.get(resource_type, {})

    def param(self, resource_type: str, code: str) -> SearchParam | None:
        return self._params.get(resource_type, {}).get(code)

    def _compile(self, d: dict[str, Any], rtype: str, by_url: dict[str, dict[str, Any]]) -> SearchParam | None:
        code, ptype, expression = d["code"], d["type"], d.get("expression") or ""
        common = {"code": code, "type": ptype, "url": d["url"], "expression": expression, "owner": rtype}
        if code in SPECIAL_FIELDS:
            return SearchParam(leaves=(), **common)
        if code == "deceased" and rtype == "Patient":
            return SearchParam(leaves=(), computed="deceased", **common)
        if ptype == "special" or not expression:
            return None  # _text, _content, _query, near: not supported
        try:
            leaves = tuple(compile_expression(expression, rtype))
            if not leaves:
                return None
            components: tuple[Component, ...] = ()
            if ptype == "composite":
                components = tuple(self._component(c, rtype, leaves, by_url) for c in d.get("component", []))
        except Unsupported as exc:
            log.debug("search parameter %s on %s not supported: %s", code, rtype, exc)
            return None
        targets = tuple(d.get("target", []))
        return SearchParam(leaves=leaves, targets=targets, components=components, **common)

    @staticmethod
    def _component(component: dict[str, Any], rtype: str, bases: tuple[Leaf, ...],
                   by_url: dict[str, dict[str, Any]]) -> Component:
        definition = by_url.get(component["definition"])
        if definition is None:
            raise Unsupported(f"component {component['definition']} is not defined")
        leaves: list[Leaf] = []
        for base in bases:
            # compile "<base path>.<component expression>" and keep the steps after the base
            base_path = ".".join([rtype] + [s[1] for s in base.steps if s[0] == "key"])
            for leaf in compile_expression(f"{base_path}.{component['expression']}", rtype):
                if leaf.steps[: len(base.steps)] == base.steps:
                    leaves.append(Leaf(leaf.steps[len(base.steps):], leaf.datatype))
        if not leaves:
            raise Unsupported(f"component {component['expression']} leads nowhere")
        return Component(definition["type"], tuple(leaves))


@cache
def load_registry() -> Registry:
    """The spec's search parameters, compiled (about a second): loaded once per process, then passed around."""
    bundle = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    return Registry([e["resource"] for e in bundle["entry"]])
