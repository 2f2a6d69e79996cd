"""Sign-in, tokens, roles and scopes on every interaction, and the audit trail, through the real HTTP API.

One server with a database of its own; users are real accounts in it, signed in
through the token endpoint as a ward terminal does.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from emr.services import open_services
from tests.conftest import LiveServer, make_settings

JSON = {"Content-Type": "application/fhir+json"}
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"


@pytest.fixture(scope="module")
def server(mongo_uri: str) -> Iterator[LiveServer]:
    with LiveServer(make_settings(mongo_uri)) as live:
        yield live


@pytest.fixture(scope="module")
def chart(server: LiveServer) -> dict[str, str]:
    """A patient with an encounter and an observation, written by an it-admin."""
    with server.client() as admin:
        pid = admin.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Trịnh", "given": ["Thu"]}],
                                           "identifier": [{"system": CCCD, "value": uuid.uuid4().hex[:12]}]},
                         headers=JSON).json()["id"]
        oid = admin.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                               "code": {"text": "mạch"}, "subject": {"reference": f"Patient/{pid}"},
                                               "valueQuantity": {"value": 72}}, headers=JSON).json()["id"]
    return {"patient": pid, "observation": oid}


def audit_events(server: LiveServer, **params: str) -> list[dict[str, Any]]:
    with server.client("auditor") as auditor:
        answer = auditor.get("/AuditEvent", params={"_count": "200", "_sort": "-date", **params})
        assert answer.status_code == 200, answer.text
        return [e["resource"] for e in answer.json().get("entry", [])]


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    return str(response.json()["issue"][0]["diagnostics"])


# ---- sign-in and tokens ---------------------------------------------------------------------------

def test_without_a_token_only_metadata_and_discovery_answer(server: LiveServer) -> None:
    with server.client(role=None) as anonymous:
        assert anonymous.get("/metadata").status_code == 200
        assert anonymous.get("/$versions").status_code == 200
        discovery = anonymous.get("/.well-known/smart-configuration").json()
        assert discovery["token_endpoint"] == f"{server.url}/auth/token"
        assert discovery["revocation_endpoint"] == f"{server.url}/auth/revoke"
        assert {"password", "client_credentials", "refresh_token"} <= set(discovery["grant_types_supported"])
        security = anonymous.get("/metadata").json()["rest"][0]["security"]
        assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
        uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
        assert uris["token"] == discovery["token_endpoint"]
        for path in ("/Patient", "/Patient/x", "/Observation?code=x", "/$export", "/_history"):
            answer = anonymous.get(path)
            assert "Sign in" in refused(answer, 401)
            assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="An Giang EMR", error="invalid_token"')
        assert anonymous.post("", json={"resourceType": "Bundle", "type": "batch", "entry": []},
                              headers=JSON).status_code == 401


def test_password_sign_in_refresh_and_sign_out(server: LiveServer) -> None:
    username, password = server.add_user("nurse")
    pair = server.token_for(username, password)
    assert pair["token_type"] == "Bearer" and pair["expires_in"] > 0 and pair["refresh_token"]
    assert "user/Observation.cu" in pair["scope"].split()
    with server.client(token=pair["access_token"]) as nurse:
        assert nurse.get("/Patient").status_code == 200
    renewed = httpx.post(f"{server.url}/auth/token", data={"grant_type": "refresh_token",
                                                           "refresh_token": pair["refresh_token"]})
    assert renewed.status_code == 200, renewed.text
    assert renewed.headers["cache-control"] == "no-store"
    again = httpx.post(f"{server.url}/auth/token", data={"grant_type": "refresh_token",
                                                         "refresh_token": pair["refresh_token"]})
    assert again.json()["error"] == "invalid_grant"  # a refresh token works once; a replay ends the session
    newer = renewed.json()["refresh_token"]
    assert httpx.post(f"{server.url}/auth/token", data={"grant_type": "refresh_token",
                                                        "refresh_token": newer}).status_code == 400
    # sign out: the access token stops working at once
    signed_out = httpx.post(f"{server.url}/auth/revoke", data={"token": renewed.json()["access_token"]})
    assert signed_out.status_code == 200
    with server.client(token=renewed.json()["access_token"]) as nurse:
        assert "revoked" in refused(nurse.get("/Patient"), 401)


def test_wrong_passwords_weak_scopes_and_tampered_or_expired_tokens(server: LiveServer, mongo_uri: str) -> None:
    username, password = server.add_user("clerk")
    wrong = httpx.post(f"{server.url}/auth/token", data={"grant_type": "password", "username": username,
                                                         "password": "not the password"})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    nobody = httpx.post(f"{server.url}/auth/token", data={"grant_type": "password", "username": "nobody-here",
                                                          "password": "whatever it is"})
    assert nobody.json() == wrong.json()  # a missing user and a wrong password look the same
    too_much = httpx.post(f"{server.url}/auth/token", data={"grant_type": "password", "username": username,
                                                            "password": password, "scope": "user/Observation.rs"})
    assert too_much.json()["error"] == "invalid_scope"
    narrowed = server.token_for(username, password, scope="user/Patient.rs user/Observation.rs")
    assert narrowed["scope"] == "user/Patient.rs"
    token = narrowed["access_token"]
    header, claims, signature = token.split(".")
    forged = base64.urlsafe_b64encode(base64.urlsafe_b64decode(claims + "==").replace(
        b"user/Patient.rs", b"user/*.cruds.")).rstrip(b"=").decode()
    with server.client(token=f"{header}.{forged}.{signature}") as forger:
        assert "not valid" in refused(forger.get("/Observation"), 401)
    with server.client(token=token[:-4] + "AAAA") as forger:
        refused(forger.get("/Patient"), 401)
    with LiveServer(make_settings(mongo_uri, access_token_lifetime=timedelta(seconds=3))) as short:
        user, secret = short.add_user("clinician")
        with short.client(token=short.token_for(user, secret)["access_token"]) as clinician:
            assert clinician.get("/Patient").status_code == 200
            time.sleep(3.2)
            assert "expired" in refused(clinician.get("/Patient"), 401)


def test_repeated_failures_are_throttled(server: LiveServer) -> None:
    username, password = server.add_user("clinician")
    for _ in range(5):
        httpx.post(f"{server.url}/auth/token", data={"grant_type": "password", "username": username,
                                                     "password": "guess guess guess"})
    blocked = httpx.post(f"{server.url}/auth/token", data={"grant_type": "password", "username": username,
                                                           "password": password})
    assert blocked.status_code == 429 and blocked.json()["error"] == "slow_down"
    assert int(blocked.headers["Retry-After"]) > 0
    failures = [e for e in audit_events(server, altid=username) if e["type"]["code"] == "110114"]
    assert [e["outcome"] for e in failures[:6]] == ["4"] * 6  # the refusal and the five failures


def test_a_disabled_user_is_signed_out_at_once(server: LiveServer) -> None:
    username, password = server.add_user("clinician")
    pair = server.token_for(username, password)
    with server.client(token=pair["access_token"]) as clinician:
        assert clinician.get("/Patient").status_code == 200

        async def disable() -> None:
            async with open_services(server.settings) as services:
                await services.security.disable_user(username)

        asyncio.run(disable())  # as `emr users disable` does: other services than the server's
        time.sleep(0.6)  # the server reloads revocations twice a second
        assert "revoked" in refused(clinician.get("/Patient"), 401)
    refresh = httpx.post(f"{server.url}/auth/token", data={"grant_type": "refresh_token",
                                                           "refresh_token": pair["refresh_token"]})
    assert refresh.status_code == 400
    assert httpx.post(f"{server.url}/auth/token", data={"grant_type": "password", "username": username,
                                                        "password": password}).status_code == 400


# ---- roles and scopes -----------------------------------------------------------------------------

def test_each_role_may_do_its_work_and_nothing_more(server: LiveServer, chart: dict[str, str]) -> None:
    pid, oid = chart["patient"], chart["observation"]
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "nhiệt độ"},
                   "subject": {"reference": f"Patient/{pid}"}}
    with server.client("clerk") as clerk:
        assert clerk.get(f"/Patient/{pid}").status_code == 200
        assert clerk.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Mai"}]},
                          headers=JSON).status_code == 201
        assert "needs r on Observation" in refused(clerk.get(f"/Observation/{oid}"), 403)
        answer = clerk.get("/Observation", params={"subject": f"Patient/{pid}"})
        assert refused(answer, 403)
        assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
        refused(clerk.get("/Patient", params={"_revinclude": "Observation:subject"}), 403)
        refused(clerk.get("/Patient", params={"_has:Observation:subject:code:text": "mạch"}), 403)
        refused(clerk.get(f"/Patient/{pid}/$everything"), 403)
        refused(clerk.get(f"/Patient/{pid}/Observation"), 403)
    with server.client("nurse") as nurse:
        assert nurse.post("/Observation", json=observation, headers=JSON).status_code == 201
        assert nurse.get("/Observation", params={"subject": f"Patient/{pid}",
                                                 "_include": "Observation:subject"}).status_code == 200
        refused(nurse.post("/Condition", json={"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                                               "code": {"text": "sốt"}}, headers=JSON), 403)
        refused(nurse.delete(f"/Observation/{oid}"), 403)
    with server.client("clinician") as clinician:
        assert clinician.get(f"/Patient/{pid}/$everything").status_code == 200
        refused(clinician.delete(f"/Observation/{oid}"), 403)  # mistakes are marked entered-in-error
        refused(clinician.get("/AuditEvent"), 403)  # `*` never covers the audit trail
        refused(clinician.get("/$export", headers={"Prefer": "respond-async"}), 403)
    with server.client("auditor") as auditor:
        assert auditor.get("/AuditEvent").status_code == 200
        refused(auditor.get(f"/Patient/{pid}"), 403)
        refused(auditor.get("/Observation", params={"subject": f"Patient/{pid}"}), 403)


def test_chains_and_includes_need_the_types_they_reveal(server: LiveServer, chart: dict[str, str]) -> None:
    username, password = server.add_user("clinician")
    token = server.token_for(username, password, scope="user/Observation.rs")["access_token"]
    with server.client(token=token) as narrow:
        assert narrow.get("/Observation", params={"code:text": "mạch"}).status_code == 200
        assert "s on Patient" in refused(narrow.get("/Observation", params={"subject:Patient.name": "Trịnh"}), 403)
        refused(narrow.get("/Observation", params={"_include": "Observation:subject"}), 403)
        refused(narrow.get("/Observation", params={"_include": "*"}), 403)
        refused(narrow.get("/", params={"_type": "Observation,Patient"}), 403)
        refused(narrow.get("/_history"), 403)


def test_bundle_entries_are_each_authorised(server: LiveServer, chart: dict[str, str]) -> None:
    pid = chart["patient"]
    tag = uuid.uuid4().hex[:8]
    entries = [
        {"resource": {"resourceType": "Patient", "name": [{"family": tag}]}, "request": {"method": "POST",
                                                                                    "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": tag},
                      "subject": {"reference": f"Patient/{pid}"}}, "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": f"Observation?subject=Patient/{pid}"}},
    ]
    with server.client("clerk") as clerk:
        batch = clerk.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=JSON)
        assert batch.status_code == 200
        assert [e["response"]["status"][:3] for e in batch.json()["entry"]] == ["201", "403", "403"]
        transaction = clerk.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries[:2]},
                                 headers=JSON)
        assert "Observation" in refused(transaction, 403)
        # nothing of the refused transaction was kept: the batch's one Patient is all there is
        assert len(clerk.get("/Patient", params={"family": tag}).json()["entry"]) == 1


def test_client_credentials_for_systems(server: LiveServer) -> None:
    async def add() -> tuple[str, str]:
        async with open_services(server.settings) as services:
            client, secret = await services.security.accounts.add_client("sync job", "system/Patient.rs")
            return client.client_id, secret

    client_id, secret = asyncio.run(add())
    token = httpx.post(f"{server.url}/auth/token", data={"grant_type": "client_credentials"},
                       auth=(client_id, secret))
    assert token.status_code == 200, token.text
    assert "refresh_token" not in token.json() and token.json()["scope"] == "system/Patient.rs"
    with server.client(token=token.json()["access_token"]) as system:
        assert system.get("/Patient").status_code == 200
        refused(system.get("/Observation"), 403)
    bad = httpx.post(f"{server.url}/auth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                       "client_secret": "wrong"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"


# ---- the audit trail ------------------------------------------------------------------------------

def test_every_access_is_recorded_with_who_what_and_outcome(server: LiveServer, chart: dict[str, str]) -> None:
    pid, oid = chart["patient"], chart["observation"]
    username, password = server.add_user("clinician")
    with server.client(token=server.token_for(username, password)["access_token"]) as clinician:
        assert clinician.get(f"/Observation/{oid}").status_code == 200
        assert clinician.get("/Observation", params={"subject": f"Patient/{pid}"}).status_code == 200
        created = clinician.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                                       "code": {"text": "huyết áp"},
                                                       "subject": {"reference": f"Patient/{pid}"}}, headers=JSON)
        assert created.status_code == 201
        refused(clinician.delete(f"/Observation/{oid}"), 403)
        refused(clinician.get("/Patient/does-not-exist"), 404)
    events = audit_events(server, altid=username)
    by_subtype: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_subtype.setdefault(event["subtype"][0]["code"], []).append(event)
    read = by_subtype["read"]
    assert {e["outcome"] for e in read} == {"0", "4"}
    ok_read = next(e for e in read if e["outcome"] == "0")
    assert ok_read["action"] == "R"
    assert ok_read["agent"][0]["who"]["identifier"]["value"] == username
    assert ok_read["agent"][0]["role"][0]["text"] == "clinician"
    assert ok_read["agent"][0]["network"]["address"] == "127.0.0.1"
    refs = [e.get("what", {}).get("reference") for e in ok_read["entity"]]
    assert f"Patient/{pid}" in refs and f"Observation/{oid}" in refs
    search = by_subtype["search-type"][0]
    assert search["action"] == "E"
    query = next(e for e in search["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == f"subject=Patient%2F{pid}"
    assert by_subtype["create"][0]["action"] == "C"
    denied = by_subtype["delete"][0]
    assert denied["outcome"] == "4" and "403" in denied["outcomeDesc"]
    logins = [e for e in events if e["type"]["code"] == "110114"]
    assert logins and logins[0]["outcome"] == "0"
    # the patient's own trail: who looked at their record
    theirs = audit_events(server, patient=f"Patient/{pid}")
    assert {e["agent"][0]["altId"] for e in theirs} >= {username}


def test_transaction_entries_are_recorded_with_the_transaction(server: LiveServer, chart: dict[str, str]) -> None:
    pid = chart["patient"]
    username, password = server.add_user("clinician")
    entry = {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "spo2"},
                          "subject": {"reference": f"Patient/{pid}"}}, "request": {"method": "POST",
                                                                                    "url": "Observation"}}
    failing = {"resource": {"resourceType": "Observation", "status": "nonsense", "code": {"text": "x"}},
               "request": {"method": "POST", "url": "Observation"}}
    with server.client(token=server.token_for(username, password)["access_token"]) as clinician:
        ok = clinician.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry, entry]},
                            headers=JSON)
        assert ok.status_code == 200
        bad = clinician.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry, failing]},
                             headers=JSON)
        assert bad.status_code == 400
    events = audit_events(server, altid=username)
    transactions = [e for e in events if e["subtype"][0]["code"] == "transaction"]
    assert sorted(e["outcome"] for e in transactions) == ["0", "4"]
    creates = [e for e in events if e["subtype"][0]["code"] == "create"]
    assert sorted(e["outcome"] for e in creates) == ["0", "0", "4", "4"]  # the failed one's first entry: not done
    assert any("did not commit" in e.get("outcomeDesc", "") for e in creates)


def test_the_audit_trail_cannot_be_changed_or_deleted(server: LiveServer) -> None:
    [event] = audit_events(server, _count="1")
    with server.client() as admin:  # even an it-admin
        assert admin.get(f"/AuditEvent/{event['id']}").status_code == 200
        for answer in (admin.put(f"/AuditEvent/{event['id']}", json=event, headers=JSON),
                       admin.patch(f"/AuditEvent/{event['id']}", content='[{"op": "remove", "path": "/agent"}]',
                                   headers={"Content-Type": "application/json-patch+json"}),
                       admin.delete(f"/AuditEvent/{event['id']}"),
                       admin.post("/AuditEvent", json=event, headers=JSON),
                       admin.delete("/AuditEvent", params={"_id": event["id"]})):
            assert answer.status_code == 405, answer.text
        assert admin.get(f"/AuditEvent/{event['id']}").json()["agent"] == event["agent"]


def test_an_export_is_its_requesters_alone(server: LiveServer, chart: dict[str, str]) -> None:
    pid = chart["patient"]
    async_json = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
    first, other = (server.client(token=server.token_for(*server.add_user("it-admin"))["access_token"])
                    for _ in range(2))
    with first, other:
        kick = first.get("/Patient/$export", params={"_type": "Patient"}, headers=async_json)
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["Content-Location"]
        deadline = time.monotonic() + 60
        while (status := first.get(status_url)).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        manifest = status.json()
        assert manifest["requiresAccessToken"] is True
        url = manifest["output"][0]["url"]
        assert pid in first.get(url).text
        assert other.get(status_url).status_code == 404  # another admin's job is not theirs to see
        assert other.get(url).status_code == 404
        assert other.delete(status_url).status_code == 404
        with server.client(role=None) as anonymous:
            assert anonymous.get(url).status_code == 401
        with server.client("clinician") as clinician:
            assert "bulk exports" in refused(clinician.get("/Patient/$export", headers=async_json), 403)


def test_a_rotated_signing_key_signs_out_nobody(server: LiveServer) -> None:
    with server.client() as before:
        assert before.get("/Patient").status_code == 200

        async def rotate() -> str:
            async with open_services(server.settings) as services:  # as `emr keys rotate` does
                return await services.security.tokens.rotate_key()

        kid = asyncio.run(rotate())
        with LiveServer(server.settings.model_copy()) as fresh:  # another API process of the same site
            token = fresh.sign_in("clerk")
            header = token.split(".")[0]
            assert kid in base64.urlsafe_b64decode(header + "==").decode()  # signed with the new key
            with server.client(token=token) as clerk:
                assert clerk.get("/Patient").status_code == 200  # the first process learns the new key
            with fresh.client(token=before.headers["Authorization"].split()[1]) as old:
                assert old.get("/Patient").status_code == 200  # and tokens of the old key keep working
        assert before.get("/Patient").status_code == 200
