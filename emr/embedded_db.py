"""The embedded MongoDB-wire server (SecantusDB) used when `EMR_MONGODB_URI` is unset.

It runs in a child process so that the database and the API do not share one
GIL. The first `emr` process to need it starts it and writes its address to
`<data dir>/mongodb.json`; every later `emr` process (import, backup, ...)
finds that file and connects to the running server instead of opening the
WiredTiger files a second time, which WiredTiger's lock would refuse. The child
exits when its parent does (its stdin closes), so no server is left orphaned.

Only this module knows SecantusDB; the rest of the code speaks the standard
MongoDB API and runs unchanged against a real MongoDB replica set.

If the child dies while its owner runs (killed, crashed), the owner starts it
again at the same address on the same files (`supervise`): the driver in every
connected process reconnects by itself, and service resumes without anyone
restarting the API.

The address it publishes turns retryable writes off (`retryWrites=false`):
SecantusDB 0.7 keeps a record of every retryable write for 30 minutes and scans
them all on each write, so past ~10,000 writes each insert cost grows from under
1 ms to ~16 ms (measured with bench/crud.py and py-spy). Every client that
connects through this address gets the setting; production MongoDB keeps the
driver's default.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pymongo import MongoClient
from pymongo.errors import PyMongoError

ADDRESS_FILE = "mongodb.json"
_START_TIMEOUT_S = 60.0
log = logging.getLogger("emr.database")


@dataclass
class EmbeddedServer:
    """A handle on the embedded server: its URI, and the child process if we own it."""

    uri: str
    data_dir: Path
    process: subprocess.Popen[str] | None = field(default=None, repr=False)
    _closing: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def owned(self) -> bool:
        return self.process is not None

    def supervise(self) -> None:
        """Restart the child at the same address whenever it exits before `close` (see the module's docstring)."""
        if self.process is not None:
            threading.Thread(target=self._watch, name="embedded-db-supervisor", daemon=True).start()

    def _watch(self) -> None:
        while not self._closing.is_set():
            process = self.process
            if process is None:
                return
            code = process.wait()
            if self._closing.is_set():
                return
            log.error("the embedded database (process %d, data in %s) stopped with exit code %s; starting it again "
                      "at %s", process.pid, self.data_dir / "db", code, self.uri)
            try:
                restarted = _start(self.data_dir, urlsplit(self.uri).port or 0)
            except (RuntimeError, OSError) as exc:
                log.error("the embedded database could not be started again (%s): stop emr serve and start it; "
                          "requests answer 503 meanwhile", exc)
                return
            if self._closing.is_set():  # closed while restarting: do not leave the new child behind
                restarted.close()
                return
            self.process = restarted.process
            log.info("the embedded database is back (process %d)", self.process.pid if self.process else 0)

    def close(self) -> None:
        self._closing.set()
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            if self.process.stdin:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        address = self.data_dir / ADDRESS_FILE
        with contextlib.suppress(OSError, ValueError):
            if json.loads(address.read_text()).get("uri") == self.uri:
                address.unlink()
        self.process = None


def ensure_embedded(data_dir: Path) -> EmbeddedServer:
    """Connect to the embedded server serving `data_dir`, starting it if none is running."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".embedded.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time
        running = _running_server(data_dir)
        if running:
            return EmbeddedServer(running, data_dir)
        return _start(data_dir)


def _running_server(data_dir: Path) -> str | None:
    try:
        info = json.loads((data_dir / ADDRESS_FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    client: MongoClient[dict[str, object]] = MongoClient(info["uri"], serverSelectionTimeoutMS=2000)
    try:
        client.admin.command("ping")
        return str(info["uri"])
    except PyMongoError:
        return None
    finally:
        client.close()


def _start(data_dir: Path, port: int = 0) -> EmbeddedServer:
    process = subprocess.Popen(
        [sys.executable, "-m", "emr.embedded_db", str(data_dir / "db"), str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    timer = threading.Timer(_START_TIMEOUT_S, process.kill)
    timer.start()
    try:
        uri = process.stdout.readline().strip()
    finally:
        timer.cancel()
    if not uri.startswith("mongodb://"):
        process.kill()
        raise RuntimeError(f"The embedded database did not start (data in {data_dir / 'db'}); see the messages above")
    tmp = data_dir / f".{ADDRESS_FILE}.tmp"
    tmp.write_text(json.dumps({"uri": uri, "pid": process.pid}))
    tmp.replace(data_dir / ADDRESS_FILE)
    return EmbeddedServer(uri, data_dir, process)


def _serve(storage_path: str, port: int) -> None:
    """Child process: serve until stdin closes (parent gone) or SIGTERM/SIGINT."""
    from secantus import SecantusDBServer

    server = SecantusDBServer(host="127.0.0.1", port=port, storage_path=storage_path, enable_test_commands=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    def wait_for_parent() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        stop.set()

    threading.Thread(target=wait_for_parent, daemon=True).start()
    print(f"{server.uri}?retryWrites=false", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
