"""FHIR REST interactions: each route parses HTTP, calls the store, and renders FHIR.

Routes are declared with `@interaction(...)`, which registers the FHIR
interaction it implements, so the CapabilityStatement (`capability.py`) is
generated from the routes that really exist. Every route runs through the
`Pipeline`, the single place for authentication, authorisation and audit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request, Response

from emr.api.formats import check_acceptable, is_pretty, read_json
from emr.api.pipeline import Interaction
from emr.api.responses import ApiError, fhir_response
from emr.settings import Settings
from fhir_store import FhirStore, HistoryCursor, Version, WriteResult
from fhir_store.bundles import etag, history_bundle, searchset_bundle
from fhir_store.errors import Issue, operation_outcome
from fhir_store.resource_types import resource_types
from fhir_store.search.engine import parse_request
from fhir_store.transactions import BundleProcessor

router = APIRouter(prefix="/fhir")
#: Response header carrying the OperationOutcome of a write kept with warnings (HAPI uses the same name).
VALIDATION_HEADER = "X-FHIR-Request-Validation"


@dataclass(frozen=True)
class Capability:
    """One implemented FHIR interaction, at system, type or instance level."""

    code: str
    level: str
    conditional: bool = False


CAPABILITIES: list[Capability] = []

Handler = Callable[[Interaction], Awaitable[Response]]


def interaction(method: str, path: str, code: str, level: str,
                *, conditional: bool = False) -> Callable[[Handler], Handler]:
    """Register `handler` as the route for one FHIR interaction."""

    def register(handler: Handler) -> Handler:
        def make(request: Request) -> Interaction:
            params = request.path_params
            return Interaction(code, request, params.get("resource_type"), params.get("resource_id"),
                               params.get("version_id"), conditional=conditional)

        for route_path in (path, "/") if path == "" else (path,):  # the base answers with or without "/"
            _add_route(router, method, route_path, handler, make, summary=code,
                       include_in_schema=route_path == path)
        CAPABILITIES.append(Capability(code, level, conditional))
        return handler

    return register


def operation(on: APIRouter, method: str, path: str, name: str, *, resource_type: str | None = None,
              advertise: bool = True, negotiate: bool = True) -> Callable[[Handler], Handler]:
    """Register `handler` as (one step of) the FHIR operation `$name`, on a router included before this one.

    Operation paths (`/fhir/CodeSystem/$lookup`) would otherwise be taken for `/{resource_type}/{id}`.
    `advertise` lists the operation in the CapabilityStatement (steps such as status polling are not).
    """

    def register(handler: Handler) -> Handler:
        def make(request: Request) -> Interaction:
            return Interaction("operation", request, resource_type, request.path_params.get("resource_id"),
                               context={"operation": name})

        _add_route(on, method, path, handler, make, summary=f"${name}", negotiate=negotiate)
        if advertise:
            level = f"operation:{resource_type or 'system'}"
            if all(c.code != name or c.level != level for c in CAPABILITIES):
                CAPABILITIES.append(Capability(name, level))
        return handler

    return register


def _add_route(on: APIRouter, method: str, path: str, handler: Handler, make: Callable[[Request], Interaction],
               *, summary: str, include_in_schema: bool = True, negotiate: bool = True) -> None:
    """The one way a route is added: build the Interaction, negotiate the format, run the Pipeline."""

    async def endpoint(request: Request) -> Response:
        it = make(request)
        if negotiate:  # file downloads answer in their own format, whatever Accept says
            check_acceptable(request)
        return await request.app.state.pipeline.run(it, handler)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    on.add_api_route(path, endpoint, methods=[method], name=handler.__name__, summary=summary,
                     response_class=Response, include_in_schema=include_in_schema)


# ---- helpers --------------------------------------------------------------------------------

def _store(it: Interaction) -> FhirStore:
    store: FhirStore = it.request.app.state.store
    return store


def _settings(it: Interaction) -> Settings:
    settings: Settings = it.request.app.state.settings
    return settings


def base_url(request: Request) -> str:
    configured = request.app.state.settings.base_url
    return configured.rstrip("/") if configured else f"{str(request.base_url).rstrip('/')}/fhir"


def _if_match(it: Interaction) -> int | None:
    header = it.request.headers.get("if-match")
    if header is None:
        return None
    value = header.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise ApiError(400, f"If-Match must name a version, like W/\"3\"; got {header!r}")
    return int(value)


def _prefer(it: Interaction, name: str, default: str) -> str:
    for part in it.request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key == name:
                return value.strip('"')
    return default


def _prefer_return(it: Interaction) -> str:
    return _prefer(it, "return", "representation")


def _version_headers(version: Version) -> dict[str, str]:
    return {"ETag": etag(version.version_id), "Last-Modified": format_datetime(version.last_updated, usegmt=True)}


def _write_response(it: Interaction, result: WriteResult, message: str) -> Response:
    version = result.version
    headers = _version_headers(version)
    location = f"{base_url(it.request)}/{version.resource_type}/{version.id}/_history/{version.version_id}"
    status = 201 if result.created else 200
    if result.created or it.kind == "create":
        headers["Location"] = location
    else:
        headers["Content-Location"] = location
    prefer = _prefer_return(it)
    pretty = is_pretty(it.request)
    if result.warnings:
        # Kept despite problems (terminology in warn mode): said in a header whatever the body is, as HAPI does.
        headers[VALIDATION_HEADER] = json.dumps(operation_outcome(list(result.warnings)), ensure_ascii=True)
    if prefer == "minimal":
        return fhir_response(None, status, headers)
    if prefer == "OperationOutcome":
        issues = [Issue("informational", message, severity="information"), *result.warnings]
        return fhir_response(operation_outcome(issues), status, headers, pretty=pretty)
    return fhir_response(version.resource, status, headers, pretty=pretty)


def _describe(result: WriteResult, verb: str) -> str:
    v = result.version
    if not result.changed:
        return f"{v.resource_type}/{v.id} is unchanged at version {v.version_id}"
    return f"{verb} {v.resource_type}/{v.id}, now at version {v.version_id}"


def _not_modified(it: Interaction, version: Version) -> bool:
    inm = it.request.headers.get("if-none-match")
    if inm is not None:
        return any(tag.strip() in (etag(version.version_id), f'"{version.version_id}"', "*") for tag in inm.split(","))
    ims = it.request.headers.get("if-modified-since")
    if ims:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        return version.last_updated.replace(microsecond=0) <= since
    return False


def _parse_count(it: Interaction) -> int:
    settings = _settings(it)
    raw = it.request.query_params.get("_count")
    if raw is None:
        return settings.default_page_size
    if not raw.isdigit():
        raise ApiError(400, f"_count must be a whole number; got '{raw}'")
    return min(int(raw), settings.max_page_size)


def _parse_instant(name: str, raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name} must be a FHIR instant like 2025-01-31T08:00:00Z; got '{raw}'") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ---- system level ---------------------------------------------------------------------------

@interaction("GET", "/metadata", "capabilities", "system")
async def capabilities(it: Interaction) -> Response:
    """The CapabilityStatement, generated from the routes and resource models this server has."""
    from emr.api.capability import capability_statement

    return fhir_response(capability_statement(base_url(it.request)), pretty=is_pretty(it.request))


@interaction("GET", "/_history", "history-system", "system")
async def history_system(it: Interaction) -> Response:
    """Every change to every resource, newest first."""
    return await _history(it)


@interaction("GET", "", "search-system", "system")
async def search_system(it: Interaction) -> Response:
    """Search across types: `_type` names them, other parameters must be common to all."""
    return await _search(it, list(it.request.query_params.multi_items()))


@interaction("POST", "", "transaction", "system")
async def batch_or_transaction(it: Interaction) -> Response:
    """A batch (each entry on its own) or transaction (all or nothing) Bundle."""
    settings = _settings(it)
    body = await read_json(it.request, settings.max_body_bytes)
    it.kind = "batch" if isinstance(body, dict) and body.get("type") == "batch" else "transaction"
    processor = BundleProcessor(_store(it), max_entries=settings.max_bundle_entries,
                                page_size=settings.default_page_size, max_page_size=settings.max_page_size)
    response = await processor.process(body, base=base_url(it.request),
                                       return_resources=_prefer_return(it) == "representation"
                                       and "return=" in it.request.headers.get("prefer", ""))
    return fhir_response(response, pretty=is_pretty(it.request))


CAPABILITIES.append(Capability("batch", "system"))  # the same route answers both Bundle types


@interaction("POST", "/_search", "search-system", "system")
async def search_system_post(it: Interaction) -> Response:
    """Search across types with the parameters in a form body."""
    return await _search(it, await _form_params(it))


# ---- type level -----------------------------------------------------------------------------

@interaction("GET", "/{resource_type}", "search-type", "type")
async def search_type(it: Interaction) -> Response:
    """Search one type: every standard parameter, modifiers, chains, _has, _include, _sort, paging."""
    return await _search(it, list(it.request.query_params.multi_items()))


@interaction("POST", "/{resource_type}/_search", "search-type", "type")
async def search_type_post(it: Interaction) -> Response:
    """Search with the parameters in an application/x-www-form-urlencoded body (kept out of URLs and logs)."""
    return await _search(it, await _form_params(it))

@interaction("GET", "/{resource_type}/_history", "history-type", "type")
async def history_type(it: Interaction) -> Response:
    """Every change to resources of one type, newest first."""
    return await _history(it)


@interaction("GET", "/{resource_type}/{resource_id}", "read", "instance")
async def read(it: Interaction) -> Response:
    """The current version; 410 if deleted; 304 for If-None-Match / If-Modified-Since.

    Registered early: it is the most frequent request, and routes are matched in order."""
    version = await _store(it).read(str(it.resource_type), str(it.resource_id))
    headers = _version_headers(version)
    if _not_modified(it, version):
        return Response(status_code=304, headers=headers)
    return fhir_response(version.resource, 200, headers, pretty=is_pretty(it.request))


@interaction("POST", "/{resource_type}", "create", "type", conditional=True)
async def create(it: Interaction) -> Response:
    """Create with a server-assigned id; `If-None-Exist` makes it conditional."""
    body = await read_json(it.request, _settings(it).max_body_bytes)
    if_none_exist = it.request.headers.get("if-none-exist")
    it.conditional = if_none_exist is not None
    result = await _store(it).create(body, resource_type=it.resource_type, if_none_exist=if_none_exist)
    return _write_response(it, result, _describe(result, "Created"))


@interaction("PUT", "/{resource_type}", "update", "type", conditional=True)
async def conditional_update(it: Interaction) -> Response:
    """Update the resource the query's criteria select (create it if none does)."""
    body = await read_json(it.request, _settings(it).max_body_bytes)
    result = await _store(it).conditional_update(body, resource_type=str(it.resource_type),
                                                 criteria=it.request.url.query, if_match=_if_match(it))
    return _write_response(it, result, _describe(result, "Created" if result.created else "Updated"))


@interaction("DELETE", "/{resource_type}", "delete", "type", conditional=True)
async def conditional_delete(it: Interaction) -> Response:
    """Delete the one resource the query's criteria select."""
    result = await _store(it).conditional_delete(str(it.resource_type), it.request.url.query)
    return _delete_response(it, result, f"{it.resource_type}?{it.request.url.query}")


# ---- instance level -------------------------------------------------------------------------

@interaction("GET", "/{resource_type}/{resource_id}/_history", "history-instance", "instance")
async def history_instance(it: Interaction) -> Response:
    """Every version of one resource, newest first, deletions included."""
    return await _history(it)


@interaction("GET", "/Patient/{resource_id}/$everything", "everything", "operation:Patient")
async def patient_everything(it: Interaction) -> Response:
    """Patient/$everything: the patient's whole chart, paged, with `_since`, `_type` and `_count`."""
    it.resource_type = "Patient"
    params = it.request.query_params
    since = _parse_instant("_since", params["_since"]) if "_since" in params else None
    types = [t for t in params.get("_type", "").split(",") if t] or None
    result = await _store(it).everything(str(it.resource_id), types=types, since=since, count=_parse_count(it),
                                         cursor=params.get("_cursor"))
    base = base_url(it.request)
    path = f"{base}/Patient/{it.resource_id}/$everything"
    kept = [(k, v) for k, v in params.multi_items() if k != "_cursor"]
    links = {"self": f"{path}?{urlencode(kept)}" if kept else path}
    if result.next_cursor:
        links["next"] = f"{path}?{urlencode([*kept, ('_cursor', result.next_cursor)])}"
    bundle = searchset_bundle(base, result, links, summary=None, elements=None)
    return fhir_response(bundle, pretty=is_pretty(it.request))


@interaction("GET", "/{resource_type}/{resource_id}/{compartment_type}", "search-compartment", "compartment")
async def search_compartment(it: Interaction) -> Response:
    """Search one compartment: `/Patient/123/Observation` is every Observation of patient 123."""
    compartment_type = it.request.path_params["compartment_type"]
    return await _search(it, list(it.request.query_params.multi_items()), types=[compartment_type],
                         compartment=(str(it.resource_type), str(it.resource_id)))


@interaction("GET", "/{resource_type}/{resource_id}/_history/{version_id}", "vread", "instance")
async def vread(it: Interaction) -> Response:
    """One version of a resource."""
    vid = str(it.version_id)
    if not vid.isdigit():
        raise ApiError(404, f"Version '{vid}' does not exist: version ids are whole numbers", "not-found")
    version = await _store(it).vread(str(it.resource_type), str(it.resource_id), int(vid))
    return fhir_response(version.resource, 200, _version_headers(version), pretty=is_pretty(it.request))


@interaction("PUT", "/{resource_type}/{resource_id}", "update", "instance")
async def update(it: Interaction) -> Response:
    """Update (or create with this id); `If-Match` guards against lost updates."""
    body = await read_json(it.request, _settings(it).max_body_bytes)
    result = await _store(it).update(body, resource_type=str(it.resource_type), resource_id=str(it.resource_id),
                                     if_match=_if_match(it))
    return _write_response(it, result, _describe(result, "Created" if result.created else "Updated"))


@interaction("PATCH", "/{resource_type}/{resource_id}", "patch", "instance")
async def patch(it: Interaction) -> Response:
    """Apply a JSON Patch; the result is validated like any other write."""
    operations = await read_json(it.request, _settings(it).max_body_bytes, patch=True)
    result = await _store(it).patch(str(it.resource_type), str(it.resource_id), operations, if_match=_if_match(it))
    return _write_response(it, result, _describe(result, "Patched"))


@interaction("DELETE", "/{resource_type}/{resource_id}", "delete", "instance")
async def delete(it: Interaction) -> Response:
    """Delete: recorded as a new version, so history still shows what was there."""
    result = await _store(it).delete(str(it.resource_type), str(it.resource_id), if_match=_if_match(it))
    return _delete_response(it, result, f"{it.resource_type}/{it.resource_id}")


def _delete_response(it: Interaction, result: WriteResult | None, what: str) -> Response:
    headers = _version_headers(result.version) if result else {}
    if _prefer_return(it) == "minimal":
        return fhir_response(None, 204, headers)
    if result is None:
        message = f"{what}: nothing to delete"
    elif not result.changed:
        message = f"{what} was already deleted (version {result.version.version_id})"
    else:
        message = f"Deleted {result.version.resource_type}/{result.version.id}; " \
                  f"the deletion is version {result.version.version_id}"
    outcome = operation_outcome([Issue("informational", message, severity="information")])
    return fhir_response(outcome, 200, headers, pretty=is_pretty(it.request))


async def _history(it: Interaction) -> Response:
    params = it.request.query_params
    since = _parse_instant("_since", params["_since"]) if "_since" in params else None
    cursor = None
    if "_cursor" in params:
        try:
            cursor = HistoryCursor.decode(params["_cursor"])
        except Exception:
            raise ApiError(400, "_cursor is not one this server made; follow the Bundle's links") from None
    count = _parse_count(it)
    page = await _store(it).history(resource_type=it.resource_type, resource_id=it.resource_id,
                                    since=since, count=count, before=cursor)
    base = base_url(it.request)
    path = "/".join(p for p in (base, it.resource_type, it.resource_id, "_history") if p)
    keep = {k: v for k, v in params.items() if k not in ("_cursor",)}
    links = {"self": f"{path}?{urlencode(params)}" if params else path}
    if page.next is not None:
        links["next"] = f"{path}?{urlencode({**keep, '_cursor': page.next.encode()})}"
    return fhir_response(history_bundle(base, page.versions, links), pretty=is_pretty(it.request))


async def _form_params(it: Interaction) -> list[tuple[str, str]]:
    content_type = it.request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        raise ApiError(415, "POST _search takes an application/x-www-form-urlencoded body", "not-supported")
    body = await it.request.body()
    if len(body) > _settings(it).max_body_bytes:
        raise ApiError(413, "The search form is larger than the body limit", "too-costly")
    try:
        form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ApiError(400, "The search form is not UTF-8") from None
    return list(it.request.query_params.multi_items()) + form


async def _search(it: Interaction, params: list[tuple[str, str]], *, types: list[str] | None = None,
                  compartment: tuple[str, str] | None = None) -> Response:
    settings = _settings(it)
    if types is None:
        types = [str(it.resource_type)] if it.resource_type else _system_types(params)
    strict = _prefer(it, "handling", "lenient") == "strict"
    request = parse_request(_store(it).registry, types, params, strict=strict,
                            default_count=settings.default_page_size, max_count=settings.max_page_size)
    request.local_base = base_url(it.request)
    result = await _store(it).search(request, compartment=compartment)
    base = base_url(it.request)
    path = base + it.request.url.path.removeprefix("/fhir").rstrip("/")
    if it.request.method == "POST":
        path = path.removesuffix("/_search")
    kept = [(k, v) for k, v in params if k != "_cursor"]
    links = {"self": f"{path}?{urlencode(kept)}" if kept else path}
    if result.next_cursor:
        links["next"] = f"{path}?{urlencode([*kept, ('_cursor', result.next_cursor)])}"
    if result.previous_cursor:
        links["previous"] = f"{path}?{urlencode([*kept, ('_cursor', result.previous_cursor)])}"
    bundle = searchset_bundle(base, result, links, summary=request.summary, elements=request.elements)
    return fhir_response(bundle, pretty=is_pretty(it.request))


def _system_types(params: list[tuple[str, str]]) -> list[str]:
    named = [t for k, v in params if k == "_type" for t in v.split(",") if t]
    known = resource_types()
    for t in named:
        if t not in known:
            raise ApiError(400, f"_type names an unknown resource type '{t}'")
    return named or list(known)
