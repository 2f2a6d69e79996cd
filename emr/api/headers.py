"""Security headers on every answer, and CORS for the configured ward-terminal origins only.

A pure ASGI middleware (no `BaseHTTPMiddleware`: nothing is buffered, streaming
answers stream). It is installed *outside* Starlette's `ServerErrorMiddleware`,
so even the 500 that middleware writes for an unexpected error carries the
headers; `app.add_middleware` would put it inside, where that answer never
passes.

Every answer gets `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
`Content-Security-Policy: default-src 'none'; frame-ancestors 'none'` (this API
serves no page that needs a script, a style or a frame) and `Referrer-Policy:
no-referrer`. Every answer but the few that hold no patient data and are meant
to be fetched freely (`CACHEABLE`: the CapabilityStatement, the FHIR versions,
the SMART configuration, each read successfully) gets `Cache-Control:
no-store`, so no shared cache or proxy keeps a chart, and a token answer
(RFC 6749 §5.1) is never cached.

CORS: none at all unless `EMR_CORS_ORIGINS` lists origins. Then a request from
one of them gets `Access-Control-Allow-Origin` naming that origin (never `*`),
and its preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered
here with 204, the methods FHIR uses and the headers it needs (`Authorization`,
`Content-Type`, the conditional and `Prefer` headers). Sign-in is by bearer
token, not cookies, so `Access-Control-Allow-Credentials` is never sent. A
request from any other origin gets no CORS header (its preflight goes on to the
app, which answers 405), so the browser keeps the answer from the page.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emr.settings import Settings

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
#: Paths whose answers hold no patient data and may be cached (no `Cache-Control: no-store` added).
CACHEABLE = frozenset({"/fhir/metadata", "/fhir/$versions", "/fhir/.well-known/smart-configuration"})

ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
ALLOWED_HEADERS = ("Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, "
                   "If-Modified-Since")
#: Response headers a page may read (beyond the CORS-safelisted ones).
EXPOSED_HEADERS = ("Location, Content-Location, ETag, Last-Modified, WWW-Authenticate, Retry-After, X-Progress, "
                   "Expires, X-FHIR-Request-Validation")
PREFLIGHT_MAX_AGE = "600"


def normalise_origin(origin: str) -> str:
    """An origin as browsers send it: lower-case, no trailing slash."""
    return origin.strip().rstrip("/").lower()


class SecurityHeaders:
    """The ASGI middleware: security headers on every HTTP answer, CORS for `cors_origins` only."""

    def __init__(self, app: ASGIApp, *, cors_origins: Sequence[str] = ()) -> None:
        origins = {normalise_origin(o) for o in cors_origins if o.strip()}
        for origin in origins:
            if origin in ("*", "null") or "://" not in origin:
                raise ValueError(f"EMR_CORS_ORIGINS lists origins such as https://terminal.example; "
                                 f"'{origin}' is not one")
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_headers = Headers(scope=scope)
        origin = request_headers.get("origin")
        allowed = origin if origin is not None and normalise_origin(origin) in self.origins else None
        if allowed is not None and scope["method"] == "OPTIONS" \
                and "access-control-request-method" in request_headers:
            await self._preflight(allowed, send)
            return
        cacheable = scope["path"] in CACHEABLE and scope["method"] in ("GET", "HEAD")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                self._secure(headers, cacheable=cacheable and message["status"] in (200, 304))
                if self.origins:  # the answer depends on the Origin: caches must keep them apart
                    headers.add_vary_header("Origin")
                if allowed is not None:
                    headers["Access-Control-Allow-Origin"] = allowed
                    headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _preflight(self, origin: str, send: Send) -> None:
        headers = MutableHeaders()
        self._secure(headers, cacheable=False)
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        headers["Content-Length"] = "0"
        await send({"type": "http.response.start", "status": 204, "headers": headers.raw})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _secure(headers: MutableHeaders, *, cacheable: bool) -> None:
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value
        if not cacheable:
            headers["Cache-Control"] = "no-store"


def install_headers(app: FastAPI, settings: Settings) -> None:
    """Wrap the whole middleware stack of `app`, Starlette's error middleware included, in `SecurityHeaders`."""
    build = app.build_middleware_stack
    origins = tuple(settings.cors_origins)
    SecurityHeaders(app, cors_origins=origins)  # a bad EMR_CORS_ORIGINS fails here, at start, not on a request

    def build_with_headers() -> ASGIApp:
        return SecurityHeaders(build(), cors_origins=origins)

    app.build_middleware_stack = build_with_headers  # type: ignore[method-assign]
