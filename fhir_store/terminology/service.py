"""The terminology service: `$lookup`, `$validate-code`, `$expand`, `$translate`, displays, and checks.

Everything reads CodeSystem, ValueSet and ConceptMap resources kept by the
store; the catalog (`catalog.py`) says which resource a canonical URL means,
and each CodeSystem version is indexed in memory once per process
(`concepts.py`). Callers:
- the REST operations (`emr/api/terminology.py`);
- the store's write path (`check_codings`: codes of loaded code systems must exist, per
  `ValidationMode`);
- search (`:in`, `:not-in`, `:below`, `:above`, `:text` on tokens);
- referral packages and paper forms, through `display()` (the Vietnamese title of a diagnosis).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pymongo.asynchronous.client_session import AsyncClientSession

from fhir_store.documents import format_instant
from fhir_store.errors import InvalidRequest, InvalidResource, Issue, ResourceNotFound, SearchTooCostly
from fhir_store.model import Version
from fhir_store.store import FhirStore
from fhir_store.terminology.catalog import GENERATION, KINDS, Catalog, Entry
from fhir_store.terminology.concepts import CodeSystemIndex, Concept, same_language
from fhir_store.terminology.expansion import CannotExpand, Expander, Item
from fhir_store.terminology.sources import ICD10_VN, ICD10_WHO

ValidationMode = Literal["reject", "warn", "off"]

#: Code systems that share their codes, so a title missing in one language is taken from the other.
SAME_CODES = {ICD10_WHO: (ICD10_VN,), ICD10_VN: (ICD10_WHO,)}
#: Most codes a search modifier (`:in`, `:below`, `:text`) may turn into before it is refused as too costly.
MAX_SEARCH_CODES = 20_000
#: Indexes larger than this are built in a worker thread, so the event loop keeps serving.
_BUILD_IN_THREAD = 2_000
#: Write checks trust the cached catalog this long (seconds): a list another process loads is
#: enforced on writes at most this late, and ingest pays one catalog read a second, not one a resource.
WRITE_CHECK_STALENESS = 1.0


class TerminologyService:
    def __init__(self, store: FhirStore, *, validation: ValidationMode = "warn") -> None:
        self.store = store
        self.catalog = Catalog(store.db)
        self.validation = validation
        self.expander = Expander(self._code_system, self._value_set)
        self._indexes: dict[str, CodeSystemIndex] = {}
        self._building: dict[str, asyncio.Lock] = {}
        self._resources: dict[str, tuple[int, dict[str, Any]]] = {}
        # Valid while the catalog's generation is `_generation`; every public method checks it first.
        self._generation = -1
        self._synced_at = float("-inf")
        self._resolved: dict[tuple[str, str], Entry | None] = {}
        self._latest: dict[tuple[str, frozenset[str] | None], list[Entry]] = {}
        self._members: dict[str, dict[tuple[str, str], Item]] = {}

    def attach(self) -> TerminologyService:
        """Plug into the store: keep the catalog, check codes on write, serve search modifiers."""
        self.store.observers.append(self._observe)
        self.store.write_checks.append(self.check_codings)
        self.store.search_engine.terminology = self
        return self

    async def ensure_indexes(self) -> None:
        await self.catalog.ensure_indexes()

    async def rebuild_catalog(self) -> int:
        """Re-derive the catalog from the stored resources (after restoring a database without it)."""
        seen: list[str] = []
        for kind in KINDS:
            async for version in self.store.iter_current(kind):
                await self.catalog.observe(version, None)
                seen.append(f"{kind}/{version.id}")
        await self.catalog.entries.delete_many({"_id": {"$nin": [*seen, GENERATION]}})  # resources no longer there
        return len(seen)

    # ---- resolving resources ------------------------------------------------------------------

    async def _observe(self, version: Version, session: AsyncClientSession | None) -> None:
        await self.catalog.observe(version, session)
        if version.resource_type in KINDS:
            self._synced_at = float("-inf")  # our own write: the next call must look again

    async def _sync(self, max_age: float = 0.0) -> None:
        """Drop what was cached if any process has written terminology since (one small read).

        `max_age` > 0 skips the read when the last one is that recent (write checks only).
        """
        now = time.monotonic()
        if max_age and now - self._synced_at < max_age:
            return
        self._synced_at = now
        generation = await self.catalog.generation()
        if generation != self._generation:
            self._generation = generation
            self._resolved.clear()
            self._latest.clear()
            self._members.clear()

    async def _resolve(self, kind: str, canonical: str) -> Entry | None:
        key = (kind, canonical)
        if key not in self._resolved:
            self._resolved[key] = await self.catalog.resolve(kind, canonical)
        return self._resolved[key]

    async def _latest_entries(self, kind: str, urls: set[str] | None = None) -> list[Entry]:
        key = (kind, frozenset(urls) if urls is not None else None)
        if key not in self._latest:
            self._latest[key] = await self.catalog.all(kind, urls=urls, latest=True)
        return self._latest[key]

    async def code_system(self, canonical: str) -> CodeSystemIndex | None:
        """The CodeSystem a canonical (`url` or `url|version`) means, indexed; None if not loaded."""
        await self._sync()
        return await self._code_system(canonical)

    async def _code_system(self, canonical: str) -> CodeSystemIndex | None:
        entry = await self._resolve("CodeSystem", canonical)
        return await self.index(entry) if entry else None

    async def index(self, entry: Entry) -> CodeSystemIndex:
        cached = self._indexes.get(entry.key)
        if cached is not None and cached.vid == entry.vid:
            return cached
        lock = self._building.setdefault(entry.key, asyncio.Lock())
        async with lock:
            cached = self._indexes.get(entry.key)
            if cached is not None and cached.vid == entry.vid:
                return cached
            version = await self.store.read("CodeSystem", entry.id)
            resource = version.resource or {}
            if entry.count > _BUILD_IN_THREAD:
                built = await asyncio.to_thread(CodeSystemIndex, resource, key=entry.key, vid=version.version_id)
            else:
                built = CodeSystemIndex(resource, key=entry.key, vid=version.version_id)
            self._indexes[entry.key] = built
            return built

    async def value_set(self, canonical: str) -> dict[str, Any] | None:
        await self._sync()
        return await self._value_set(canonical)

    async def _value_set(self, canonical: str) -> dict[str, Any] | None:
        entry = await self._resolve("ValueSet", canonical)
        return await self._resource(entry) if entry else None

    async def _members_of(self, vs: dict[str, Any]) -> dict[tuple[str, str], Item]:
        """Every code of a value set; cached for stored value sets (by resource key and version)."""
        key = f"{vs.get('id')}/{(vs.get('meta') or {}).get('versionId')}" if vs.get("id") else None
        if key is not None and key in self._members:
            return self._members[key]
        members = await self.expander.expand(vs)
        if key is not None:
            self._members[key] = members
        return members

    async def _resource(self, entry: Entry) -> dict[str, Any]:
        cached = self._resources.get(entry.key)
        if cached is not None and cached[0] == entry.vid:
            return cached[1]
        version = await self.store.read(entry.kind, entry.id)
        resource = version.resource or {}
        self._resources[entry.key] = (version.version_id, resource)
        return resource

    async def _target(self, kind: str, *, resource_id: str | None, url: str | None,
                      resource: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ValueSet / ConceptMap an operation runs on: by id (instance level), url, or given inline."""
        if resource is not None:
            return resource
        if resource_id is not None:
            return (await self.store.read(kind, resource_id)).resource or {}
        if not url:
            raise InvalidRequest(f"Name the {kind}: call it on /{kind}/[id], or give its url")
        entry = await self._resolve(kind, url)
        if entry is None:
            raise ResourceNotFound(f"No {kind} with url {url} is loaded")
        return await self._resource(entry)

    # ---- $lookup ----------------------------------------------------------------------------------

    async def lookup(self, system: str | None, code: str | None, *, version: str | None = None,
                     display_language: str | None = None) -> dict[str, Any]:
        """CodeSystem/$lookup as a Parameters resource."""
        await self._sync()
        if not system or not code:
            raise InvalidRequest("$lookup needs a system and a code (or a coding)")
        index = await self._require_system(system, version)
        concept = index.get(code)
        if concept is None:
            raise ResourceNotFound(f"'{code}' is not a code of {index.name} ({_canonical(index)})")
        params: list[dict[str, Any]] = [
            {"name": "name", "valueString": index.name},
            {"name": "display", "valueString": await self._display_of(index, concept, display_language)},
            {"name": "abstract", "valueBoolean": concept.abstract},
        ]
        if index.version:
            params.insert(1, {"name": "version", "valueString": index.version})
        if concept.definition:
            params.append({"name": "definition", "valueString": concept.definition})
        if index.language:
            params.append({"name": "designation", "part": [{"name": "language", "valueCode": index.language},
                                                           {"name": "value", "valueString": concept.display}]})
        for d in concept.designations:
            part: list[dict[str, Any]] = []
            if d.get("language"):
                part.append({"name": "language", "valueCode": d["language"]})
            if d.get("use"):
                part.append({"name": "use", "valueCoding": d["use"]})
            part.append({"name": "value", "valueString": d.get("value", "")})
            params.append({"name": "designation", "part": part})
        for prop in concept.raw_properties:
            value = {k: v for k, v in prop.items() if k.startswith("value")}
            params.append({"name": "property", "part": [{"name": "code", "valueCode": prop.get("code", "")},
                                                        {"name": "value", **value}]})
        for child in concept.children:
            params.append({"name": "property", "part": [{"name": "code", "valueCode": "child"},
                                                        {"name": "value", "valueCode": child}]})
        return {"resourceType": "Parameters", "parameter": params}

    async def _require_system(self, system: str, version: str | None) -> CodeSystemIndex:
        index = await self._code_system(f"{system}|{version}" if version else system)
        if index is None:
            known = await self.catalog.versions("CodeSystem", system)
            detail = f"; loaded versions: {', '.join(str(e.version) for e in known)}" if known else ""
            raise ResourceNotFound(f"The code system {system}{'|' + version if version else ''} is not loaded{detail}")
        return index

    async def _display_of(self, index: CodeSystemIndex, concept: Concept, language: str | None) -> str:
        title = index.display(concept, language)
        if language and not same_language(language, index.language) and title == concept.display:
            for other in SAME_CODES.get(index.url, ()):  # e.g. the WHO list has no Vietnamese titles
                sibling = await self._code_system(other)
                twin = sibling.get(concept.code) if sibling else None
                if sibling and twin:
                    found = sibling.display(twin, language)
                    if same_language(language, sibling.language) or found != twin.display:
                        return found
        return title

    async def display(self, system: str, code: str, language: str = "vi", *, version: str | None = None) -> str | None:
        """The title of a code in `language` ("vi" or "en"), or None when the code is not known.

        The entry point for referral papers and PDFs: a diagnosis coded with either ICD-10 URL
        prints its Vietnamese title from the Ministry's list.
        """
        await self._sync()
        index = await self._code_system(f"{system}|{version}" if version else system)
        if index is None and version is not None:
            index = await self._code_system(system)  # that edition is not here: the latest still has a title
        concept = index.get(code) if index else None
        if index is None or concept is None:
            for other in SAME_CODES.get(system, ()):
                sibling = await self._code_system(other)
                twin = sibling.get(code) if sibling else None
                if sibling and twin:
                    return sibling.display(twin, language)
            return None
        return await self._display_of(index, concept, language)

    # ---- $validate-code ---------------------------------------------------------------------------

    async def validate_code(self, system: str | None, code: str | None, *, version: str | None = None,
                            display: str | None = None, value_set: dict[str, Any] | None = None,
                            display_language: str | None = None) -> dict[str, Any]:
        """CodeSystem/$validate-code (no `value_set`) or ValueSet/$validate-code, as Parameters."""
        await self._sync()
        if not code:
            raise InvalidRequest("$validate-code needs a code (or a coding, or a codeableConcept)")
        result, message, found = await self._check(system, code, version, display, value_set, display_language)
        params: list[dict[str, Any]] = [{"name": "result", "valueBoolean": result}]
        if message:
            params.append({"name": "message", "valueString": message})
        if found is not None:
            params.append({"name": "display", "valueString": found})
        return {"resourceType": "Parameters", "parameter": params}

    async def _check(self, system: str | None, code: str, version: str | None, display: str | None,
                     value_set: dict[str, Any] | None, language: str | None) -> tuple[bool, str | None, str | None]:
        if value_set is not None:
            members = await self._members_of(value_set)
            matches = [i for i in members.values() if i.code == code and (system is None or i.system == system)]
            if not matches:
                where = f"{system}|{code}" if system else code
                return False, f"{where} is not in the value set {value_set.get('url', '')}", None
            item = matches[0]
            system = item.system
            if item.concept is None:
                return True, None, item.display or None
        if not system:
            raise InvalidRequest("$validate-code on a code system needs the system (url)")
        index = await self._code_system(f"{system}|{version}" if version else system)
        if index is None:
            return False, f"The code system {system} is not loaded here", None
        concept = index.get(code)
        if concept is None:
            return False, f"'{code}' is not a code of {index.name} ({_canonical(index)})", None
        title = await self._display_of(index, concept, language)
        if display and not _display_ok(index, concept, display):
            return False, f"'{display}' is not a display of {code} in {index.name}; it is '{title}'", title
        return True, None, title

    # ---- $expand ----------------------------------------------------------------------------------

    async def expand(self, *, resource_id: str | None = None, url: str | None = None,
                     value_set: dict[str, Any] | None = None, text: str | None = None, offset: int = 0,
                     count: int | None = None, active_only: bool = False, exclude_not_for_ui: bool = False,
                     display_language: str | None = None, include_designations: bool = False) -> dict[str, Any]:
        """ValueSet/$expand: the value set with its `expansion`, filtered and paged."""
        await self._sync()
        vs = await self._target("ValueSet", resource_id=resource_id, url=url, resource=value_set)
        if offset < 0 or (count is not None and count < 0):
            raise InvalidRequest("offset and count must not be negative")
        items = list((await self.expander.expand(vs, text=text)).values())
        if active_only:
            items = [i for i in items if not i.inactive]
        if exclude_not_for_ui:
            items = [i for i in items if not i.abstract]
        page = items[offset:offset + count] if count is not None else items[offset:]
        used = sorted({f"{i.system}|{i.version}" if i.version else i.system for i in items})
        parameters: list[dict[str, Any]] = [{"name": "used-codesystem", "valueUri": u} for u in used]
        if text:
            parameters.append({"name": "filter", "valueString": text})
        if display_language:
            parameters.append({"name": "displayLanguage", "valueCode": display_language})
        contains = [await self._contains(i, display_language, include_designations) for i in page]
        expansion: dict[str, Any] = {
            "identifier": f"urn:uuid:{uuid.uuid4()}", "timestamp": format_instant(datetime.now(UTC)),
            "total": len(items), "offset": offset, "parameter": parameters,
        }
        if contains:
            expansion["contains"] = contains
        head: dict[str, Any] = {k: vs[k] for k in ("id", "url", "version", "name", "title", "status") if k in vs}
        return {"resourceType": "ValueSet", **head, "expansion": expansion}

    async def _contains(self, item: Item, language: str | None, designations: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"system": item.system}
        if item.version:
            out["version"] = item.version
        if item.abstract:
            out["abstract"] = True
        if item.inactive:
            out["inactive"] = True
        out["code"] = item.code
        display = item.display
        if item.concept is not None and language:
            index = await self._code_system(f"{item.system}|{item.version}" if item.version else item.system)
            if index is not None:
                display = await self._display_of(index, item.concept, language)
        if display:
            out["display"] = display
        if designations and item.concept is not None and item.concept.designations:
            out["designation"] = item.concept.designations
        return out

    # ---- $translate -------------------------------------------------------------------------------

    async def translate(self, *, resource_id: str | None = None, url: str | None = None, system: str | None,
                        code: str | None, target: str | None = None) -> dict[str, Any]:
        """ConceptMap/$translate: e.g. an old commune code to the commune that replaced it."""
        await self._sync()
        if not code:
            raise InvalidRequest("$translate needs a code (and its system)")
        if resource_id is None and url is None:
            maps = [await self._resource(e) for e in await self.catalog.all("ConceptMap")]
        else:
            maps = [await self._target("ConceptMap", resource_id=resource_id, url=url)]
        matches: list[dict[str, Any]] = []
        for cmap in maps:
            for group in cmap.get("group", []):
                if system and group.get("source") not in (None, system):
                    continue
                if target and group.get("target") not in (None, target):
                    continue
                for element in group.get("element", []):
                    if element.get("code") != code:
                        continue
                    for t in element.get("target", []):
                        coding = {k: v for k, v in (("system", group.get("target")), ("version", group.get(
                            "targetVersion")), ("code", t.get("code")), ("display", t.get("display"))) if v}
                        part: list[dict[str, Any]] = [
                            {"name": "equivalence", "valueCode": t.get("equivalence", "equivalent")},
                            {"name": "concept", "valueCoding": coding}]
                        if cmap.get("url"):
                            part.append({"name": "source", "valueUri": cmap["url"]})
                        if t.get("comment"):
                            part.append({"name": "comment", "valueString": t["comment"]})  # non-standard, kept
                        matches.append({"name": "match", "part": part})
        params: list[dict[str, Any]] = [{"name": "result", "valueBoolean": bool(matches)}]
        if not matches:
            params.append({"name": "message", "valueString": f"No mapping for {system or ''}|{code}"})
        return {"resourceType": "Parameters", "parameter": params + matches}

    # ---- write-time checks -----------------------------------------------------------------------

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
        await self._sync(WRITE_CHECK_STALENESS)
        systems = {c["system"] for _, c in codings}
        held = {e.url: e for e in await self._latest_entries("CodeSystem", systems)}
        errors: list[Issue] = []
        warnings: list[Issue] = []
        for path, coding in codings:
            latest = held.get(coding["system"])
            if latest is None:
                continue
            if coding.get("version") and coding["version"] != latest.version:
                index = await self._code_system(f"{coding['system']}|{coding['version']}")
            else:
                index = await self.index(latest)
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
                                    f"({_canonical(index)})", expression=(path,)))
            elif coding.get("display") and not _display_ok(index, concept, coding["display"]):
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
            vs = await self._value_set(url)
            if vs is None:
                continue
            try:
                members = await self._members_of(vs)
            except CannotExpand:
                continue
            codings = [value] if "code" in value and "coding" not in value else value.get("coding") or []
            if codings and not any((c.get("system"), c.get("code")) in members for c in codings):
                allowed = ", ".join(sorted(code for _, code in members)[:12])
                issues.append(Issue("code-invalid", f"{json_path}: no coding is in the required value set {url} "
                                    f"({allowed})", expression=(json_path,)))
        return issues

    # ---- search modifiers -----------------------------------------------------------------------

    async def codes_in(self, canonical: str) -> list[tuple[str, str]]:
        """(system, code) of every code in a value set, for `:in` / `:not-in`."""
        await self._sync()
        vs = await self._value_set(canonical)
        if vs is None:
            raise InvalidRequest(f"':in' names the value set {canonical}, which is not loaded here")
        return _capped([(i.system, i.code) for i in (await self._members_of(vs)).values()], canonical)

    async def codes_below(self, system: str | None, code: str, *, above: bool = False) -> list[tuple[str, str]]:
        """`code` and its descendants (or ancestors) in the code system named, or in every one that has it."""
        await self._sync()
        if system:
            index = await self._code_system(system)
            indexes = [index] if index else []
        else:
            indexes = [await self.index(e) for e in await self._latest_entries("CodeSystem")
                       if e.content == "complete"]
        found: list[tuple[str, str]] = []
        for index in indexes:
            concepts = index.ancestors(code) if above else index.descendants(code)
            found += [(index.url, c.code) for c in concepts]
        return _capped(found or [(system or "", code)], code)

    async def codes_matching(self, text: str) -> list[tuple[str, str]]:
        """Codes whose title (any language) matches `text`, across the code systems held, for `:text`."""
        await self._sync()
        found: list[tuple[str, str]] = []
        for entry in await self._latest_entries("CodeSystem"):
            if entry.content == "complete":
                index = await self.index(entry)
                found += [(index.url, c.code) for c in index.matching(text)]
        return _capped(found, text)


def _capped(codes: list[tuple[str, str]], what: str) -> list[tuple[str, str]]:
    if len(codes) > MAX_SEARCH_CODES:
        raise SearchTooCostly(f"'{what}' stands for {len(codes)} codes, more than a search may use "
                              f"({MAX_SEARCH_CODES}); narrow it")
    return codes


def _canonical(index: CodeSystemIndex) -> str:
    return f"{index.url}|{index.version}" if index.version else index.url


def _display_ok(index: CodeSystemIndex, concept: Concept, display: str) -> bool:
    wanted = display.strip().casefold()
    return any(t.strip().casefold() == wanted for t in index.texts(concept))


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
