"""`emr users` and `emr clients`, run as IT staff run them: a child process on the embedded database.

One database and one real server for the module (argon2 costs ~0.1 s a hash, a
command ~1 s): every test makes accounts of its own, with names of its own, so
none depends on another. What a command did is checked where it matters: by
signing in (and being refused) through the running server's token endpoint.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from security import ROLES
from tests.conftest import LiveServer, make_settings

REPO = Path(__file__).resolve().parents[1]
DATE = re.compile(r"\b\d\d/\d\d/\d{4} \d\d:\d\d\b")


@dataclass
class Site:
    live: LiveServer
    env: dict[str, str]

    def emr(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`emr ARGS` in a child process on the module's database; `stdin` is what is piped in."""
        return subprocess.run([sys.executable, "-m", "emr.cli", *args], env=env or self.env, input=stdin,
                              capture_output=True, text=True, timeout=120, cwd=REPO, check=False)

    def ok(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        done = self.emr(*args, stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def refused(self, *args: str, stdin: str = "") -> str:
        """The command fails with exit code 1 and a message on standard error (no traceback); the message."""
        done = self.emr(*args, stdin=stdin)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return done.stderr

    def users(self) -> dict[str, dict[str, Any]]:
        return {u["username"]: u for u in json.loads(self.ok("users", "list", "--json").stdout)}

    def sign_in(self, username: str, password: str) -> httpx.Response:
        return httpx.post(f"{self.live.url}/auth/token", timeout=60,
                          data={"grant_type": "password", "username": username, "password": password})

    def client_sign_in(self, client_id: str, secret: str) -> httpx.Response:
        return httpx.post(f"{self.live.url}/auth/token", data={"grant_type": "client_credentials"},
                          auth=(client_id, secret), timeout=60)

    def fhir(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=f"{self.live.url}/fhir", timeout=60, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def site(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    database = f"test_accounts_{uuid.uuid4().hex[:12]}"
    with LiveServer(make_settings(mongo_uri, database=database)) as live:
        env = {**os.environ, "EMR_MONGODB_URI": mongo_uri, "EMR_DATABASE": database, "PYTHONPATH": str(REPO),
               "EMR_SECRET_KEY": str(live.settings.secret_key),
               "EMR_DATA_DIR": str(tmp_path_factory.mktemp("emr-data")), "COLUMNS": "200"}
        yield Site(live, env)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def password() -> str:
    return secrets.token_urlsafe(16)


def refused_within_a_second(client: httpx.Client, path: str = "/Patient") -> httpx.Response:
    """The first 401 for `path`, polled for a second (servers reload the revocations twice a second)."""
    deadline = time.monotonic() + 1.0
    while True:
        answer = client.get(path)
        if answer.status_code == 401 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


# ---- emr users add -----------------------------------------------------------------------------------------

def test_a_user_added_with_the_password_on_stdin_signs_in_with_it(site: Site) -> None:
    username, secret = name("nurse"), password()
    done = site.ok("users", "add", username, "--role", "nurse", stdin=secret + "\n")
    assert username in done.stdout and "nurse" in done.stdout and "/auth/token" in done.stdout
    assert secret not in done.stdout + done.stderr

    pair = site.live.token_for(username, secret)
    assert set(pair["scope"].split()) == {str(s) for s in ROLES["nurse"].scopes}
    with site.fhir(pair["access_token"]) as nurse:
        assert nurse.get("/Patient").status_code == 200
        assert nurse.get("/AuditEvent").status_code == 403  # the role's scopes, nothing more

    other, other_secret = name("an.clerk"), password()
    created = json.loads(site.ok("users", "add", other.upper(), "--role", "clerk", "--json",
                                 stdin=other_secret).stdout)  # no newline at the end: still the password
    assert created["username"] == other and created["role"] == "clerk" and created["disabled"] is False
    assert set(created) == {"username", "role", "disabled", "created"}
    assert site.live.token_for(other, other_secret)["scope"]


def test_a_weak_password_is_refused_with_the_reason_and_nothing_is_created(site: Site) -> None:
    username = name("weak")
    for weak, reason in (("short1", "too short"), (f"{username}-2025", "contains the user name")):
        message = site.refused("users", "add", username, "--role", "clinician", stdin=weak + "\n")
        assert reason in message and weak not in message
    assert "no password on standard input" in site.refused("users", "add", username, "--role", "clinician", stdin="")
    assert username not in site.users()
    assert site.sign_in(username, "short1").status_code == 400


def test_a_taken_name_a_bad_name_and_an_unknown_role_are_refused(site: Site) -> None:
    username, first = name("doctor"), password()
    site.ok("users", "add", username, "--role", "clinician", stdin=first + "\n")
    assert f"already a user '{username}'" in site.refused("users", "add", username, "--role", "nurse",
                                                          stdin=password() + "\n")
    assert site.live.token_for(username, first)["scope"] == "user/*.crus"  # the first account, unchanged

    assert "not a usable user name" in site.refused("users", "add", "Nguyễn Văn An", "--role", "nurse",
                                                    stdin=password() + "\n")
    message = site.refused("users", "add", name("x"), "--role", "surgeon", stdin=password() + "\n")
    assert "no role 'surgeon'" in message and all(r in message for r in ROLES)


# ---- emr users list, disable, enable, reset-password --------------------------------------------------------

def test_list_shows_each_user_in_a_table_and_as_json(site: Site) -> None:
    nurse, auditor = name("list-nurse"), name("list-auditor")
    site.ok("users", "add", nurse, "--role", "nurse", stdin=password() + "\n")
    site.ok("users", "add", auditor, "--role", "auditor", stdin=password() + "\n")
    site.ok("users", "disable", auditor)

    table = site.ok("users", "list").stdout
    rows = {line.split()[1]: line for line in table.splitlines() if nurse in line or auditor in line}
    assert set(rows) == {nurse, auditor}
    assert "nurse" in rows[nurse] and " enabled " in rows[nurse] and DATE.search(rows[nurse])
    assert "auditor" in rows[auditor] and "disabled" in rows[auditor]

    listed = site.users()
    assert listed[nurse]["role"] == "nurse" and listed[nurse]["disabled"] is False
    assert listed[auditor]["disabled"] is True
    assert all(set(u) == {"username", "role", "disabled", "created"} for u in listed.values())
    assert list(listed) == sorted(listed)


def test_disable_ends_the_users_sign_ins_at_once_and_enable_lets_them_back(site: Site) -> None:
    username, secret = name("leaver"), password()
    site.ok("users", "add", username, "--role", "clinician", stdin=secret + "\n")
    pair = site.live.token_for(username, secret)
    with site.fhir(pair["access_token"]) as clinician:
        assert clinician.get("/Patient").status_code == 200
        done = site.ok("users", "disable", username)
        assert "disabled" in done.stdout
        assert refused_within_a_second(clinician).status_code == 401
    assert site.sign_in(username, secret).status_code == 400
    assert httpx.post(f"{site.live.url}/auth/token", data={"grant_type": "refresh_token",
                                                           "refresh_token": pair["refresh_token"]}).status_code == 400

    enabled = json.loads(site.ok("users", "enable", username, "--json").stdout)
    assert enabled["username"] == username and enabled["disabled"] is False
    assert site.sign_in(username, secret).status_code == 200
    assert "no user" in site.refused("users", "disable", name("nobody"))


def test_reset_password_ends_the_old_password_and_its_sign_ins(site: Site) -> None:
    username, old, new = name("forgetful"), password(), password()
    site.ok("users", "add", username, "--role", "nurse", stdin=old + "\n")
    pair = site.live.token_for(username, old)
    assert "too short" in site.refused("users", "reset-password", username, stdin="tiny\n")
    assert site.sign_in(username, old).status_code == 200  # a refused reset changes nothing

    with site.fhir(pair["access_token"]) as nurse:
        assert nurse.get("/Patient").status_code == 200
        done = site.ok("users", "reset-password", username, stdin=new + "\n")
        assert old not in done.stdout and new not in done.stdout + done.stderr
        assert refused_within_a_second(nurse).status_code == 401
    assert site.sign_in(username, old).status_code == 400
    assert site.sign_in(username, new).status_code == 200
    assert "no user" in site.refused("users", "reset-password", name("nobody"), stdin=password() + "\n")


# ---- emr users roles ----------------------------------------------------------------------------------------

def test_roles_names_every_role_and_its_scopes_without_a_database(site: Site, tmp_path: Path) -> None:
    no_database = {**site.env, "EMR_MONGODB_URI": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200",
                   "EMR_DATA_DIR": str(tmp_path / "no-data")}
    done = site.emr("users", "roles", env=no_database)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for r in ROLES.values():
        assert f"{r.name}: {r.title}" in text and " ".join(r.does.split()) in text
        assert all(str(s) in text for s in r.scopes)
    assert "c create, r read, u update, d delete, s search" in text and "AuditEvent" in text

    listed = json.loads(site.emr("users", "roles", "--json", env=no_database).stdout)
    assert [r["name"] for r in listed] == list(ROLES)
    for r in listed:
        assert r["title"] == ROLES[r["name"]].title and r["does"] == ROLES[r["name"]].does
        assert r["scopes"] == [str(s) for s in ROLES[r["name"]].scopes]
    assert not (tmp_path / "no-data").exists()


# ---- emr clients --------------------------------------------------------------------------------------------

def test_a_client_added_signs_in_with_its_credentials_until_disabled(site: Site) -> None:
    done = site.ok("clients", "add", "Sync worker", "--scope", "system/Patient.rs system/Task.cru", "--json")
    credentials = json.loads(done.stdout)
    assert set(credentials) == {"client_id", "client_secret"}
    assert "not shown again" in done.stderr
    client_id, secret = credentials["client_id"], credentials["client_secret"]

    answer = site.client_sign_in(client_id, secret)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "system/Patient.rs system/Task.cru" and "refresh_token" not in answer.json()
    assert site.client_sign_in(client_id, secret + "x").status_code == 401

    listed = {c["client_id"]: c for c in json.loads(site.ok("clients", "list", "--json").stdout)}
    assert listed[client_id]["name"] == "Sync worker" and listed[client_id]["disabled"] is False
    table = site.ok("clients", "list").stdout
    assert client_id in table and "Sync worker" in table and DATE.search(table)
    assert secret not in table and secret not in json.dumps(listed)

    with site.fhir(answer.json()["access_token"]) as worker:
        assert worker.get("/Patient").status_code == 200
        assert "disabled" in site.ok("clients", "disable", client_id).stdout
        assert refused_within_a_second(worker).status_code == 401
    assert site.client_sign_in(client_id, secret).status_code == 401
    assert "no client" in site.refused("clients", "disable", "no-such-client")


def test_a_client_added_without_json_shows_its_secret_once_with_a_warning(site: Site) -> None:
    done = site.ok("clients", "add", "BV Đa khoa Châu Đốc", "--scope", "system/Patient.rs")
    client_id = re.search(r"client_id:\s+(\S+)", done.stdout)
    secret = re.search(r"client_secret:\s+(\S+)", done.stdout)
    assert client_id and secret and "not shown again" in done.stdout and "client_credentials" in done.stdout
    assert site.client_sign_in(client_id[1], secret[1]).status_code == 200


def test_a_bad_scope_is_refused_and_no_client_is_made(site: Site) -> None:
    ward_app = name("Ward app")
    assert "system scopes" in site.refused("clients", "add", ward_app, "--scope", "system/Patient.rs user/Patient.rs")
    assert "letters of 'cruds'" in site.refused("clients", "add", ward_app, "--scope", "system/Patient.rx")
    assert "granular" in site.refused("clients", "add", ward_app, "--scope", "system/Observation.rs?category=x")
    assert ward_app not in {c["name"] for c in json.loads(site.ok("clients", "list", "--json").stdout)}
