"""`_summary` and `_elements`: returning part of each resource, marked SUBSETTED."""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir_store.resource_types import model_class

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "Resource encoded in summary mode"}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@cache
def _element_flags(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary elements, mandatory elements) by JSON name, from the model's field metadata."""
    cls = model_class(resource_type)
    summary: set[str] = set()
    mandatory: set[str] = set()
    if cls is None:
        return frozenset(), frozenset()
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        key = info.alias or name
        if extra.get("summary_element_property"):
            summary.update({key, f"_{key}"})
        if extra.get("element_required"):
            mandatory.update({key, f"_{key}"})
    return frozenset(summary), frozenset(mandatory)


def _subset(resource: dict[str, Any], keep: set[str] | frozenset[str]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k in keep or k in _ALWAYS}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    out["meta"] = meta
    return out


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """Apply `_summary` = true | text | data | false."""
    if mode == "false":
        return resource
    summary, mandatory = _element_flags(resource["resourceType"])
    if mode == "true":
        return _subset(resource, summary | mandatory)
    if mode == "text":
        return _subset(resource, mandatory | {"text"})
    if mode == "data":
        return _subset(resource, set(resource) - {"text"})
    raise ValueError(mode)


def select_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    """Apply `_elements`: the named top-level elements, plus the mandatory ones."""
    _summary, mandatory = _element_flags(resource["resourceType"])
    wanted = {e.split(".", 1)[-1] if "." in e else e for e in elements}
    wanted |= {f"_{e}" for e in wanted}
    return _subset(resource, wanted | mandatory)
