"""The terminology operations: `$lookup`, `$validate-code`, `$expand`, `$translate`, and `display()`.

Only the answers are built here (Parameters, an expanded ValueSet); finding the resources
and caching them is `TerminologyResolver`'s, so an operation is its FHIR shape and nothing else.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fhir_store.errors import InvalidRequest, ResourceNotFound
from fhir_store.instants import format_instant
from fhir_store.terminology.concepts import CodeSystemIndex, Concept, same_language
from fhir_store.terminology.expansion import Item
from fhir_store.terminology.resolver import TerminologyResolver
from fhir_store.terminology.sources import ICD10_VN, ICD10_WHO

#: Code systems that share their codes, so a title missing in one language is taken from the other.
SAME_CODES = {ICD10_WHO: (ICD10_VN,), ICD10_VN: (ICD10_WHO,)}


class TerminologyOperations:
    def __init__(self, resolver: TerminologyResolver) -> None:
        self._resolver = resolver

    # ---- $lookup ----------------------------------------------------------------------------------

    async def lookup(self, system: str | None, code: str | None, *, version: str | None = None,
                     display_language: str | None = None) -> dict[str, Any]:
        """CodeSystem/$lookup as a Parameters resource."""
        await self._resolver.sync()
        if not system or not code:
            raise InvalidRequest("$lookup needs a system and a code (or a coding)")
        index = await self._require_system(system, version)
        concept = index.get(code)
        if concept is None:
            raise ResourceNotFound(f"'{code}' is not a code of {index.name} ({index.canonical})")
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
        index = await self._resolver.code_system(f"{system}|{version}" if version else system)
        if index is None:
            known = await self._resolver.catalog.versions("CodeSystem", system)
            detail = f"; loaded versions: {', '.join(str(e.version) for e in known)}" if known else ""
            raise ResourceNotFound(f"The code system {system}{'|' + version if version else ''} is not loaded{detail}")
        return index

    async def _display_of(self, index: CodeSystemIndex, concept: Concept, language: str | None) -> str:
        title = index.display(concept, language)
        if language and not same_language(language, index.language) and title == concept.display:
            for other in SAME_CODES.get(index.url, ()):  # e.g. the WHO list has no Vietnamese titles
                sibling = await self._resolver.code_system(other)
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
        await self._resolver.sync()
        index = await self._resolver.code_system(f"{system}|{version}" if version else system)
        if index is None and version is not None:
            index = await self._resolver.code_system(system)  # that edition is not here: the latest still has a title
        concept = index.get(code) if index else None
        if index is None or concept is None:
            for other in SAME_CODES.get(system, ()):
                sibling = await self._resolver.code_system(other)
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
        await self._resolver.sync()
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
            members = await self._resolver.members_of(value_set)
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
        index = await self._resolver.code_system(f"{system}|{version}" if version else system)
        if index is None:
            return False, f"The code system {system} is not loaded here", None
        concept = index.get(code)
        if concept is None:
            return False, f"'{code}' is not a code of {index.name} ({index.canonical})", None
        title = await self._display_of(index, concept, language)
        if display and not index.is_title(concept, display):
            return False, f"'{display}' is not a display of {code} in {index.name}; it is '{title}'", title
        return True, None, title

    # ---- $expand ----------------------------------------------------------------------------------

    async def expand(self, *, resource_id: str | None = None, url: str | None = None,
                     value_set: dict[str, Any] | None = None, text: str | None = None, offset: int = 0,
                     count: int | None = None, active_only: bool = False, exclude_not_for_ui: bool = False,
                     display_language: str | None = None, include_designations: bool = False) -> dict[str, Any]:
        """ValueSet/$expand: the value set with its `expansion`, filtered and paged."""
        await self._resolver.sync()
        vs = await self._resolver.target("ValueSet", resource_id=resource_id, url=url, resource=value_set)
        if offset < 0 or (count is not None and count < 0):
            raise InvalidRequest("offset and count must not be negative")
        items = list((await self._resolver.expander.expand(vs, text=text)).values())
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
            index = await self._resolver.code_system(f"{item.system}|{item.version}" if item.version else item.system)
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
        await self._resolver.sync()
        if not code:
            raise InvalidRequest("$translate needs a code (and its system)")
        if resource_id is None and url is None:
            maps = [await self._resolver.resource(e) for e in await self._resolver.catalog.all("ConceptMap")]
        else:
            maps = [await self._resolver.target("ConceptMap", resource_id=resource_id, url=url)]
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
