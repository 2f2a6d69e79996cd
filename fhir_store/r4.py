"""What of the R4B (4.3.0) record an R4 (4.0.1) client cannot take as it is.

R4B is R4 with a few modules reworked, so most resources are the same in both.
The differences (`spec/r4_differences.json`, with its sources) are of three
kinds: whole types new or reworked in R4B, refused outright; references that R4B
lets point to more types (an Observation about a Practitioner), and elements or
data types only R4B has (`subjectCanonical`, `valueCodeableReference`), which
make only the resources that use them unreadable in R4.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

_TABLE = Path(__file__).parent / "spec" / "r4_differences.json"
_REFERENCE_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[^/]+(?:/_history/[^/]+)?$")


@cache
def _table() -> dict[str, Any]:
    table: dict[str, Any] = json.loads(_TABLE.read_text(encoding="utf-8"))
    return table


@cache
def r4_differences() -> dict[str, str]:
    """The resource types refused outright for an R4 client, each with the reason."""
    table = _table()
    found = {name: "new in R4B, absent from R4" for name in table["added_in_r4b"]}
    found.update(table["reworked"])
    return dict(sorted(found.items()))


def r4_problem(resource: dict[str, Any]) -> str | None:
    """Why an R4 client could not read `resource` as it is, or None when it can."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return None
    if (reason := r4_differences().get(rtype)) is not None:
        return f"{rtype}: {reason}"
    table = _table()
    for path, allowed in table["widened_references"].get(rtype, {}).items():
        for reference in _at(resource, path.split(".")):
            target = _target_type(reference)
            if target is not None and target not in allowed:
                return f"{rtype}.{path} refers to a {target}, which R4 allows only for R4B"
    elements = set(table["r4b_only_elements"].get(rtype, ()))
    suffixes = tuple(table["r4b_only_datatypes"])
    for key in _keys(resource):
        if key in elements or (key.endswith(suffixes) and key not in suffixes):
            return f"{rtype} uses '{key}', which only R4B has"
    return None


def _at(node: Any, steps: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _at(item, steps)
    elif not steps:
        yield node
    elif isinstance(node, dict):
        yield from _at(node.get(steps[0]), steps[1:])


def _target_type(reference: Any) -> str | None:
    if not isinstance(reference, dict):
        return None
    if isinstance(reference.get("type"), str):
        return str(reference["type"])
    match = _REFERENCE_TYPE.search(reference.get("reference") or "")
    return match.group(1) if match else None


def _keys(node: Any) -> Iterator[str]:
    """Every element name in a resource, its contained resources' included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)
