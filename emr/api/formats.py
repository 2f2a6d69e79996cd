"""Content negotiation and request bodies: `_format`, `Accept`, `Content-Type`, `_pretty`, size limits."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import Request

from emr.api.responses import ApiError
from fhir_store import load_json

_JSON = {"application/fhir+json", "application/json", "application/json+fhir", "json", "text/json",
         "application/*", "*/*", "*"}
_XML = {"application/fhir+xml", "application/xml", "application/xml+fhir", "xml", "text/xml"}
JSON_PATCH = "application/json-patch+json"


def _media_types(header: str) -> list[str]:
    return [part.split(";")[0].strip().lower() for part in header.split(",") if part.strip()]


def check_acceptable(request: Request) -> None:
    """Refuse (406) a client that can only take XML or another format we do not produce."""
    fmt = request.query_params.get("_format")
    wanted = _media_types(fmt) if fmt else _media_types(request.headers.get("accept", ""))
    if not wanted or any(w in _JSON for w in wanted):
        return
    if any(w in _XML for w in wanted):
        raise ApiError(406, "XML is not supported yet; ask for application/fhir+json", "not-supported")
    shown = ", ".join(wanted)
    shown = shown if len(shown) <= 100 else shown[:100] + "…"
    raise ApiError(406, f"Cannot answer in {shown}; this server speaks application/fhir+json", "not-supported")


def is_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "false").lower() == "true"


_PARSE_ON_LOOP_BYTES = 64 * 1024


async def read_json(request: Request, max_bytes: int, *, patch: bool = False) -> Any:
    """The body as JSON, after checking its media type and size."""
    content_type = (_media_types(request.headers.get("content-type", "")) or [""])[0]
    if patch:
        if content_type != JSON_PATCH:
            raise ApiError(415, f"PATCH takes a JSON Patch document ({JSON_PATCH}), not '{content_type or 'none'}'",
                           "not-supported")
    elif content_type in _XML:
        raise ApiError(415, "XML bodies are not supported yet; send application/fhir+json", "not-supported")
    elif content_type and content_type not in _JSON:
        raise ApiError(415, f"Unsupported Content-Type '{content_type}'; send application/fhir+json",
                       "not-supported")
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"The body is {declared} bytes; the limit is {max_bytes}", "too-costly")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"The body is larger than the limit of {max_bytes} bytes", "too-costly")
    if not body:
        raise ApiError(400, "The request has no body", "required")
    try:
        # Parsing takes ~60 ms a MB (orjson, then the depth and decimals checks): a large body is parsed off the
        # event loop, so other requests do not wait behind it.
        value = load_json(body) if len(body) < _PARSE_ON_LOOP_BYTES else await asyncio.to_thread(load_json, body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The body is not valid JSON: {exc}", "structure") from None
    if patch:
        check_json_patch(value)
    return value


_PATCH_OPS = {"add", "remove", "replace", "move", "copy", "test"}


def check_json_patch(document: Any) -> None:
    """The shape RFC 6902 gives a JSON Patch document, checked before the patch library sees it."""
    if not isinstance(document, list):
        raise ApiError(400, "A JSON Patch document must be a JSON array of operations", "structure")
    for i, operation in enumerate(document):
        where = f"JSON Patch operation {i}"
        if not isinstance(operation, dict):
            raise ApiError(400, f"{where} is not an object", "structure")
        op = operation.get("op")
        if not isinstance(op, str) or op not in _PATCH_OPS:
            raise ApiError(400, f"{where}: 'op' must be one of {', '.join(sorted(_PATCH_OPS))}", "structure")
        pointers = ("path", "from") if op in ("move", "copy") else ("path",)
        for member in pointers:
            pointer = operation.get(member)
            if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
                raise ApiError(400, f"{where}: '{member}' must be a JSON Pointer (empty, or starting with '/')",
                               "structure")
        if op in ("add", "replace", "test") and "value" not in operation:
            raise ApiError(400, f"{where}: '{op}' needs a 'value'", "structure")
