"""FHIR REST interactions: each handler reads HTTP, asks the store, and renders FHIR.

Declared with `@interaction` (`routing.py`), so each is in the CapabilityStatement
and runs through the pipeline. Handlers parse nothing FHIR-specific themselves:
search, history and `$everything` hand the query to the store as sent.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from emr.api import http, versions
from emr.api.capability import capability_statement
from emr.api.context import Call
from emr.api.responses import fhir_response
from emr.api.routing import CAPABILITIES, Capability, interaction, operation
from fhir_store import dump_json, history_bundle, page_links, searchset_bundle

router = APIRouter(prefix="/fhir")


# ---- system level ---------------------------------------------------------------------------

@interaction(router, "GET", "/metadata", "capabilities", "system")
async def capabilities(call: Call) -> Response:
    """The CapabilityStatement, generated from the routes and resource models this server has."""
    return fhir_response(capability_statement(call.base, call.store.registry, call.release), pretty=call.pretty)


@operation(router, "GET", "/$versions", "versions", advertise=False)  # before /{resource_type} takes the path
async def fhir_versions(call: Call) -> Response:
    """The FHIR versions this server speaks (ask for one with `fhirVersion` in the media type) and its default.

    A Parameters resource; plain JSON (`{"versions": [...], "default": ...}`) for `Accept: application/json`,
    as the operation's definition asks.
    """
    if call.request.headers.get("accept", "").split(";")[0].split(",")[0].strip().lower() == "application/json":
        return Response(dump_json(versions.versions_plain()), media_type="application/json")
    return fhir_response(versions.versions_parameters(), pretty=call.pretty)


@interaction(router, "GET", "/_history", "history-system", "system")
async def history_system(call: Call) -> Response:
    """Every change to every resource, newest first."""
    return await _history(call)


@interaction(router, "GET", "", "search-system", "system")
async def search_system(call: Call) -> Response:
    """Search across types: `_type` names them, other parameters must be common to all."""
    return await _search(call, call.query)


@interaction(router, "POST", "", "transaction", "system")
async def batch_or_transaction(call: Call) -> Response:
    """A batch (each entry on its own) or transaction (all or nothing) Bundle."""
    body = await call.json()
    call.it.kind = "batch" if isinstance(body, dict) and body.get("type") == "batch" else "transaction"
    response = await call.services.bundles.process(
        body, call.it, base=call.base, return_resources=http.prefer(call).get("return") == "representation")
    return fhir_response(response, pretty=call.pretty)


CAPABILITIES.append(Capability("batch", "system"))  # the same route answers both Bundle types


@interaction(router, "POST", "/_search", "search-system", "system")
async def search_system_post(call: Call) -> Response:
    """Search across types with the parameters in a form body."""
    return await _search(call, await http.form_params(call))


# ---- type level -----------------------------------------------------------------------------

@interaction(router, "GET", "/{resource_type}", "search-type", "type")
async def search_type(call: Call) -> Response:
    """Search one type: every standard parameter, modifiers, chains, _has, _include, _sort, paging."""
    return await _search(call, call.query)


@interaction(router, "POST", "/{resource_type}/_search", "search-type", "type")
async def search_type_post(call: Call) -> Response:
    """Search with the parameters in an application/x-www-form-urlencoded body (kept out of URLs and logs)."""
    return await _search(call, await http.form_params(call))


@interaction(router, "GET", "/{resource_type}/_history", "history-type", "type")
async def history_type(call: Call) -> Response:
    """Every change to resources of one type, newest first."""
    return await _history(call)


@interaction(router, "GET", "/{resource_type}/{resource_id}", "read", "instance")
async def read(call: Call) -> Response:
    """The current version; 410 if deleted; 304 for If-None-Match / If-Modified-Since.

    Registered early: it is the most frequent request, and routes are matched in order."""
    version = await call.store.read(str(call.it.resource_type), str(call.it.resource_id))
    headers = http.version_headers(version)
    if http.is_not_modified(call, version):
        return Response(status_code=304, headers=headers)
    return fhir_response(version.resource, 200, headers, pretty=call.pretty)


@interaction(router, "POST", "/{resource_type}", "create", "type", conditional=True)
async def create(call: Call) -> Response:
    """Create with a server-assigned id; `If-None-Exist` makes it conditional."""
    body = await call.json()
    if_none_exist = call.request.headers.get("if-none-exist")
    call.it.conditional = if_none_exist is not None
    result = await call.store.create(body, resource_type=call.it.resource_type, if_none_exist=if_none_exist,
                                     caller=call.it.caller, base=call.base)
    return http.write_response(call, result, http.describe(result, "Created"))


@interaction(router, "PUT", "/{resource_type}", "update", "type", conditional=True)
async def conditional_update(call: Call) -> Response:
    """Update the resource the query's criteria select (create it if none does)."""
    body = await call.json()
    result = await call.store.conditional_update(body, resource_type=str(call.it.resource_type),
                                                 criteria=call.request.url.query, if_match=http.if_match(call),
                                                 caller=call.it.caller, base=call.base)
    return http.write_response(call, result, http.describe(result, "Created" if result.created else "Updated"))


@interaction(router, "DELETE", "/{resource_type}", "delete", "type", conditional=True)
async def conditional_delete(call: Call) -> Response:
    """Delete the one resource the query's criteria select."""
    query = call.request.url.query
    result = await call.store.conditional_delete(str(call.it.resource_type), query, caller=call.it.caller)
    return http.delete_response(call, result, f"{call.it.resource_type}?{query}")


# ---- instance level -------------------------------------------------------------------------

@interaction(router, "GET", "/{resource_type}/{resource_id}/_history", "history-instance", "instance")
async def history_instance(call: Call) -> Response:
    """Every version of one resource, newest first, deletions included."""
    return await _history(call)


@operation(router, "GET", "/Patient/{resource_id}/$everything", "everything", resource_type="Patient")
async def patient_everything(call: Call) -> Response:
    """Patient/$everything: the patient's whole chart, paged, with `_since`, `_type` and `_count`."""
    call.it.resource_type = "Patient"
    result = await call.store.everything(str(call.it.resource_id), call.query)
    links = page_links(f"{call.base}/Patient/{call.it.resource_id}/$everything", call.query, result.next_cursor)
    return fhir_response(searchset_bundle(call.base, result, links), pretty=call.pretty)


@interaction(router, "GET", "/{resource_type}/{resource_id}/{compartment_type}", "search-compartment",
             "compartment")
async def search_compartment(call: Call) -> Response:
    """Search one compartment: `/Patient/123/Observation` is every Observation of patient 123."""
    return await _search(call, call.query, resource_type=call.it.resource_type, compartment=call.it.compartment)


@interaction(router, "GET", "/{resource_type}/{resource_id}/_history/{version_id}", "vread", "instance")
async def vread(call: Call) -> Response:
    """One version of a resource."""
    version = await call.store.vread(str(call.it.resource_type), str(call.it.resource_id), str(call.it.version_id))
    return fhir_response(version.resource, 200, http.version_headers(version), pretty=call.pretty)


@interaction(router, "PUT", "/{resource_type}/{resource_id}", "update", "instance")
async def update(call: Call) -> Response:
    """Update (or create with this id); `If-Match` guards against lost updates."""
    body = await call.json()
    result = await call.store.update(body, resource_type=str(call.it.resource_type),
                                     resource_id=str(call.it.resource_id), if_match=http.if_match(call),
                                     caller=call.it.caller, base=call.base)
    return http.write_response(call, result, http.describe(result, "Created" if result.created else "Updated"))


@interaction(router, "PATCH", "/{resource_type}/{resource_id}", "patch", "instance")
async def patch(call: Call) -> Response:
    """Apply a JSON Patch; the result is validated like any other write."""
    operations = await call.json(patch=True)
    result = await call.store.patch(str(call.it.resource_type), str(call.it.resource_id), operations,
                                    if_match=http.if_match(call), caller=call.it.caller, base=call.base)
    return http.write_response(call, result, http.describe(result, "Patched"))


@interaction(router, "DELETE", "/{resource_type}/{resource_id}", "delete", "instance")
async def delete(call: Call) -> Response:
    """Delete: recorded as a new version, so history still shows what was there."""
    result = await call.store.delete(str(call.it.resource_type), str(call.it.resource_id),
                                     if_match=http.if_match(call), caller=call.it.caller)
    return http.delete_response(call, result, f"{call.it.resource_type}/{call.it.resource_id}")


# ---- shared by several interactions --------------------------------------------------------

async def _history(call: Call) -> Response:
    it = call.it
    page = await call.store.history(it.resource_type, it.resource_id, call.query)
    path = "/".join(p for p in (call.base, it.resource_type, it.resource_id, "_history") if p)
    links = page_links(path, call.query, page.next.encode() if page.next else None)
    return fhir_response(history_bundle(call.base, page.versions, links, page.horizon), pretty=call.pretty)


async def _search(call: Call, query: list[tuple[str, str]], *, resource_type: str | None = None,
                  compartment: tuple[str, str] | None = None) -> Response:
    result = await call.store.search(resource_type or call.it.resource_type, query, base=call.base,
                                     strict=http.strict(call), compartment=compartment, within=call.it.within)
    path = call.base + call.request.url.path.removeprefix("/fhir").rstrip("/")
    if call.request.method == "POST":
        path = path.removesuffix("/_search")
    links = page_links(path, query, result.next_cursor, result.previous_cursor)
    return fhir_response(searchset_bundle(call.base, result, links), pretty=call.pretty)
