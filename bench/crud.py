"""CRUD benchmark: the FHIR API over HTTP against its floor, the bare PyMongo driver.

Why: the API's cost per resource (HTTP, FastAPI, validation, indexing, the async
driver) only means something next to what the same database does with the same
documents without it. So one run measures both, on the same machine, against the
same embedded SecantusDB server, with the same Synthea resources:

- API: client (this process) -> uvicorn + FastAPI (a child process) -> SecantusDB
  (another child process). Create = POST /fhir/{type}; read = GET /fhir/{type}/{id}.
- Driver: client (this process, sync `pymongo.MongoClient`) -> SecantusDB,
  `insert_one` / `find_one` by `_id` of the documents the store itself would write
  for those creates (`fhir_store.documents.current_document`: _id "Type/id", type,
  id, vid, ts, oid, op, deleted, res, and the search fields ix, sk, cp; built
  before the clock starts), into a collection with the store's indexes
  (`fhir_store.indexes.RESOURCES`). `--bare-docs` leaves out ix, sk and cp.

Creates are timed with 1 client and with `--concurrency` clients (threads, one
keep-alive connection each); reads one at a time, in random order. Besides wall
time, each phase records the CPU time the client, API and database processes
spent per operation: on a shared machine that is the steadier figure.

Retryable writes are off by default (`retryWrites=false` for the API and the
driver alike): SecantusDB 0.7.0b3 keeps a record per retryable write and scans
(past 10,000: sorts) all of them on every write, so with them on the cost of a
write grows with the number of writes of the last 30 minutes, whichever database
they went to, and later phases would pay for earlier ones. `--retry-writes`
measures the default driver setting anyway.

    .venv/bin/python bench/crud.py [--n N] [--concurrency C] [--reads R] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pymongo import MongoClient
from pymongo.collection import Collection

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import Errors, environment, free_port, sign_in, stop_process, wait_for_api  # noqa: E402

from emr.embedded_db import ensure_embedded  # noqa: E402
from fhir_store import indexes  # noqa: E402
from fhir_store.documents import current_document  # noqa: E402
from fhir_store.search.indexing import indexer  # noqa: E402
from fhir_store.search.registry import load_registry  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "synthea" / "smart-on-fhir"
HOST = "127.0.0.1"
API_DB = "bench_api"
DRIVER_DB = "bench_driver"
FHIR_JSON = "application/fhir+json"
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

Doc = dict[str, Any]
Body = tuple[str, bytes]  # resource type, encoded resource


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
    return found if n is None else list(itertools.islice(itertools.cycle(found), n))


# ---- measuring --------------------------------------------------------------------------------

@dataclass
class Phase:
    """One timed batch: operations, failures, wall time, per-op latencies and per-op CPU by process."""

    ops: int
    errors: int
    seconds: float
    cpu_ms: dict[str, float]  # process ("client", "api", "db") -> CPU ms per operation
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return (self.ops - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p95(self) -> float:
        if len(self.latencies_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[94]

    def figures(self) -> dict[str, float]:
        out = {"per_second": self.per_second, "errors": float(self.errors)}
        if self.latencies_ms:
            out |= {"p50_ms": self.p50, "p95_ms": self.p95}
        return out | {f"cpu_{proc}_ms": ms for proc, ms in self.cpu_ms.items()}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc), threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU clocks of the three processes, so a phase can say who spent what."""

    pids: dict[str, int]  # name -> pid of the child processes

    def read(self) -> dict[str, float]:
        return {"client": time.process_time(), **{name: process_cpu_seconds(pid) for name, pid in self.pids.items()}}

    def per_op_ms(self, before: dict[str, float], ops: int) -> dict[str, float]:
        after = self.read()
        return {name: (after[name] - before[name]) * 1000 / max(ops, 1) for name in before}


def run_parallel(work: Sequence[Any], clients: int, make_worker: Callable[[], Callable[[Any], None]]) -> float:
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
        except BaseException as exc:  # re-raised after join: a crashed client must not go unnoticed
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

    def __init__(self, port: int, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str | None, bytes]:
        headers = {"Accept": FHIR_JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
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
    """The API under test; keeps the keys ("Type/id") of what it created, for the reads."""

    port: int
    token: str | None = None  # a clinician's access token (None: a server from before sign-in)
    created: list[str] = field(default_factory=list)
    errors: Errors = field(default_factory=Errors)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def creator(self) -> Callable[[Body], None]:
        client = HttpClient(self.port, self.token)

        def create(item: Body) -> None:
            rtype, body = item
            status, location, data = client.request("POST", f"/fhir/{rtype}", body)
            if status != 201 or not location:
                self.errors.add(f"POST /fhir/{rtype} -> {status}: {data.decode(errors='replace')}")
                return
            _, rtype_, rid, _, _ = location.rsplit("/", 4)  # {base}/{type}/{id}/_history/{vid}
            with self._lock:
                self.created.append(f"{rtype_}/{rid}")

        return create

    def read_all(self, keys: Sequence[str]) -> list[float]:
        client = HttpClient(self.port, self.token)
        samples: list[float] = []
        try:
            for key in keys:
                start = time.perf_counter_ns()
                status, _, data = client.request("GET", f"/fhir/{key}")
                elapsed = time.perf_counter_ns() - start
                if status == 200:
                    samples.append(elapsed / 1e6)
                else:
                    self.errors.add(f"GET /fhir/{key} -> {status}: {data.decode(errors='replace')}")
        finally:
            client.close()
        return samples




def start_api(mongodb_uri: str, port: int) -> subprocess.Popen[bytes]:
    """uvicorn + the real app in its own process (one worker, access log off), on loopback."""
    code = (
        "import uvicorn\n"
        "from emr.app import create_app\n"
        "from emr.settings import Settings\n"
        f"app = create_app(Settings(mongodb_uri={mongodb_uri!r}, database={API_DB!r}, secret_key='bench'))\n"
        f"uvicorn.run(app, host={HOST!r}, port={port}, log_level='warning', access_log=False)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


# ---- the bare driver --------------------------------------------------------------------------

def driver_documents(resources: Sequence[Doc], bare: bool) -> list[Doc]:
    """What the store writes for these creates (`current_document`: index values and all), fresh ids.

    Built before the clock starts, so the floor is the driver and the database only.
    `bare` keeps just the version fields (_id, type, id, vid, ts, oid, op, deleted, res).
    """
    index = indexer(load_registry())
    docs = [current_document(r["resourceType"], str(uuid.uuid4()), 1, r, "create", index) for r in resources]
    if bare:
        docs = [{k: v for k, v in doc.items() if k not in ("ix", "sk", "cp")} for doc in docs]
    return docs


@dataclass
class DriverTarget:
    """The floor: the same work straight through sync PyMongo."""

    collection: Collection[Doc]
    created: list[str] = field(default_factory=list)
    errors: Errors = field(default_factory=Errors)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def prepare(self) -> None:
        """The indexes the store puts on `resources` (`fhir_store.indexes`): every insert maintains them too."""
        self.collection.create_indexes(indexes.RESOURCES)

    def inserter(self) -> Callable[[Doc], None]:
        def insert(doc: Doc) -> None:
            self.collection.insert_one(doc)
            with self._lock:
                self.created.append(doc["_id"])

        return insert

    def read_all(self, keys: Sequence[str]) -> list[float]:
        samples: list[float] = []
        for key in keys:
            start = time.perf_counter_ns()
            doc = self.collection.find_one({"_id": key})
            elapsed = time.perf_counter_ns() - start
            if doc is None:
                self.errors.add(f"find_one({key!r}) found nothing")
            else:
                samples.append(elapsed / 1e6)
        return samples


# ---- one run ----------------------------------------------------------------------------------

PHASES = ("api_create_seq", "api_create_conc", "api_read", "driver_insert_seq", "driver_insert_conc", "driver_find")


def sample_keys(keys: list[str], count: int, rng: random.Random) -> list[str]:
    return rng.sample(keys, count) if count <= len(keys) else rng.choices(keys, k=count)


def warm_up(port: int, token: str | None, collection: Collection[Doc], resources: list[Doc], bodies: list[Body],
            bare: bool) -> Errors:
    """One create and read per resource type, so first-use costs (model build, pools) stay out of the figures."""
    first: dict[str, int] = {}
    for i, resource in enumerate(resources):
        first.setdefault(resource["resourceType"], i)
    api, driver = ApiTarget(port, token), DriverTarget(collection)
    create, insert = api.creator(), driver.inserter()
    for i, doc in zip(first.values(), driver_documents([resources[i] for i in first.values()], bare), strict=True):
        create(bodies[i])
        insert(doc)
    api.read_all(api.created)
    driver.read_all(driver.created)
    return api.errors


def run_once(port: int, token: str | None, collection: Collection[Doc], meter: CpuMeter, resources: list[Doc],
             bodies: list[Body], concurrency: int, reads: int, bare: bool, rng: random.Random,
             log: Callable[[str], None]) -> dict[str, Phase]:
    """The six phases, API then driver; creates first, then reads of what this run created."""
    api, driver = ApiTarget(port, token), DriverTarget(collection)
    phases: dict[str, Phase] = {}

    def writes(name: str, what: str, work: Sequence[Any], clients: int, make: Callable[[], Callable[[Any], None]],
               errors: Errors) -> None:
        log(f"  {what}, {clients} client(s), {len(work)} resources")
        before_errors, cpu = errors.count, meter.read()
        seconds = run_parallel(work, clients, make)
        phases[name] = Phase(len(work), errors.count - before_errors, seconds, meter.per_op_ms(cpu, len(work)))

    def reads_of(name: str, what: str, keys: list[str], read_all: Callable[[Sequence[str]], list[float]],
                 errors: Errors) -> None:
        log(f"  {what}, {reads} in random order")
        chosen = sample_keys(keys, reads, rng) if keys else []
        before_errors, cpu, start = errors.count, meter.read(), time.perf_counter()
        samples = read_all(chosen)
        seconds = time.perf_counter() - start
        phases[name] = Phase(len(chosen), errors.count - before_errors, seconds,
                             meter.per_op_ms(cpu, len(chosen)), samples)

    writes("api_create_seq", "API POST", bodies, 1, api.creator, api.errors)
    writes("api_create_conc", "API POST", bodies, concurrency, api.creator, api.errors)
    reads_of("api_read", "API GET by id", api.created, api.read_all, api.errors)
    writes("driver_insert_seq", "driver insert_one", driver_documents(resources, bare), 1, driver.inserter,
           driver.errors)
    writes("driver_insert_conc", "driver insert_one", driver_documents(resources, bare), concurrency,
           driver.inserter, driver.errors)
    reads_of("driver_find", "driver find_one by _id", driver.created, driver.read_all, driver.errors)
    for sample in api.errors.samples + driver.errors.samples:
        log(f"  ! {sample}")
    return phases


# ---- report -----------------------------------------------------------------------------------



def load_average() -> float:
    return os.getloadavg()[0]


def summarise(runs: list[dict[str, Phase]]) -> dict[str, dict[str, float]]:
    """Per phase, the median over runs of each figure; then the API/driver ratios."""
    medians: dict[str, dict[str, float]] = {}
    for name in PHASES:
        per_run = [run[name].figures() for run in runs]
        medians[name] = {key: statistics.median(f[key] for f in per_run) for key in per_run[0]}

    def cpu_total(phase: str) -> float:
        return sum(v for k, v in medians[phase].items() if k.startswith("cpu_"))

    medians["ratio"] = {
        "create_seq": medians["api_create_seq"]["per_second"] / medians["driver_insert_seq"]["per_second"],
        "create_conc": medians["api_create_conc"]["per_second"] / medians["driver_insert_conc"]["per_second"],
        "read_p50": medians["api_read"]["p50_ms"] / medians["driver_find"]["p50_ms"],
        "read_p95": medians["api_read"]["p95_ms"] / medians["driver_find"]["p95_ms"],
        "cpu_create_seq": cpu_total("api_create_seq") / cpu_total("driver_insert_seq"),
        "cpu_create_conc": cpu_total("api_create_conc") / cpu_total("driver_insert_conc"),
        "cpu_read": cpu_total("api_read") / cpu_total("driver_find"),
    }
    return medians


def print_table(command: str, env: dict[str, Any], setup: dict[str, Any], m: dict[str, dict[str, float]]) -> None:
    c, r = setup["concurrency"], m["ratio"]
    print(f"\ncommand: {command}")
    print(f"machine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}; commit {env['commit']}")
    print(f"versions: pymongo {env['pymongo']}, SecantusDB {env['SecantusDB']}, uvicorn {env['uvicorn']}, "
          f"fastapi {env['fastapi']}, fhir.resources {env['fhir.resources']}")
    print(f"work: {setup['resources']} Synthea resources per create batch, {setup['reads']} reads; "
          f"driver documents: {setup['driver_docs']}; "
          f"retryable writes {'on' if setup['retry_writes'] else 'off'}; median of {setup['runs']} run(s); "
          f"{setup['seconds']:.0f}s in all; 1-min load average {setup['load_before']:.1f} before, "
          f"{setup['load_after']:.1f} after\n")
    rows = [
        ("create, 1 client (resources/s)", m["api_create_seq"]["per_second"], m["driver_insert_seq"]["per_second"],
         r["create_seq"], ".0f"),
        (f"create, {c} clients (resources/s)", m["api_create_conc"]["per_second"],
         m["driver_insert_conc"]["per_second"], r["create_conc"], ".0f"),
        ("read by id p50 (ms)", m["api_read"]["p50_ms"], m["driver_find"]["p50_ms"], r["read_p50"], ".2f"),
        ("read by id p95 (ms)", m["api_read"]["p95_ms"], m["driver_find"]["p95_ms"], r["read_p95"], ".2f"),
    ]
    print(f"{'wall clock':36}{'API (HTTP)':>12}{'driver':>12}{'API/driver':>12}")
    for label, api, drv, ratio, fmt in rows:
        print(f"{label:36}{api:>12{fmt}}{drv:>12{fmt}}{ratio:>12.2f}")

    print(f"\n{'CPU ms per operation':36}{'client':>8}{'API':>8}{'DB':>8}{'total':>8}"
          f"{'client':>9}{'DB':>8}{'total':>8}{'API/drv':>9}")
    print(f"{'':36}{'--------------- API ---------------':>32}{'------ driver ------':>25}")
    cpu_rows = [("create, 1 client", "api_create_seq", "driver_insert_seq", r["cpu_create_seq"]),
                (f"create, {c} clients", "api_create_conc", "driver_insert_conc", r["cpu_create_conc"]),
                ("read by id", "api_read", "driver_find", r["cpu_read"])]
    for label, api_phase, drv_phase, ratio in cpu_rows:
        ap, dp = m[api_phase], m[drv_phase]
        a_total = ap["cpu_client_ms"] + ap["cpu_api_ms"] + ap["cpu_db_ms"]
        d_total = dp["cpu_client_ms"] + dp["cpu_db_ms"]
        print(f"{label:36}{ap['cpu_client_ms']:>8.2f}{ap['cpu_api_ms']:>8.2f}{ap['cpu_db_ms']:>8.2f}{a_total:>8.2f}"
              f"{dp['cpu_client_ms']:>9.2f}{dp['cpu_db_ms']:>8.2f}{d_total:>8.2f}{ratio:>9.2f}")
    errors = {name: m[name]["errors"] for name in PHASES if m[name]["errors"]}
    print(f"\nerrors (median per run): {errors or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The FHIR API's CRUD speed over HTTP, next to the bare driver's.")
    parser.add_argument("--n", type=int, default=None, help="resources per create batch (cycled); default: all")
    parser.add_argument("--concurrency", type=int, default=8, help="clients for the concurrent create runs")
    parser.add_argument("--reads", type=int, default=2000, help="sequential reads by id per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the figures are their medians")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds after which no further run starts (the first always does)")
    parser.add_argument("--retry-writes", action="store_true",
                        help="leave the drivers' retryable writes on (see the module docstring)")
    parser.add_argument("--bare-docs", action="store_true",
                        help="driver documents without the search fields (ix, sk, cp) the store adds")
    parser.add_argument("--seed", type=int, default=1, help="seed of the read order")
    parser.add_argument("--data", type=Path, default=DATA, help="directory of Synthea Bundle JSON files")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.reads < 2 or args.repeat < 1 or (args.n is not None and args.n < 1):
        parser.error("--concurrency, --repeat and --n must be >= 1, --reads >= 2")

    command = shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])])

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    resources = load_resources(args.data, args.n)
    bodies = [(r["resourceType"], orjson.dumps(r)) for r in resources]  # encoded before the clock starts
    rng = random.Random(args.seed)
    load_before = load_average()
    began = time.perf_counter()
    runs: list[dict[str, Phase]] = []

    with tempfile.TemporaryDirectory(prefix="emr-bench-") as tmp:
        log(f"starting the embedded database in {tmp}")
        server = ensure_embedded(Path(tmp))
        assert server.process is not None  # a fresh directory: the server is ours
        # the embedded server's address already says retryWrites=false (see emr/embedded_db.py)
        uri = server.uri.replace("retryWrites=false", "retryWrites=true") if args.retry_writes else server.uri
        api_process: subprocess.Popen[bytes] | None = None
        client: MongoClient[Doc] | None = None
        try:
            port = free_port()
            log(f"starting the API on http://{HOST}:{port}/fhir")
            api_process = start_api(uri, port)
            wait_for_api(api_process, port, START_TIMEOUT_S)
            token = sign_in(uri, API_DB, port)  # a clinician's, as a ward terminal signs in
            meter = CpuMeter({"api": api_process.pid, "db": server.process.pid})
            client = MongoClient(uri, tz_aware=True, maxPoolSize=max(100, args.concurrency))
            collection = client[DRIVER_DB]["resources"]
            DriverTarget(collection).prepare()
            log("warming up")
            for sample in warm_up(port, token, collection, resources, bodies, args.bare_docs).samples:
                log(f"  ! {sample}")
            for i in range(args.repeat):
                if runs and time.perf_counter() - began > args.budget:
                    log(f"time budget of {args.budget:.0f}s spent: stopping after {len(runs)} run(s)")
                    break
                log(f"run {i + 1}/{args.repeat}")
                runs.append(run_once(port, token, collection, meter, resources, bodies, args.concurrency, args.reads,
                                     args.bare_docs, rng, log))
        finally:
            if client is not None:
                client.close()
            if api_process is not None:
                stop_process(api_process)
            server.close()

    env = environment()
    medians = summarise(runs)
    setup = {"resources": len(resources), "concurrency": args.concurrency, "reads": args.reads,
             "retry_writes": args.retry_writes, "driver_docs": "bare" if args.bare_docs else "store",
             "runs": len(runs), "seconds": round(time.perf_counter() - began, 1),
             "load_before": load_before, "load_after": load_average()}
    if args.json:
        per_run = [{name: phase.figures() for name, phase in run.items()} for run in runs]
        print(json.dumps({"command": command, "environment": env, "setup": setup, "median": medians,
                          "runs": per_run}, indent=2))
    else:
        print_table(command, env, setup, medians)
    return 0


if __name__ == "__main__":
    sys.exit(main())
