"""How a route is declared: `@interaction` and `@operation` register it *and* record the capability.

The CapabilityStatement (`capability.py`) is generated from `CAPABILITIES`, so
it lists exactly the routes that exist. Every route is added by `_add_route`,
the one place where an HTTP request becomes an `Interaction` and runs through
the `Pipeline` (authorisation and audit hook in there, not route by route).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from emr.api import versions
from emr.api.context import Call, services_of
from emr.api.formats import check_acceptable
from fhir_store import Interaction

Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Capability:
    """One implemented FHIR interaction, at system, type or instance level (`operation:<level>` for $ops)."""

    code: str
    level: str
    conditional: bool = False


#: Filled as the route modules are imported; read by the CapabilityStatement.
CAPABILITIES: list[Capability] = []


def interaction(on: APIRouter, method: str, path: str, code: str, level: str,
                *, conditional: bool = False) -> Callable[[Handler], Handler]:
    """Register `handler` as the route for one FHIR interaction."""

    def register(handler: Handler) -> Handler:
        def make(request: Request) -> Interaction:
            params = request.path_params
            rtype, rid = params.get("resource_type"), params.get("resource_id")
            compartment = None
            if "compartment_type" in params:  # /Patient/1/Observation searches Observation in Patient/1
                compartment, rtype, rid = (str(rtype), str(rid)), params["compartment_type"], None
            return Interaction(code, rtype, rid, params.get("version_id"), conditional=conditional,
                               query=tuple(request.query_params.multi_items()), headers=request.headers,
                               address=request.client.host if request.client else None, compartment=compartment)

        for route_path in (path, "/") if path == "" else (path,):  # the base answers with or without "/"
            _add_route(on, method, route_path, handler, make, summary=code, include_in_schema=route_path == path)
        CAPABILITIES.append(Capability(code, level, conditional))
        return handler

    return register


def operation(on: APIRouter, method: str, path: str, name: str, *, resource_type: str | None = None,
              advertise: bool = True, negotiate: bool = True) -> Callable[[Handler], Handler]:
    """Register `handler` as (one step of) the FHIR operation `$name`, on a router included before the main one.

    Operation paths (`/fhir/CodeSystem/$lookup`) would otherwise be taken for `/{resource_type}/{id}`.
    `advertise` lists the operation in the CapabilityStatement (steps such as status polling are not).
    """

    def register(handler: Handler) -> Handler:
        def make(request: Request) -> Interaction:
            return Interaction("operation", resource_type, request.path_params.get("resource_id"), operation=name,
                               query=tuple(request.query_params.multi_items()), headers=request.headers,
                               address=request.client.host if request.client else None)

        _add_route(on, method, path, handler, make, summary=f"${name}", negotiate=negotiate)
        if advertise:
            level = f"operation:{resource_type or 'system'}"
            if all(c.code != name or c.level != level for c in CAPABILITIES):
                CAPABILITIES.append(Capability(name, level))
        return handler

    return register


def _add_route(on: APIRouter, method: str, path: str, handler: Handler, make: Callable[[Request], Interaction],
               *, summary: str, include_in_schema: bool = True, negotiate: bool = True) -> None:
    """The one way a route is added: build the Interaction, negotiate format and FHIR version, run the Pipeline."""

    async def endpoint(request: Request) -> Response:
        services = services_of(request)
        it = make(request)
        if negotiate:  # file downloads answer in their own format, whatever Accept says
            check_acceptable(request)
        release = versions.negotiate(request)

        async def handle(it: Interaction) -> Response:
            sending = request.method in ("POST", "PUT", "PATCH")  # the client's content is refused: 415
            versions.check_types(release, [it.resource_type] if it.resource_type else [], 415 if sending else 406)
            return versions.answer_in(release, await handler(Call(it, request, services, release)))

        return await services.pipeline.run(it, handle)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    on.add_api_route(path, endpoint, methods=[method], name=handler.__name__, summary=summary,
                     response_class=Response, include_in_schema=include_in_schema)
