"""Test fixtures: a real MongoDB-wire server (embedded SecantusDB) and a real HTTP server.

Nothing is mocked: the store talks to the database over a socket, and API tests
send HTTP to uvicorn serving the application on a loopback port.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import uvicorn

from emr.app import create_app
from emr.embedded_db import ensure_embedded
from emr.settings import Settings
from fhir_store import Interceptor, WriteCheck

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

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/fhir", timeout=60)


def make_settings(mongo_uri: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"mongodb_uri": mongo_uri, "database": f"test_{uuid.uuid4().hex[:12]}"}
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
