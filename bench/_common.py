"""Helpers the benchmark scripts share: ports, child processes, and what the figures were measured on."""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
#: Failed operations whose answer a report shows.
ERROR_SAMPLES = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_api(process: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    """Until the API answers `GET /fhir/metadata`; exits if its process dies or it takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"The API process exited with code {process.returncode} before answering")
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            conn.request("GET", "/fhir/metadata")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise SystemExit(f"The API did not answer GET /fhir/metadata within {timeout:.0f}s")


def environment() -> dict[str, Any]:
    """Machine, versions and commit, printed beside the figures so a run can be reproduced."""
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    commit = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "commit": commit,
        **{pkg: version(pkg) for pkg in ("pymongo", "SecantusDB", "uvicorn", "fastapi", "fhir.resources")},
    }


@dataclass
class Errors:
    """Failed operations, with the first few answers kept so the report can show what went wrong."""

    count: int = 0
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str) -> None:
        with self.lock:
            self.count += 1
            if len(self.samples) < ERROR_SAMPLES:
                self.samples.append(what[:400])


def sign_in(mongodb_uri: str, database: str, port: int, role: str = "clinician") -> str | None:
    """An access token for a new user with `role` on the API under test, as a ward terminal gets one.

    None when the server has no sign-in (a commit from before it, measured for comparison).
    """
    import asyncio
    import json
    import secrets
    from urllib.parse import urlencode

    try:
        from pymongo import AsyncMongoClient

        from security import Accounts
    except ImportError:
        return None
    username, password = f"bench-{secrets.token_hex(4)}", secrets.token_urlsafe(16)

    async def add() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, tz_aware=True)
        try:
            await Accounts(client[database]).add_user(username, role, password)
        finally:
            await client.close()

    asyncio.run(add())
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", "/auth/token", body=urlencode(
            {"grant_type": "password", "username": username, "password": password}),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = conn.getresponse()
        body = answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise SystemExit(f"Sign-in for the benchmark failed: {answer.status} {body[:300]!r}")
    token: str = json.loads(body)["access_token"]
    return token
