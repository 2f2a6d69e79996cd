"""CRUD benchmark: the FHIR API over HTTP against its floor, the bare PyMongo driver.

Why: the API's cost per resource (HTTP, FastAPI, validation, indexing, the async
driver) only means something next to what the same database does for the same
documents without it. So one run measures both, on the same machine, against the
same embedded SecantusDB server, with the same Synthea resources:

- API: client (this process) -> uvicorn + FastAPI (a child process) -> SecantusDB
  (another child process). Create = POST /fhir/{type}; read = GET /fhir/{type}/{id}.
- Driver: client (this process, sync `pymongo.MongoClient`) -> SecantusDB, with
  store-shaped documents (`_id` "Type/id", type, id, vid, ts, oid, op, deleted, res)
  and the store's secondary indexes on `resources`.

Creates are timed with 1 client and with `--concurrency` clients (threads, one
keep-alive connection each); reads are timed one at a time, in random order.
Figures are medians over `--repeat` runs.

    .venv/bin/python bench/crud.py [--n N] [--concurrency C] [--reads R] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient
from pymongo.collection import Collection

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emr.embedded_db import ensure_embedded  # noqa: E402

DATA = Path("/work/shared/data/synthea/smart-on-fhir")
HOST = "127.0.0.1"
API_DB = "bench_api"
DRIVER_DB = "bench_driver"
FHIR_JSON = "application/fhir+json"
START_TIMEOUT_S = 60.0
ERROR_SAMPLES = 3

Doc = dict[str, Any]


# ---- input ------------------------------------------------------------------------------------

def load_resources(directory: Path, n: int | None) -> list[Doc]:
    """Every resource of the Synthea transaction bundles, ids dropped (the server assigns them)."""
    found: list[Doc] = []
    for path in sorted(directory.glob("*.json")):
        bundle = json.loads(path.read_text())
        for entry in bundle.get("entry", []):
            resource = dict(entry["resource"])
            resource.pop("id", None)
            found.append(resource)
    if not found:
        raise SystemExit(f"No resources found in {directory}")
    if n is None:
        return found
    return list(itertools.islice(itertools.cycle(found), n))


# ---- measurements -----------------------------------------------------------------------------

@dataclass
class Throughput:
    """A batch of writes: how many, how many failed, and how long the whole batch took."""

    count: int
    errors: int
    seconds: float

    @property
    def per_second(self) -> float:
        return (self.count - self.errors) / self.seconds if self.seconds else 0.0


@dataclass
class Latency:
    """Per-operation latencies of a sequential run, in milliseconds."""

    samples_ms: list[float]
    errors: int

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[94]


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

    def extend(self, other: Errors) -> None:
        with self.lock:
            self.count += other.count
            self.samples.extend(other.samples[:ERROR_SAMPLES - len(self.samples)])


def run_parallel(work: Sequence[Any], clients: int, make_worker: Callable[[], Callable[[Any], None]],
                 ) -> float:
    """Run `work` with `clients` threads pulling from one shared iterator; wall-clock seconds.

    Each thread builds its own worker (its own connection) before the clock starts.
    """
    items: Iterator[Any] = iter(work)
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def loop() -> None:
        worker = make_worker()
        ready.wait()
        try:
            while True:
                with lock:
                    item = next(items, None)
                if item is None:
                    return
                worker(item)
        except BaseException as exc:  # surfaced after join: a crashed client must not go unnoticed
            failures.append(exc)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return elapsed


# ---- the API over HTTP ------------------------------------------------------------------------

class HttpClient:
    """One keep-alive HTTP/1.1 connection (http.client: far cheaper per request than httpx)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str | None, bytes]:
        headers = {"Accept": FHIR_JSON}
        if body is not None:
            headers["Content-Type"] = FHIR_JSON
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()  # read it all, or the connection cannot be reused
        return response.status, response.getheader("Location"), data

    def close(self) -> None:
        self.conn.close()


@dataclass
class ApiTarget:
    """The API under test; collects the keys ("Type/id") of what it created, for the reads."""

    port: int
    created: list[str] = field(default_factory=list)
    errors: Errors = field(default_factory=Errors)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def creator(self) -> Callable[[tuple[str, bytes]], None]:
        client = HttpClient(self.port)

        def create(item: tuple[str, bytes]) -> None:
            rtype, body = item
            status, location, data = client.request("POST", f"/fhir/{rtype}", body)
            if status != 201 or not location:
                self.errors.add(f"POST /fhir/{rtype} -> {status}: {data.decode(errors='replace')}")
                return
            # Location: {base}/fhir/{type}/{id}/_history/{vid}
            parts = location.rsplit("/", 4)
            with self._lock:
                self.created.append(f"{parts[1]}/{parts[2]}")

        return create

    def read_latency(self, keys: Sequence[str]) -> Latency:
        client = HttpClient(self.port)
        samples: list[float] = []
        errors = Errors()
        try:
            for key in keys:
                start = time.perf_counter_ns()
                status, _, data = client.request("GET", f"/fhir/{key}")
                elapsed = time.perf_counter_ns() - start
                if status == 200:
                    samples.append(elapsed / 1e6)
                else:
                    errors.add(f"GET /fhir/{key} -> {status}: {data.decode(errors='replace')}")
        finally:
            client.close()
        self.errors.extend(errors)
        return Latency(samples, errors.count)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_api(mongodb_uri: str, port: int) -> subprocess.Popen[bytes]:
    """uvicorn + the real app in its own process (one worker, access log off), on loopback."""
    code = (
        "import uvicorn\n"
        "from emr.app import create_app\n"
        "from emr.settings import Settings\n"
        f"app = create_app(Settings(mongodb_uri={mongodb_uri!r}, database={API_DB!r}))\n"
        f"uvicorn.run(app, host={HOST!r}, port={port}, log_level='warning', access_log=False)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


def wait_for_api(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"The API process exited with code {process.returncode} before answering")
        client = HttpClient(port)
        try:
            status, _, _ = client.request("GET", "/fhir/metadata")
            if status == 200:
                return
        except OSError:
            pass
        finally:
            client.close()
        time.sleep(0.1)
    raise SystemExit(f"The API did not answer GET /fhir/metadata within {START_TIMEOUT_S:.0f}s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- the bare driver --------------------------------------------------------------------------

def store_document(resource: Doc) -> Doc:
    """A document shaped like `fhir_store.store._document` for a first version (without `ix`)."""
    now = datetime.now(UTC)
    ts = now.replace(microsecond=now.microsecond // 1000 * 1000)
    rtype = resource["resourceType"]
    rid = str(uuid.uuid4())
    meta = {**(resource.get("meta") or {}), "versionId": "1",
            "lastUpdated": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"}
    res = {"resourceType": rtype, "id": rid, "meta": meta}
    res.update((k, v) for k, v in resource.items() if k not in res)
    return {"_id": f"{rtype}/{rid}", "type": rtype, "id": rid, "vid": 1, "ts": ts, "oid": ObjectId(),
            "op": "create", "deleted": False, "res": res}


@dataclass
class DriverTarget:
    """The floor: the same work straight through sync PyMongo."""

    collection: Collection[Doc]
    created: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def prepare(self) -> None:
        """Same secondary indexes as `FhirStore.ensure_indexes` puts on `resources`: inserts maintain them too."""
        self.collection.create_indexes([
            IndexModel([("type", ASCENDING), ("ts", DESCENDING), ("oid", DESCENDING)], name="type_history"),
            IndexModel([("ts", DESCENDING), ("oid", DESCENDING)], name="system_history"),
            IndexModel([("type", ASCENDING), ("ix.identifier", ASCENDING)], name="identifier"),
        ])

    def inserter(self) -> Callable[[Doc], None]:
        def insert(resource: Doc) -> None:
            doc = store_document(resource)
            self.collection.insert_one(doc)
            with self._lock:
                self.created.append(doc["_id"])

        return insert

    def find_latency(self, keys: Sequence[str]) -> Latency:
        samples: list[float] = []
        errors = 0
        for key in keys:
            start = time.perf_counter_ns()
            doc = self.collection.find_one({"_id": key})
            elapsed = time.perf_counter_ns() - start
            if doc is None:
                errors += 1
            else:
                samples.append(elapsed / 1e6)
        return Latency(samples, errors)


# ---- one run ----------------------------------------------------------------------------------

@dataclass
class RunResult:
    api_create_seq: float
    api_create_conc: float
    api_read_p50: float
    api_read_p95: float
    driver_insert_seq: float
    driver_insert_conc: float
    driver_find_p50: float
    driver_find_p95: float
    api_errors: int
    driver_errors: int


def sample_keys(keys: list[str], count: int, rng: random.Random) -> list[str]:
    return rng.sample(keys, count) if count <= len(keys) else rng.choices(keys, k=count)


def warm_up(port: int, collection: Collection[Doc], resources: list[Doc], bodies: list[tuple[str, bytes]],
            ) -> Errors:
    """One create and read per resource type, so first-use costs (model build, pools) stay out of the figures."""
    seen: dict[str, int] = {}
    for i, resource in enumerate(resources):
        seen.setdefault(resource["resourceType"], i)
    picks = list(seen.values())
    api = ApiTarget(port)
    create = api.creator()
    for i in picks:
        create(bodies[i])
    api.read_latency(api.created)
    driver = DriverTarget(collection)
    insert = driver.inserter()
    for i in picks:
        insert(resources[i])
    driver.find_latency(driver.created)
    return api.errors


def run_once(port: int, collection: Collection[Doc], resources: list[Doc], bodies: list[tuple[str, bytes]],
             concurrency: int, reads: int, rng: random.Random, log: Callable[[str], None]) -> RunResult:
    api = ApiTarget(port)
    driver = DriverTarget(collection)
    n = len(resources)

    log(f"  API create, 1 client, {n} resources")
    seq_s = run_parallel(bodies, 1, api.creator)
    seq_errors = api.errors.count
    log(f"  API create, {concurrency} clients, {n} resources")
    conc_s = run_parallel(bodies, concurrency, api.creator)
    conc_errors = api.errors.count - seq_errors
    log(f"  API read, {reads} random GETs")
    api_reads = api.read_latency(sample_keys(api.created, reads, rng)) if api.created else Latency([0.0], reads)

    log(f"  driver insert_one, 1 thread, {n} documents")
    dseq_s = run_parallel(resources, 1, driver.inserter)
    log(f"  driver insert_one, {concurrency} threads, {n} documents")
    dconc_s = run_parallel(resources, concurrency, driver.inserter)
    log(f"  driver find_one, {reads} random _ids")
    driver_reads = driver.find_latency(sample_keys(driver.created, reads, rng))

    for sample in api.errors.samples:
        log(f"  ! {sample}")
    return RunResult(
        api_create_seq=Throughput(n, seq_errors, seq_s).per_second,
        api_create_conc=Throughput(n, conc_errors, conc_s).per_second,
        api_read_p50=api_reads.p50, api_read_p95=api_reads.p95,
        driver_insert_seq=Throughput(n, 0, dseq_s).per_second,
        driver_insert_conc=Throughput(n, 0, dconc_s).per_second,
        driver_find_p50=driver_reads.p50, driver_find_p95=driver_reads.p95,
        api_errors=api.errors.count, driver_errors=driver_reads.errors,
    )


# ---- report -----------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
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


def summarise(runs: list[RunResult]) -> dict[str, float]:
    median = {k: statistics.median(float(getattr(r, k)) for r in runs) for k in asdict(runs[0])}
    median["ratio_create_seq"] = median["api_create_seq"] / median["driver_insert_seq"]
    median["ratio_create_conc"] = median["api_create_conc"] / median["driver_insert_conc"]
    median["ratio_read_p50"] = median["api_read_p50"] / median["driver_find_p50"]
    median["ratio_read_p95"] = median["api_read_p95"] / median["driver_find_p95"]
    return median


def print_table(command: str, env: dict[str, Any], args: argparse.Namespace, n: int, m: dict[str, float],
                elapsed: float) -> None:
    c = args.concurrency
    print(f"\ncommand: {command}")
    print(f"machine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}; commit {env['commit']}")
    print(f"versions: pymongo {env['pymongo']}, SecantusDB {env['SecantusDB']}, uvicorn {env['uvicorn']}, "
          f"fastapi {env['fastapi']}, fhir.resources {env['fhir.resources']}")
    print(f"work: {n} Synthea resources per create batch, {args.reads} reads, "
          f"median of {args.repeat} run(s), {elapsed:.0f}s in all\n")
    rows = [
        ("create, 1 client (resources/s)", m["api_create_seq"], m["driver_insert_seq"], m["ratio_create_seq"]),
        (f"create, {c} clients (resources/s)", m["api_create_conc"], m["driver_insert_conc"], m["ratio_create_conc"]),
        ("read by id p50 (ms)", m["api_read_p50"], m["driver_find_p50"], m["ratio_read_p50"]),
        ("read by id p95 (ms)", m["api_read_p95"], m["driver_find_p95"], m["ratio_read_p95"]),
    ]
    print(f"{'':36}{'API (HTTP)':>12}{'driver':>12}{'API/driver':>12}")
    for label, api, drv, ratio in rows:
        fmt = ".0f" if "/s" in label else ".2f"
        print(f"{label:36}{api:>12{fmt}}{drv:>12{fmt}}{ratio:>12.2f}")
    print(f"\nerrors: API {m['api_errors']:.0f}, driver {m['driver_errors']:.0f} (median per run)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=None, help="resources per create batch (cycled); default: all")
    parser.add_argument("--concurrency", type=int, default=8, help="clients for the concurrent create runs")
    parser.add_argument("--reads", type=int, default=2000, help="sequential reads by id per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the figures are their medians")
    parser.add_argument("--seed", type=int, default=1, help="seed of the read order")
    parser.add_argument("--data", type=Path, default=DATA, help="directory of Synthea Bundle JSON files")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.reads < 2 or args.repeat < 1 or (args.n is not None and args.n < 1):
        parser.error("--concurrency, --repeat, --n must be >= 1 and --reads >= 2")

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["crud.py", *argv])

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    resources = load_resources(args.data, args.n)
    bodies = [(r["resourceType"], orjson.dumps(r)) for r in resources]  # encoded before the clock starts
    rng = random.Random(args.seed)
    began = time.perf_counter()
    runs: list[RunResult] = []

    with tempfile.TemporaryDirectory(prefix="emr-bench-") as tmp:
        log(f"starting the embedded database in {tmp}")
        server = ensure_embedded(Path(tmp))
        api_process: subprocess.Popen[bytes] | None = None
        client: MongoClient[Doc] | None = None
        try:
            port = free_port()
            log(f"starting the API on http://{HOST}:{port}/fhir")
            api_process = start_api(server.uri, port)
            wait_for_api(api_process, port)
            client = MongoClient(server.uri, tz_aware=True, maxPoolSize=max(100, args.concurrency))
            collection = client[DRIVER_DB]["resources"]
            DriverTarget(collection).prepare()
            log("warming up")
            for sample in warm_up(port, collection, resources, bodies).samples:
                log(f"  ! {sample}")
            for i in range(args.repeat):
                log(f"run {i + 1}/{args.repeat}")
                runs.append(run_once(port, collection, resources, bodies, args.concurrency, args.reads, rng, log))
        finally:
            if client is not None:
                client.close()
            if api_process is not None:
                stop_process(api_process)
            server.close()

    elapsed = time.perf_counter() - began
    env = environment()
    medians = summarise(runs)
    if args.json:
        print(json.dumps({"command": command, "environment": env, "resources": len(resources),
                          "concurrency": args.concurrency, "reads": args.reads, "repeat": args.repeat,
                          "seconds": round(elapsed, 1), "median": medians,
                          "runs": [asdict(r) for r in runs]}, indent=2))
    else:
        print_table(command, env, args, len(resources), medians, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
