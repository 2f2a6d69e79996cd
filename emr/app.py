"""The FastAPI application: lifespan (database, store), error handling, routes."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException

from emr import __version__
from emr.api.auth import router as auth_router
from emr.api.availability import DatabaseGate, DatabaseWatch, unreachable
from emr.api.bulk_export import export_worker
from emr.api.bulk_export import router as bulk_export_router
from emr.api.context import ApiServices
from emr.api.formats import is_pretty
from emr.api.headers import install_headers
from emr.api.matching import router as matching_router
from emr.api.request_log import RequestLog
from emr.api.responses import ApiError, outcome_response
from emr.api.routes import router
from emr.api.terminology import router as terminology_router
from emr.api.time_limit import TimeLimit
from emr.services import open_services
from emr.settings import Settings, get_settings
from fhir_store import (
    BundleProcessor,
    Interceptor,
    Issue,
    Pipeline,
    ResourceGone,
    StoreError,
    WriteCheck,
    known_resource_types,
)

log = logging.getLogger("emr")


def create_app(settings: Settings | None = None, *, interceptors: Sequence[Interceptor] = (),
               write_checks: Sequence[WriteCheck] = ()) -> FastAPI:
    """The app. `interceptors` join the pipeline every interaction passes; `write_checks` join the store's."""
    settings = settings or get_settings()

    watch = DatabaseWatch()  # told by the error handler below; asked by the gate

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, write_checks=write_checks) as services:
            # Audit first (it records refusals too), then authentication, authorisation, then the caller's own.
            pipeline = Pipeline([*services.security.interceptors, *interceptors])
            known_resource_types()  # the models and the search registry now, not on the first request
            services.store.registry  # noqa: B018
            bundles = BundleProcessor(services.store, pipeline, max_entries=settings.max_bundle_entries)
            watch.start(services.store.db)
            try:
                async with export_worker(settings, services.store) as worker:
                    # The one place app state is set: handlers reach it, typed, through `emr.api.context.Call`.
                    app.state.services = ApiServices(settings, pipeline, services.store, services.terminology,
                                                     bundles, worker, services.security)
                    yield
            finally:
                await watch.stop()

    app = FastAPI(title="An Giang EMR", version=__version__, lifespan=lifespan,
                  description="FHIR R4 server of the An Giang hospitals' EMR.")
    # Operation routers first: /fhir/$export, /fhir/CodeSystem/$lookup would otherwise match the generic paths.
    app.include_router(auth_router)
    app.include_router(bulk_export_router)
    app.include_router(terminology_router)
    app.include_router(matching_router)
    app.include_router(router)
    _install_error_handlers(app, watch)
    app.add_middleware(DatabaseGate, watch=watch)
    app.add_middleware(TimeLimit, seconds=settings.request_time_limit)  # inside the log: its 503 is logged
    app.add_middleware(RequestLog)
    install_headers(app, settings)
    return app


def _install_error_handlers(app: FastAPI, watch: DatabaseWatch) -> None:
    """Every failure becomes an OperationOutcome; nothing leaks as an HTML or bare 500 page."""

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> Response:
        request.state.reason = str(exc)
        headers = {"ETag": f'W/"{exc.version_id}"'} if isinstance(exc, ResourceGone) else None
        if exc.status in (401, 403):  # RFC 6750 §3: what the client should do about it
            error = "invalid_token" if exc.status == 401 else "insufficient_scope"
            # Header values are Latin-1: the message without accents (the body has it whole).
            plain = unicodedata.normalize("NFKD", str(exc).replace("đ", "d").replace("Đ", "D").replace("…", "..."))
            description = plain.encode("ascii", "ignore").decode().replace('"', "'")[:300]
            headers = {"WWW-Authenticate": f'Bearer realm="An Giang EMR", error="{error}", '
                                           f'error_description="{description}"'}
        return outcome_response(exc.status, exc.issues, pretty=is_pretty(request), headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        request.state.reason = "; ".join(i.diagnostics for i in exc.issues if i.diagnostics)
        return outcome_response(exc.status, exc.issues, pretty=is_pretty(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No FHIR interaction at {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not supported at {request.url.path}"
        request.state.reason = message
        return outcome_response(exc.status_code, [Issue(code, message)], pretty=is_pretty(request))

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> Response:
        return outcome_response(400, [Issue("invalid", str(exc))], pretty=is_pretty(request))

    @app.exception_handler(ConnectionFailure)  # server selection timed out, connection lost: the database is away
    async def database_away(request: Request, exc: ConnectionFailure) -> Response:
        request.state.reason = "database unreachable"
        watch.lost(exc)
        response: Response = unreachable()
        return response

    @app.exception_handler(Exception)  # the last resort: a failure outside `RequestLog`, which answers the rest
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return outcome_response(500, [Issue("exception", "Internal server error; the details are in the server log")])
