"""The store's write check: codes of the code systems held here must exist, and required bindings hold.

Separate from the operations because it runs on every write, ingest included: it trusts a
catalog up to `WRITE_CHECK_STALENESS` old and judges only code systems loaded here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fhir_store.errors import InvalidResource, Issue
from fhir_store.terminology.catalog import KINDS
from fhir_store.terminology.expansion import CannotExpand
from fhir_store.terminology.resolver import TerminologyResolver

ValidationMode = Literal["reject", "warn", "off"]

#: Write checks trust the cached catalog this long (seconds): a list another process loads is
#: enforced on writes at most this late, and ingest pays one catalog read a second, not one a resource.
WRITE_CHECK_STALENESS = 1.0


class WriteCheck:
    def __init__(self, resolver: TerminologyResolver, validation: ValidationMode) -> None:
        self._resolver = resolver
        self.validation = validation

    async def check_codings(self, resource: dict[str, Any]) -> list[Issue]:
        """A store write check: codes of code systems held here must exist (and displays should match).

        In `reject` mode an unknown code refuses the write; in `warn` mode it is kept and the
        issue returned as a warning; `off` checks nothing. Codes of systems not loaded here
        (LOINC, SNOMED CT, …) are not judged.
        """
        rtype = resource.get("resourceType", "")
        if self.validation == "off" or rtype in KINDS:
            return []
        codings = list(_codings(resource, rtype))
        if not codings:
            return []
        await self._resolver.sync(WRITE_CHECK_STALENESS)
        systems = {c["system"] for _, c in codings}
        held = {e.url: e for e in await self._resolver.latest_entries("CodeSystem", systems)}
        errors: list[Issue] = []
        warnings: list[Issue] = []
        for path, coding in codings:
            latest = held.get(coding["system"])
            if latest is None:
                continue
            if coding.get("version") and coding["version"] != latest.version:
                index = await self._resolver.code_system(f"{coding['system']}|{coding['version']}")
            else:
                index = await self._resolver.index(latest)
            if index is None:
                warnings.append(Issue("code-invalid", f"{path}: version {coding.get('version')} of "
                                      f"{coding['system']} is not loaded here, so the code was not checked",
                                      severity="warning", expression=(path,)))
                continue
            if index.content != "complete":
                continue
            concept = index.get(coding["code"])
            if concept is None:
                errors.append(Issue("code-invalid", f"{path}: '{coding['code']}' is not a code of {index.name} "
                                    f"({index.canonical})", expression=(path,)))
            elif coding.get("display") and not index.is_title(concept, coding["display"]):
                warnings.append(Issue("code-invalid", f"{path}: the display '{coding['display']}' is not the title of "
                                      f"{coding['code']} in {index.name} ('{concept.display}')",
                                      severity="warning", expression=(path,)))
        errors += await self._binding_issues(resource, rtype)
        if errors and self.validation == "reject":
            raise InvalidResource(f"{resource['resourceType']} failed terminology validation: "
                                  f"{errors[0].diagnostics}", errors + warnings)
        return [Issue(e.code, e.diagnostics, "warning", e.expression) for e in errors] + warnings

    async def _binding_issues(self, resource: dict[str, Any], rtype: str) -> list[Issue]:
        """Coding / CodeableConcept elements the spec binds `required` must hold a code of that value set."""
        issues: list[Issue] = []
        for json_path, url, value in _bound_elements(resource, rtype, rtype):
            vs = await self._resolver.value_set(url)
            if vs is None:
                continue
            try:
                members = await self._resolver.members_of(vs)
            except CannotExpand:
                continue
            codings = [value] if "code" in value and "coding" not in value else value.get("coding") or []
            if codings and not any((c.get("system"), c.get("code")) in members for c in codings):
                allowed = ", ".join(sorted(code for _, code in members)[:12])
                issues.append(Issue("code-invalid", f"{json_path}: no coding is in the required value set {url} "
                                    f"({allowed})", expression=(json_path,)))
        return issues


def _codings(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Coding-shaped object (`system` + `code` strings) with its element path."""
    if isinstance(value, dict):
        if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
            yield path, value
        for key, child in value.items():
            if isinstance(child, (dict, list)):
                yield from _codings(child, f"{path}.{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _codings(child, f"{path}[{i}]")


@cache
def _coded_bindings() -> dict[str, str]:
    """Element path → value set of the spec's required bindings on Coding / CodeableConcept elements."""
    path = Path(__file__).resolve().parent.parent / "spec" / "coded_bindings.json"
    table: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))["bindings"]
    return table


@cache
def _binding_prefixes() -> frozenset[str]:
    return frozenset(".".join(p.split(".")[:i]) for p in _coded_bindings() for i in range(1, p.count(".") + 1))


def _bound_elements(value: Any, schema: str, path: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(element path, value set url, element) of every element a coded binding applies to."""
    if not isinstance(value, dict):
        return
    bindings, prefixes = _coded_bindings(), _binding_prefixes()
    for key, child in value.items():
        child_schema = f"{schema}.{key}"
        items = child if isinstance(child, list) else [child]
        for i, item in enumerate(items):
            item_path = f"{path}.{key}" + (f"[{i}]" if isinstance(child, list) else "")
            if child_schema in bindings and isinstance(item, dict):
                yield item_path, bindings[child_schema], item
            elif child_schema in prefixes:
                yield from _bound_elements(item, child_schema, item_path)
