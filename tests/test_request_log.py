"""What IT staff get from the server's log and a client from a failure: a request id on every answer, one
log line per request (with the reason for a 4xx), and a server error answered without dropping the
keep-alive connection, logged once under that id.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fhir_store import Interaction, ResultT
from tests.conftest import LiveServer, make_settings
from tests.serving import free_port, start_serve, stop_serve


async def explode_on_marker(it: Interaction, call_next: Callable[[Interaction], Awaitable[ResultT]]) -> ResultT:
    """A bug on demand: a search with `_tag=boom` raises what no handler expects."""
    if ("_tag", "boom") in it.query:
        raise RuntimeError("a bug, on purpose")
    return await call_next(it)


@pytest.fixture(scope="module")
def server(mongo_uri: str) -> Iterator[LiveServer]:
    with LiveServer(make_settings(mongo_uri), interceptors=[explode_on_marker]) as live:
        yield live


def _request(conn: http.client.HTTPConnection, token: str, path: str,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}", **(headers or {})})
    answer = conn.getresponse()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


def test_each_answer_has_a_request_id_and_a_log_line(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    token = server.sign_in()
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    with caplog.at_level(logging.INFO, logger="emr.request"):
        status, headers, _ = _request(conn, token, "/fhir/Patient?_count=1")
        assert status == 200 and len(headers["x-request-id"]) >= 8
        ours = headers["x-request-id"]
        status, headers, _ = _request(conn, token, "/fhir/Patient/no-such-patient", {"X-Request-Id": "ward-7.42"})
        assert status == 404 and headers["x-request-id"] == "ward-7.42"  # a terminal's own id is kept
        status, headers, _ = _request(conn, token, "/fhir/Patient", {"X-Request-Id": "bad id\u00e9"})
        assert status == 200 and headers["x-request-id"] != "bad id\u00e9"  # not a sane id: a new one
    lines = [r.getMessage() for r in caplog.records if r.name == "emr.request"]
    assert any(line.startswith(f"{ours} GET /fhir/Patient 200 ") and line.endswith(" ms") for line in lines), lines
    missing = next(line for line in lines if line.startswith("ward-7.42 "))
    assert " 404 " in missing and "no-such-patient is not known" in missing  # the reason for a 4xx


def test_a_server_error_names_its_request_and_keeps_the_connection(server: LiveServer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    token = server.sign_in()
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    with caplog.at_level(logging.INFO, logger="emr"):
        status, headers, body = _request(conn, token, "/fhir/Patient?_tag=boom")
        # the same connection answers the next request: the error did not close it
        after, _, _ = _request(conn, token, "/fhir/Patient?_count=1")
    assert status == 500 and after == 200
    request_id = headers["x-request-id"]
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert request_id in outcome["issue"][0]["diagnostics"] and "RuntimeError" not in body.decode()
    tracebacks = [r for r in caplog.records if r.exc_info and request_id in r.getMessage()]
    assert len(tracebacks) == 1  # logged once, under the id the client was given


def test_json_logs_carry_the_request_fields_for_a_collector(tmp_path: Path) -> None:
    """EMR_LOG_FORMAT=json: every line of `emr serve`'s log is one JSON object; a request's has its fields."""
    port = free_port()
    serve = start_serve(tmp_path / "data", port, EMR_LOG_FORMAT="json")
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/fhir/Patient/nobody")  # no token: a 401, with its reason
    finally:
        stop_serve(serve)
    lines = [json.loads(line) for line in (serve.stderr.read().decode() if serve.stderr else "").splitlines()
             if line.startswith("{")]
    assert any("An Giang EMR" in line["message"] and "database" in line["message"] for line in lines), lines
    mine = [line for line in lines if line.get("request_id") == answer.headers["X-Request-Id"]]
    assert len(mine) == 1, lines
    assert mine[0]["method"] == "GET" and mine[0]["path"] == "/fhir/Patient/nobody"
    assert mine[0]["status"] == 401 and mine[0]["ms"] >= 0 and mine[0]["reason"], mine
