"""Terminology operations: `$lookup`, `$validate-code`, `$expand`, `$translate`.

Each takes its parameters from the query string (GET) or a `Parameters` body
(POST, needed for inline value sets and codings), and answers with what
`fhir_store.terminology.TerminologyService` returns. This router is included
before the main one, whose `/{resource_type}/{resource_id}` would otherwise
take `/CodeSystem/$lookup` for a read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Response

from emr.api.context import Call
from emr.api.responses import ApiError, fhir_response
from emr.api.routing import operation
from fhir_store import TerminologyService, whole_number

router = APIRouter(prefix="/fhir")


@dataclass
class OperationInput:
    """An operation's named parameters: strings, and (POST only) resources and complex values."""

    values: dict[str, list[Any]] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        found = self.values.get(name)
        value = found[0] if found else None
        if value is not None and not isinstance(value, (str, int, bool)):
            raise ApiError(400, f"Parameter '{name}' must be a simple value")
        return None if value is None else str(value)

    def number(self, name: str) -> int | None:
        value = self.text(name)
        return None if value is None else whole_number(f"Parameter '{name}'", value)

    def flag(self, name: str) -> bool:
        value = self.text(name)
        if value not in (None, "true", "false", "True", "False"):
            raise ApiError(400, f"Parameter '{name}' must be true or false; got '{value}'")
        return value in ("true", "True")

    def complex(self, name: str) -> dict[str, Any] | None:
        found = self.values.get(name)
        value = found[0] if found else None
        if value is not None and not isinstance(value, dict):
            raise ApiError(400, f"Parameter '{name}' must be a {name} object, sent with POST in a Parameters body")
        return value


async def _input(call: Call) -> OperationInput:
    out = OperationInput()
    for key, value in call.query:
        if not key.startswith("_"):
            out.values.setdefault(key, []).append(value)
    if call.request.method == "POST":
        body = await call.json()
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise ApiError(400, "A POSTed operation takes a Parameters resource")
        for param in body.get("parameter", []):
            if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                raise ApiError(400, "Every Parameters.parameter needs a name")
            values = [v for k, v in param.items() if k.startswith("value")] or (
                [param["resource"]] if "resource" in param else [])
            out.values.setdefault(param["name"], []).extend(values)
    return out


def _service(call: Call) -> TerminologyService:
    return call.services.terminology


def _language(call: Call, params: OperationInput) -> str | None:
    """`displayLanguage`, else the first language of `Accept-Language`."""
    wanted = params.text("displayLanguage")
    if wanted:
        return wanted
    header = call.request.headers.get("accept-language", "")
    first = header.split(",")[0].split(";")[0].strip()
    return first if first and first != "*" else None


def _answer(call: Call, body: dict[str, Any]) -> Response:
    return fhir_response(body, pretty=call.pretty)


# ---- CodeSystem -------------------------------------------------------------------------------

async def _lookup(call: Call) -> Response:
    """The display (in `displayLanguage`), designations and properties of one code."""
    params = await _input(call)
    coding = params.complex("coding") or {}
    system = params.text("system") or coding.get("system")
    code = params.text("code") or coding.get("code")
    version = params.text("version") or coding.get("version")
    result = await _service(call).lookup(system, code, version=version, display_language=_language(call, params))
    return _answer(call, result)


async def _validate_in_system(call: Call) -> Response:
    """Is this code in the code system (the one at this id, or `url`)? With `display`, is that its title?"""
    params = await _input(call)
    service = _service(call)
    url = params.text("url") or params.text("system")
    version = params.text("version")
    if call.it.resource_id is not None:
        entry = await service.entry("CodeSystem", call.it.resource_id)
        if entry is None:
            await call.store.read("CodeSystem", call.it.resource_id)  # 404 / 410 with the store's words
            raise ApiError(404, f"CodeSystem/{call.it.resource_id} has no url, so it cannot validate codes",
                           "not-found")
        url, version = entry.url, entry.version
    return await _validate(call, params, service, url, version, None)


async def _validate(call: Call, params: OperationInput, service: TerminologyService, system: str | None,
                    version: str | None, value_set: dict[str, Any] | None) -> Response:
    language = _language(call, params)
    concept = params.complex("codeableConcept")
    if concept is not None:
        codings = concept.get("coding") or []
        if not isinstance(codings, list) or not codings or not all(isinstance(c, dict) for c in codings):
            raise ApiError(400, "codeableConcept.coding must be a list of Coding objects to validate")
        answers = [await service.validate_code(c.get("system"), c.get("code"), version=c.get("version"),
                                               display=c.get("display"), value_set=value_set,
                                               display_language=language) for c in codings]
        good = [a for a in answers if a["parameter"][0]["valueBoolean"]]
        return _answer(call, good[0] if good else answers[0])
    coding = params.complex("coding") or {}
    result = await service.validate_code(
        system or coding.get("system"), params.text("code") or coding.get("code"),
        version=version or coding.get("version"), display=params.text("display") or coding.get("display"),
        value_set=value_set, display_language=language)
    return _answer(call, result)


for _method in ("GET", "POST"):
    operation(router, _method, "/CodeSystem/$lookup", "lookup", resource_type="CodeSystem")(_lookup)
    operation(router, _method, "/CodeSystem/$validate-code", "validate-code",
              resource_type="CodeSystem")(_validate_in_system)
    operation(router, _method, "/CodeSystem/{resource_id}/$validate-code", "validate-code",
              resource_type="CodeSystem")(_validate_in_system)


# ---- ValueSet ---------------------------------------------------------------------------------

async def _value_set(call: Call, params: OperationInput) -> dict[str, Any]:
    inline = params.complex("valueSet")
    if inline is not None:
        return inline
    if call.it.resource_id is not None:
        return (await call.store.read("ValueSet", call.it.resource_id)).resource or {}
    url = params.text("url")
    if not url:
        raise ApiError(400, "Name the value set: /ValueSet/[id]/$…, or the url parameter, or valueSet (POST)")
    found = await _service(call).value_set(url)
    if found is None:
        raise ApiError(404, f"No ValueSet with url {url} is loaded", "not-found")
    return found


async def _expand(call: Call) -> Response:
    """The value set's codes; `filter` matches words of the titles (accents ignored) or a code prefix."""
    params = await _input(call)
    vs = await _value_set(call, params)
    settings = call.settings
    count = params.number("count")
    result = await _service(call).expand(
        value_set=vs, text=params.text("filter"), offset=params.number("offset") or 0,
        count=min(count if count is not None else settings.default_page_size, settings.max_page_size),
        active_only=params.flag("activeOnly"), exclude_not_for_ui=params.flag("excludeNotForUI"),
        display_language=_language(call, params), include_designations=params.flag("includeDesignations"))
    return _answer(call, result)


async def _validate_in_value_set(call: Call) -> Response:
    """Is this code (coding, codeableConcept) in the value set?"""
    params = await _input(call)
    vs = await _value_set(call, params)
    return await _validate(call, params, _service(call), params.text("system"), params.text("systemVersion"), vs)


for _method in ("GET", "POST"):
    operation(router, _method, "/ValueSet/$expand", "expand", resource_type="ValueSet")(_expand)
    operation(router, _method, "/ValueSet/{resource_id}/$expand", "expand", resource_type="ValueSet")(_expand)
    operation(router, _method, "/ValueSet/$validate-code", "validate-code",
              resource_type="ValueSet")(_validate_in_value_set)
    operation(router, _method, "/ValueSet/{resource_id}/$validate-code", "validate-code",
              resource_type="ValueSet")(_validate_in_value_set)


# ---- ConceptMap -------------------------------------------------------------------------------

async def _translate(call: Call) -> Response:
    """What a code maps to, e.g. an old (pre-July-2025) commune to the commune that replaced it."""
    params = await _input(call)
    coding = params.complex("coding") or {}
    result = await _service(call).translate(
        resource_id=call.it.resource_id, url=params.text("url"), system=params.text("system") or coding.get("system"),
        code=params.text("code") or coding.get("code"), target=params.text("targetsystem") or params.text("target"))
    return _answer(call, result)


for _method in ("GET", "POST"):
    operation(router, _method, "/ConceptMap/$translate", "translate", resource_type="ConceptMap")(_translate)
    operation(router, _method, "/ConceptMap/{resource_id}/$translate", "translate",
              resource_type="ConceptMap")(_translate)
