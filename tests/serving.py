"""`emr serve` as a child process, the way IT staff run it: started, signed in to, stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(data_dir: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """`emr serve` with EMR_DATA_DIR, EMR_PORT and `settings` (EMR_... names) as its only configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMR_")}
    env.update({"EMR_DATA_DIR": str(data_dir), "EMR_PORT": str(port), **settings})
    process = subprocess.Popen([sys.executable, "-m", "emr.cli", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode() if process.stderr else "serve exited")
    process.kill()
    raise RuntimeError("emr serve did not answer in time")


def sign_in(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """What the README's first steps do: make an it-admin with `emr users add`, then sign in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMR_")}
    env.update({"EMR_DATA_DIR": str(data_dir), **settings})
    password = "một câu mật khẩu dài"
    subprocess.run([sys.executable, "-m", "emr.cli", "users", "add", "admin", "--role", "it-admin"], env=env,
                   input=f"{password}\n", text=True, check=True, capture_output=True, timeout=120)
    token = httpx.post(f"http://127.0.0.1:{port}/auth/token",
                       data={"grant_type": "password", "username": "admin", "password": password})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
