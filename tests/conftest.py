"""Test fixtures: a real MongoDB-wire server (embedded SecantusDB) and a real HTTP server.

Nothing is mocked: the store talks to the database over a socket, and API tests
send HTTP to uvicorn serving the application on a loopback port. Every API test runs
signed in: `LiveServer.client()` is an it-admin's by default (a real user, created in the
server's database, signed in through the token endpoint); `client(role=...)` signs in
with another role, `client(role=None)` sends no token.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from emr.app import create_app
from emr.embedded_db import ensure_embedded
from emr.settings import Settings
from fhir_store import Interceptor, WriteCheck
from security import Accounts

T = TypeVar("T")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ensure_embedded(tmp_path_factory.mktemp("embedded-db"))
    yield server.uri
    server.close()


class LiveServer:
    """uvicorn serving the app in a background thread, on a free loopback port."""

    def __init__(self, settings: Settings, *, interceptors: Sequence[Interceptor] = (),
                 write_checks: Sequence[WriteCheck] = ()) -> None:
        self.settings = settings
        self.app = create_app(settings, interceptors=interceptors, write_checks=write_checks)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self._tokens: dict[str, str] = {}

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def add_user(self, role: str, username: str | None = None, password: str | None = None) -> tuple[str, str]:
        """A user of this server's database (name and password), made as `emr users add` makes one."""
        username = username or f"{role}-{uuid.uuid4().hex[:8]}"
        password = password or secrets.token_urlsafe(16)

        async def add() -> None:
            from pymongo import AsyncMongoClient

            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.settings.mongodb_uri, tz_aware=True)
            try:
                await Accounts(client[self.settings.database]).add_user(username, role, password)
            finally:
                await client.close()

        run_async(add)
        return username, password

    def token_for(self, username: str, password: str, scope: str | None = None) -> dict[str, Any]:
        form = {"grant_type": "password", "username": username, "password": password}
        if scope:
            form["scope"] = scope
        answer = httpx.post(f"{self.url}/auth/token", data=form, timeout=60)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def sign_in(self, role: str = "it-admin") -> str:
        """An access token of a (new, cached) user with `role`."""
        if role not in self._tokens:
            self._tokens[role] = self.token_for(*self.add_user(role))["access_token"]
        return self._tokens[role]

    def client(self, role: str | None = "it-admin", *, token: str | None = None) -> httpx.Client:
        token = token or (self.sign_in(role) if role else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/fhir", timeout=60, headers=headers)


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to the end from sync code, even under a running event loop (async tests)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def make_settings(mongo_uri: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"mongodb_uri": mongo_uri, "database": f"test_{uuid.uuid4().hex[:12]}",
                                 "secret_key": "test-secret-not-for-production",
                                 "data_dir": Path(tempfile.mkdtemp(prefix="emr-test-")),
                                 "access_token_lifetime": timedelta(hours=3)}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def live_server(mongo_uri: str) -> Iterator[LiveServer]:
    """One server and database for the session; tests isolate themselves by their own ids."""
    with LiveServer(make_settings(mongo_uri, max_body_bytes=1_000_000)) as server:
        yield server


@pytest.fixture
def fhir(live_server: LiveServer) -> Iterator[httpx.Client]:
    with live_server.client() as client:
        yield client


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def module_server(mongo_uri: str) -> Iterator[LiveServer]:
    """A server with a database of its own, for tests whose expected answers depend on all the data."""
    with LiveServer(make_settings(mongo_uri)) as server:
        yield server


@pytest.fixture(scope="module")
def own_fhir(module_server: LiveServer) -> Iterator[httpx.Client]:
    with module_server.client() as client:
        yield client
