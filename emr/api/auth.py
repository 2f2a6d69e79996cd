"""OAuth 2.0 over HTTP: the token endpoint, revocation (RFC 7009) and SMART discovery.

These answer before anyone is signed in, so they are plain routes, not FHIR
interactions; the sign-ins they handle are audited by `security.SignIn` itself.
Answers are OAuth JSON (`{"error": …}` on failure) with `Cache-Control: no-store`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Request, Response

from emr.api.context import services_of
from fhir_store import dump_json
from security import ROLES, SignInRefused

router = APIRouter()

TOKEN_PATH = "/auth/token"
REVOKE_PATH = "/auth/revoke"
_MAX_FORM = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dump_json(body), status, headers={**_NO_STORE, **(headers or {})}, media_type="application/json")


def _refused(exc: SignInRefused) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="An Giang EMR"'
    return _json(exc.to_json(), exc.status, headers)


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise SignInRefused("invalid_request", "Send the request as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise SignInRefused("invalid_request", "The request is too large", 413)
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise SignInRefused("invalid_request", "The request is not UTF-8") from None


def _basic(request: Request) -> tuple[str, str] | None:
    """client_secret_basic: `Authorization: Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise SignInRefused("invalid_client", "The Basic credentials are not readable", 401) from None
    return unquote(client_id), unquote(secret)


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post(TOKEN_PATH, summary="OAuth 2.0 token endpoint (password, client_credentials, refresh_token)")
async def token(request: Request) -> Response:
    """Sign in: a user with name and password, a system with its client credentials, or a refresh."""
    try:
        form = await _form(request)
        pair = await services_of(request).security.signin.token(form, _address(request), _basic(request))
    except SignInRefused as exc:
        return _refused(exc)
    return _json(pair.to_json())


@router.post(REVOKE_PATH, summary="OAuth 2.0 token revocation (RFC 7009): sign out")
async def revoke(request: Request) -> Response:
    """Sign out: the token (refresh or access) stops working. Unknown tokens are not an error (RFC 7009 §2.2)."""
    try:
        form = await _form(request)
    except SignInRefused as exc:
        return _refused(exc)
    if not form.get("token"):
        return _refused(SignInRefused("invalid_request", "token is required"))
    await services_of(request).security.signin.revoke(form["token"], _address(request))
    return _json({})


def _origin(request: Request) -> str:
    configured = services_of(request).settings.base_url
    if configured:
        return configured.rstrip("/").removesuffix("/fhir")
    return str(request.base_url).rstrip("/")


def smart_configuration(origin: str) -> dict[str, Any]:
    scopes = sorted({str(s) for r in ROLES.values() for s in r.scopes} | {"system/*.cruds", "offline_access"})
    return {
        "issuer": origin,
        "token_endpoint": f"{origin}{TOKEN_PATH}",
        "revocation_endpoint": f"{origin}{REVOKE_PATH}",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["password", "client_credentials", "refresh_token"],
        "scopes_supported": scopes,
        "response_types_supported": [],
        "capabilities": ["client-confidential-symmetric", "permission-v2", "permission-v1"],
    }


@router.get("/fhir/.well-known/smart-configuration", summary="SMART on FHIR discovery")
async def discovery(request: Request) -> Response:
    """Where to sign in, how, and which scopes there are (SMART App Launch 2.x, section 'Conformance')."""
    return Response(dump_json(smart_configuration(_origin(request))), media_type="application/json")
