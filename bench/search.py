"""Search benchmark: a ward terminal's common FHIR searches over HTTP, against their floor, the bare PyMongo driver.

Why: a search's latency through the API (HTTP, FastAPI, query building, Bundle
JSON) only means something next to what the database itself needs for the same
result page, and only on a database big enough for a missing index to show. So
one run, on the same embedded SecantusDB server:

- loads `--resources` resources (default 100,000) into database `bench_search`
  through the store's own Python API (`FhirStore.create`, client-chosen ids,
  `--concurrency` at a time): the Synthea patient bundles of ../shared/data,
  repeated with fresh ids per copy (`urn:uuid:X` -> `Type/X-c{n}`), every patient
  given a CCCD number and a mobile phone and, after the first copy, a Vietnamese
  name, so that the name / identifier / phone searches look like An Giang's. `--reuse` keeps a
  database a previous run loaded (in `--data-dir`, default bench/results/);
- starts the real API (uvicorn + `emr.app:create_app`, a child process) and times
  each search `--iterations` times, sequentially on one keep-alive connection,
  each time with target values drawn at random from the loaded data;
- times, interleaved with those, the floor: sync `pymongo` running the very
  aggregation pipeline the engine runs for that request (built with the engine's
  own `parse_request` / `queries` / `_match`), plus the `_include` fetch where
  there is one; and checks that both return the same number of resources;
- asks the database to explain each search's main query: which index drives it,
  and how many documents it fetches for the rows it keeps (executionStats).

    .venv/bin/python bench/search.py [--resources N] [--iterations K] [--reuse] [--data-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from pymongo import AsyncMongoClient, MongoClient
from pymongo.collection import Collection

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import Errors, environment, free_port, sign_in, stop_process, wait_for_api  # noqa: E402

from emr.embedded_db import ensure_embedded  # noqa: E402
from emr.settings import Settings  # noqa: E402
from fhir_store import FhirStore, StoreError  # noqa: E402
from fhir_store.documents import VERSION_FIELDS  # noqa: E402
from fhir_store.references import holders  # noqa: E402
from fhir_store.resource_types import resource_types  # noqa: E402
from fhir_store.search.engine import (  # noqa: E402
    MAX_INCLUDED,
    Include,
    SearchEngine,
    SearchRequest,
    _match,
    parse_request,
)
from fhir_store.search.registry import load_registry  # noqa: E402
from fhir_store.text import fold  # noqa: E402

DATA_DIRS = [REPO.parent / "shared" / "data" / "synthea" / "smart-on-fhir",
             REPO.parent / "shared" / "data" / "synthea" / "fhir-data-pipes-hiv"]
DEFAULT_DATA_DIR = REPO / "bench" / "results" / "search-db"
DATABASE = "bench_search"
META = "bench_meta"  # one document recording a finished load, so --reuse can trust the data
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
LOINC = "http://loinc.org"
HOST = "127.0.0.1"
FHIR_JSON = "application/fhir+json"
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 10.0
TARGET_OBSERVATIONS = 3000
EXPLAIN_SAMPLES = 5

FAMILIES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Võ", "Đặng", "Bùi", "Đỗ"]
GIVEN = ["An", "Bình", "Cường", "Dũng", "Hà", "Lan", "Minh", "Tuấn"]

Doc = dict[str, Any]
Params = list[tuple[str, str]]


# ---- measuring, HTTP, processes (as in bench/crud.py; copied, so each script stands alone) ---------

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


class HttpClient:
    """One keep-alive HTTP/1.1 connection (http.client: far cheaper per request than httpx)."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        self.headers = {"Accept": FHIR_JSON, **({"Authorization": f"Bearer {token}"} if token else {})}

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        self.conn.request(method, path, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()  # read it all, or the connection cannot be reused
        return response.status, data

    def close(self) -> None:
        self.conn.close()




# ---- source data: Synthea bundles, copied with fresh ids --------------------------------------

@dataclass
class Template:
    """One patient bundle: (fullUrl uuid, type, resource JSON) per entry, JSON kept encoded for cheap copies."""

    entries: list[tuple[str, str, bytes]]


def templates(directories: list[Path]) -> list[Template]:
    """The patient transaction bundles (facility and staff bundles skipped: nothing searched needs them)."""
    found = []
    for directory in directories:
        for path in sorted(directory.glob("*.json")):
            if path.name.startswith(("hospitalInformation", "practitionerInformation")):
                continue
            bundle = orjson.loads(path.read_bytes())
            entries = [(e["fullUrl"].removeprefix("urn:uuid:"), e["resource"]["resourceType"],
                        orjson.dumps(e["resource"])) for e in bundle.get("entry", []) if "fullUrl" in e]
            if entries:
                found.append(Template(entries))
    if not found:
        raise SystemExit(f"No Synthea patient bundles in {', '.join(map(str, directories))}")
    return found


def rewrite_references(node: Any, ids: dict[str, str]) -> None:
    """`{"reference": "urn:uuid:X"}` -> `Type/X-c{n}`, anywhere in the resource (conditional ones stay)."""
    for holder in holders(node):
        ref = holder["reference"]
        if ref.startswith("urn:uuid:") and ref[9:] in ids:
            holder["reference"] = ids[ref[9:]]


def personalise(patient: Doc, copy: int, serial: int) -> None:
    """A CCCD and a mobile number for every patient; in copies after the first, a Vietnamese name and a
    birth date moved by up to a year, so the copies do not all share one name and birthday."""
    rng = random.Random(serial)
    male = patient.get("gender") == "male"
    born = patient.get("birthDate", "1970-01-01")
    if copy > 0:
        family, given = rng.choice(FAMILIES), rng.choice(GIVEN)
        middle = "Văn" if male else "Thị"
        patient["name"] = [{"use": "official", "text": f"{family} {middle} {given}", "family": family,
                            "given": [middle, given]}]
        if len(born) == 10:
            born = (date.fromisoformat(born) + timedelta(days=rng.randint(-365, 365))).isoformat()
            patient["birthDate"] = born
    century = 0 if born < "2000" else 2
    cccd = f"089{century + (0 if male else 1)}{born[2:4]}{serial:06d}"  # province, sex+century, year, serial
    patient["identifier"] = [*(patient.get("identifier") or []), {"system": CCCD, "value": cccd}]
    phone = f"09{(serial * 7919 + 1_234_567) % 10**8:08d}"  # a bijection mod 10^8: unique per serial
    patient["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]


def copies(bundles: list[Template], total: int) -> Iterator[Doc]:
    """`total` resources: the bundles over and over, copy n with ids `X-c{n}` and references to match."""
    produced = serial = 0
    copy = 0
    while True:
        written: set[str] = set()  # bundles share their Organizations and Practitioners: once per copy
        for bundle in bundles:
            ids = {uid: f"{rtype}/{uid}-c{copy}" for uid, rtype, _ in bundle.entries}
            for uid, rtype, raw in bundle.entries:
                if produced >= total:
                    return
                if uid in written:
                    continue
                written.add(uid)
                resource = orjson.loads(raw)
                resource["id"] = f"{uid}-c{copy}"
                rewrite_references(resource, ids)
                if rtype == "Patient":
                    personalise(resource, copy, serial)
                    serial += 1
                produced += 1
                yield resource
        copy += 1


# ---- loading, through the store ---------------------------------------------------------------

@dataclass
class LoadStats:
    resources: int
    errors: int
    seconds: float
    concurrency: int
    reused: bool = False
    #: the machine's 1-minute load average when the load finished (other work on it slows the load)
    loadavg: float | None = None

    @property
    def per_second(self) -> float:
        return (self.resources - self.errors) / self.seconds if self.seconds else 0.0


async def load(uri: str, total: int, concurrency: int, log: Callable[[str], None]) -> LoadStats:
    """Fresh `bench_search`, then `store.create` of every copied resource, `concurrency` at a time.

    In-process rather than over HTTP: the load is set-up, not what is measured,
    and the store still validates, indexes and versions every resource.
    """
    resource_types()  # build the models before the clock starts
    bundles = templates(DATA_DIRS)
    # retryWrites off: SecantusDB keeps a record per retryable write (30 min, at most 10,000) and prunes them on
    # every write with a scan and, once full, a sort of all of them, so past 10,000 writes each insert costs
    # milliseconds of server CPU more (the load fell from ~170/s to ~50/s by 20,000 resources). The store's
    # writes are the same either way; only the driver's retry bookkeeping differs.
    client: AsyncMongoClient[Doc] = AsyncMongoClient(uri, tz_aware=True, maxPoolSize=concurrency + 4,
                                                     retryWrites=False)
    try:
        await client.drop_database(DATABASE)
        store = FhirStore(client[DATABASE])
        await store.ensure_indexes()
        source = copies(bundles, total)
        errors = Errors()
        done = 0
        # Ctrl-C stops the workers between writes: cancelling them instead is not reliable (the async driver
        # can swallow a cancellation that arrives while it sends, and the load would go on to the end).
        interrupted = asyncio.Event()
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal done
            for resource in source:  # one generator shared by every worker: each resource is written once
                if interrupted.is_set():
                    return
                try:
                    await store.create(resource, resource_type=resource["resourceType"], resource_id=resource["id"])
                except StoreError as exc:
                    errors.add(f"{resource['resourceType']}/{resource['id']}: {exc}")
                done += 1

        async def progress() -> None:
            while True:
                await asyncio.sleep(PROGRESS_EVERY_S)
                elapsed = time.perf_counter() - start
                rate = done / elapsed if elapsed else 0.0
                eta = (total - done) / rate if rate else float("inf")
                log(f"  {done:>7,}/{total:,} resources, {rate:.0f}/s, about {eta:.0f}s to go")

        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            interrupted.set()
            loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C interrupts at once

        loop.add_signal_handler(signal.SIGINT, interrupt)
        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            reporter.cancel()
            loop.remove_signal_handler(signal.SIGINT)
            await store.close()
        if interrupted.is_set():
            raise KeyboardInterrupt
        stats = LoadStats(done, errors.count, time.perf_counter() - start, concurrency, loadavg=os.getloadavg()[0])
        for sample in errors.samples:
            log(f"  ! {sample}")
        await client[DATABASE][META].replace_one(
            {"_id": "load"}, {"_id": "load", "resources": stats.resources, "errors": stats.errors,
                              "seconds": stats.seconds, "concurrency": concurrency, "loadavg": stats.loadavg},
            upsert=True)
        return stats
    finally:
        await client.close()


def previous_load(client: MongoClient[Doc]) -> LoadStats | None:
    """The finished load a previous run recorded in this database, if any."""
    meta = client[DATABASE][META].find_one({"_id": "load"})
    if meta is None or client[DATABASE]["resources"].find_one({}, {"_id": True}) is None:
        return None
    return LoadStats(int(meta["resources"]), int(meta["errors"]), float(meta["seconds"]),
                     int(meta["concurrency"]), reused=True, loadavg=meta.get("loadavg"))


# ---- search targets, drawn from what is in the database ---------------------------------------

@dataclass
class PatientTarget:
    id: str
    name: str  # folded "family first-given", as a desk types it ("nguyen van")
    family: str
    cccd: str
    birthdate: str
    phone: str


@dataclass
class ObservationTarget:
    patient: str  # "Patient/<id>"
    code: str | None  # a LOINC code of this observation
    day: str | None  # its date, YYYY-MM-DD
    encounter: str | None  # "Encounter/<id>"


@dataclass
class Targets:
    patients: list[PatientTarget]
    observations: list[ObservationTarget]


def find_targets(collection: Collection[Doc], rng: random.Random) -> Targets:
    """Every patient and a random sample of observations, so each iteration can search for real values."""
    patients = []
    fields = {"id": True, "res.name": True, "res.identifier": True, "res.birthDate": True, "res.telecom": True}
    for doc in collection.find({"type": "Patient", "deleted": False}, fields):
        res = doc["res"]
        name = next((n for n in res.get("name") or [] if n.get("family") and n.get("given")), None)
        cccd = next((i["value"] for i in res.get("identifier") or [] if i.get("system") == CCCD), None)
        phone = next((t["value"] for t in res.get("telecom") or [] if t.get("system") == "phone"), None)
        if name and cccd and phone and res.get("birthDate"):
            patients.append(PatientTarget(doc["id"], fold(f"{name['family']} {name['given'][0]}"),
                                          fold(name["family"]), cccd, res["birthDate"], phone))
    observations = []
    pipeline: list[Doc] = [{"$match": {"type": "Observation"}}, {"$sample": {"size": TARGET_OBSERVATIONS}},
                           {"$project": {"ix.patient": True, "ix.code": True, "ix.encounter": True, "sk.date": True}}]
    for doc in collection.aggregate(pipeline):
        ix = doc.get("ix") or {}
        refs = [r for r in ix.get("patient") or [] if r.startswith("Patient/")]
        if not refs:
            continue
        codes = [c.split("|", 1)[1] for c in ix.get("code") or [] if c.startswith(f"{LOINC}|")]
        when = (doc.get("sk") or {}).get("date")
        encounters = [r for r in ix.get("encounter") or [] if r.startswith("Encounter/")]
        observations.append(ObservationTarget(refs[0], codes[0] if codes else None,
                                              when.date().isoformat() if when else None,
                                              encounters[0] if encounters else None))
    if not patients or not observations:
        raise SystemExit("The database holds no searchable patients or observations; load it again (no --reuse)")
    rng.shuffle(patients)
    return Targets(patients, observations)


# ---- the searches -----------------------------------------------------------------------------

def _patient(t: Targets, rng: random.Random) -> PatientTarget:
    return rng.choice(t.patients)


def _observation(t: Targets, rng: random.Random, need: str) -> ObservationTarget:
    return rng.choice([o for o in t.observations if getattr(o, need) is not None])


@dataclass(frozen=True)
class Search:
    """One common search: a label with placeholders, its type, and how to draw real parameters for it."""

    label: str
    rtype: str
    params: Callable[[Targets, random.Random], Params]


SEARCHES = [
    Search("Patient?name={family middle}", "Patient", lambda t, r: [("name", _patient(t, r).name)]),
    Search("Patient?family={family}", "Patient", lambda t, r: [("family", _patient(t, r).family)]),
    Search("Patient?identifier={cccd}|{value}", "Patient",
           lambda t, r: [("identifier", f"{CCCD}|{_patient(t, r).cccd}")]),
    Search("Patient?birthdate={date}", "Patient", lambda t, r: [("birthdate", _patient(t, r).birthdate)]),
    Search("Patient?phone={phone}", "Patient", lambda t, r: [("phone", _patient(t, r).phone)]),
    Search("Observation?patient=Patient/{id}&date=ge{d}&_sort=-date&_count=20", "Observation",
           lambda t, r: (lambda o: [("patient", o.patient), ("date", f"ge{o.day}"), ("_sort", "-date"),
                                    ("_count", "20")])(_observation(t, r, "day"))),
    Search("Observation?patient={id}&code=loinc|{code}", "Observation",
           lambda t, r: (lambda o: [("patient", o.patient.removeprefix("Patient/")),
                                    ("code", f"{LOINC}|{o.code}")])(_observation(t, r, "code"))),
    Search("Condition?patient=Patient/{id}", "Condition", lambda t, r: [("patient", f"Patient/{_patient(t, r).id}")]),
    Search("Encounter?patient={id}&_sort=-date", "Encounter",
           lambda t, r: [("patient", _patient(t, r).id), ("_sort", "-date")]),
    Search("MedicationRequest?patient={id}", "MedicationRequest", lambda t, r: [("patient", _patient(t, r).id)]),
    Search("Observation?encounter=Encounter/{id}", "Observation",
           lambda t, r: [("encounter", str(_observation(t, r, "encounter").encounter))]),
    Search("Observation?patient=Patient/{id}&_count=20&_include=Observation:patient", "Observation",
           lambda t, r: [("patient", f"Patient/{_patient(t, r).id}"), ("_count", "20"),
                         ("_include", "Observation:patient")]),
    Search("Encounter?patient={id}&_include=Encounter:subject", "Encounter",
           lambda t, r: [("patient", _patient(t, r).id), ("_include", "Encounter:subject")]),
]


@dataclass
class Case:
    """One iteration of one search: the API's URL and the engine's pipeline for the same request."""

    path: str
    request: SearchRequest
    pipeline: list[Doc]


async def build_cases(uri: str, settings: Settings, targets: Targets, iterations: int,
                      rng: random.Random) -> dict[str, list[Case]]:
    """The pipeline `SearchEngine.search` runs for each request (first page, no cursor), built by its own code."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(uri, tz_aware=True)
    try:
        registry = load_registry()
        engine = SearchEngine(registry, client[DATABASE]["resources"])
        cases: dict[str, list[Case]] = {}
        for search in SEARCHES:
            cases[search.label] = []
            for _ in range(iterations):
                params = search.params(targets, rng)
                request = parse_request(registry, [search.rtype], params, strict=True,
                                        default_count=settings.default_page_size, max_count=settings.max_page_size)
                queries = await engine.queries(request, [])
                sort = request.sort if any(k == "_id" for k, _ in request.sort) else [*request.sort, ("_id", 1)]
                projection = {**VERSION_FIELDS, **{k: True for k, _ in sort if k.startswith("sk.")},
                              **{f"ix.{inc.param}": True for inc in request.includes}}
                pipeline = [*_match(queries), {"$sort": dict(sort)}, {"$limit": request.count + 1},
                            {"$project": projection}]
                cases[search.label].append(Case(f"/fhir/{search.rtype}?{urlencode(params)}", request, pipeline))
        return cases
    finally:
        await client.close()


# ---- timing one search both ways --------------------------------------------------------------

def api_search(client: HttpClient, case: Case) -> tuple[float, tuple[int, int] | str]:
    """(ms, (matches, included)) of one GET, or (ms, what went wrong)."""
    start = time.perf_counter_ns()
    status, data = client.request("GET", case.path)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if status != 200:
        return elapsed, f"GET {case.path} -> {status}: {data[:300].decode(errors='replace')}"
    modes = Counter(e.get("search", {}).get("mode") for e in orjson.loads(data).get("entry", []))
    return elapsed, (modes["match"], modes["include"])


def forward_include(collection: Collection[Doc], inc: Include, docs: list[Doc], seen: set[str]) -> list[Doc]:
    """`SearchEngine._forward` + `_fetch` for one `_include` (named parameter), in sync PyMongo."""
    keys = {ref for doc in docs if inc.source in ("*", doc["type"])
            for ref in (doc.get("ix") or {}).get(inc.param, [])
            if "/" in ref and not ref.startswith(("http://", "https://", "urn:"))
            and (inc.target is None or ref.startswith(f"{inc.target}/"))} - seen
    if not keys:
        return []
    pipeline: list[Doc] = [{"$match": {"_id": {"$in": sorted(keys)}}}, {"$match": {"deleted": False}},
                           {"$limit": MAX_INCLUDED + 1}, {"$project": {**VERSION_FIELDS, "ix": True}}]
    found = [doc for doc in collection.aggregate(pipeline) if doc["_id"] not in seen]
    seen.update(doc["_id"] for doc in found)
    return found


def driver_search(collection: Collection[Doc], case: Case) -> tuple[float, tuple[int, int]]:
    """(ms, (matches, included)) of the engine's pipeline (and `_include` fetches) straight through PyMongo."""
    start = time.perf_counter_ns()
    docs = list(collection.aggregate(case.pipeline))[: case.request.count]
    included = 0
    if case.request.includes and docs:
        seen = {doc["_id"] for doc in docs}
        for inc in case.request.includes:
            included += len(forward_include(collection, inc, docs, seen))
    return (time.perf_counter_ns() - start) / 1e6, (len(docs), included)


@dataclass
class SearchResult:
    label: str
    api: Latency
    driver: Latency
    mean_matches: float
    mean_included: float
    mismatches: int
    errors: list[str] = field(default_factory=list)
    plan: str = "?"
    winning_plan: Doc | None = None
    #: mean index keys and documents the main query's $cursor stage examined, and rows it passed on
    examined: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"search": self.label, "api_p50_ms": round(self.api.p50, 3), "api_p95_ms": round(self.api.p95, 3),
                "driver_p50_ms": round(self.driver.p50, 3), "driver_p95_ms": round(self.driver.p95, 3),
                "ratio_p50": round(self.api.p50 / self.driver.p50, 2),
                "ratio_p95": round(self.api.p95 / self.driver.p95, 2),
                "mean_matches": round(self.mean_matches, 1), "mean_included": round(self.mean_included, 1),
                "iterations": len(self.api.samples_ms), "api_errors": self.api.errors,
                "count_mismatches": self.mismatches, "plan": self.plan, "examined": self.examined,
                "error_samples": self.errors}


def measure(port: int, token: str | None, collection: Collection[Doc], cases: dict[str, list[Case]], warmup: int,
            log: Callable[[str], None]) -> list[SearchResult]:
    """Each search: its first `warmup` cases untimed, then the rest, API and driver alternately on the same
    case (who goes first alternates too, so neither always finds the other's pages freshly cached)."""
    client = HttpClient(port, token)
    results = []
    try:
        for label, runs in cases.items():
            for case in runs[:warmup]:
                api_search(client, case)
                driver_search(collection, case)
            api_ms: list[float] = []
            driver_ms: list[float] = []
            errors = Errors()
            mismatches = matches = included = 0
            for i, case in enumerate(runs[warmup:]):
                if i % 2:
                    d_ms, d_counts = driver_search(collection, case)
                    a_ms, a_out = api_search(client, case)
                else:
                    a_ms, a_out = api_search(client, case)
                    d_ms, d_counts = driver_search(collection, case)
                driver_ms.append(d_ms)
                if isinstance(a_out, str):
                    errors.add(a_out)
                    continue
                api_ms.append(a_ms)
                matches, included = matches + a_out[0], included + a_out[1]
                if a_out != d_counts:
                    mismatches += 1
                    errors.add(f"{case.path}: API {a_out[0]}+{a_out[1]}, driver {d_counts[0]}+{d_counts[1]}")
            ok = len(api_ms) or 1
            result = SearchResult(label, Latency(api_ms or [0.0], errors.count - mismatches),
                                  Latency(driver_ms, 0), matches / ok, included / ok, mismatches, errors.samples)
            log(f"  {label}: API p50 {result.api.p50:.2f} ms, driver p50 {result.driver.p50:.2f} ms")
            results.append(result)
    finally:
        client.close()
    return results


# ---- explain ----------------------------------------------------------------------------------

def plan_summary(plan: Doc) -> str:
    """'IXSCAN patient_date', 'COLLSCAN', ...: the stages of a winning plan, with the indexes they use."""
    parts = []
    stage = plan.get("stage", "?")
    parts.append(f"{stage} {plan['indexName']}" if "indexName" in plan else stage)
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            parts.append(plan_summary(plan[key]))
    parts += [plan_summary(child) for child in plan.get("inputStages", [])]
    return " < ".join(p for p in parts if p)


async def explain_all(uri: str, cases: dict[str, list[Case]], results: list[SearchResult]) -> None:
    """The database's plan for each search's main query (the first case's values)."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(uri, tz_aware=True)
    try:
        engine = SearchEngine(load_registry(), client[DATABASE]["resources"])
        for result in results:
            explained = await engine.explain(cases[result.label][0].request)
            try:
                plan = explained["stages"][0]["$cursor"]["queryPlanner"]["winningPlan"]
            except (KeyError, IndexError, TypeError):
                result.plan = "(no plan in explain)"
                continue
            result.winning_plan = plan
            result.plan = plan_summary(plan)
    finally:
        await client.close()


def examined(collection: Collection[Doc], runs: list[Case], samples: int) -> dict[str, float]:
    """Mean keys / documents examined by the main query's index scan (executionStats), over a few cases:
    many more documents examined than rows returned is how a missing index shows even when one is used."""
    totals: Counter[str] = Counter()
    n = 0
    for case in runs[:samples]:
        explained = collection.database.command(
            "explain", {"aggregate": collection.name, "pipeline": case.pipeline, "cursor": {}},
            verbosity="executionStats")
        try:
            stats = explained["stages"][0]["$cursor"]["executionStats"]
        except (KeyError, IndexError, TypeError):
            return {}
        totals.update({"keys": stats.get("totalKeysExamined", 0), "docs": stats.get("totalDocsExamined", 0),
                       "returned": stats.get("nReturned", 0)})
        n += 1
    return {k: round(v / n, 1) for k, v in totals.items()} if n else {}


# ---- the API process --------------------------------------------------------------------------

def start_api(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """uvicorn + the real app (one worker, access log off) on loopback, on the benchmark's database."""
    code = (
        "import uvicorn\n"
        "from pathlib import Path\n"
        "from emr.app import create_app\n"
        "from emr.settings import Settings\n"
        f"app = create_app(Settings(mongodb_uri={settings.mongodb_uri!r}, database={settings.database!r}, "
        f"data_dir=Path({str(settings.data_dir)!r}), secret_key='bench'))\n"
        f"uvicorn.run(app, host={HOST!r}, port={port}, log_level='warning', access_log=False)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


# ---- report -----------------------------------------------------------------------------------

def print_report(command: str, env: dict[str, Any], stats: LoadStats, in_db: int, results: list[SearchResult],
                 iterations: int, slow_ms: float, elapsed: float, loadavg: tuple[float, float]) -> None:
    print(f"\ncommand: {command}")
    print(f"machine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}; commit {env['commit']}")
    print(f"versions: pymongo {env['pymongo']}, SecantusDB {env['SecantusDB']}, uvicorn {env['uvicorn']}, "
          f"fastapi {env['fastapi']}")
    how = "reused from an earlier run, which loaded" if stats.reused else "loaded"
    print(f"data: {in_db:,} current resources in '{DATABASE}'; {how} {stats.resources:,} with FhirStore.create "
          f"x{stats.concurrency} in {stats.seconds:.0f}s = {stats.per_second:.0f} resources/s "
          f"({stats.errors} errors)")
    print(f"work: {iterations} sequential iterations per search, random real targets; {elapsed:.0f}s in all")
    print(f"load average (1 min) of the machine: {loadavg[0]:.1f} before timing, {loadavg[1]:.1f} after"
          + (f", {stats.loadavg:.1f} at the end of the load" if stats.loadavg is not None else "") + "\n")
    width = max(len(r.label) for r in results)
    print(f"{'search':{width}}  {'rows':>6}  {'API p50':>8} {'p95':>7}  {'driver p50':>10} {'p95':>7}  "
          f"{'ratio p50':>9} {'p95':>6}  {'docs examined':>13}  plan (main query)")
    for r in results:
        rows = f"{r.mean_matches:.0f}" + (f"+{r.mean_included:.0f}" if r.mean_included else "")
        print(f"{r.label:{width}}  {rows:>6}  {r.api.p50:>8.2f} {r.api.p95:>7.2f}  {r.driver.p50:>10.2f} "
              f"{r.driver.p95:>7.2f}  {r.api.p50 / r.driver.p50:>9.2f} {r.api.p95 / r.driver.p95:>6.2f}  "
              f"{r.examined.get('docs', float('nan')):>13.0f}  {r.plan}")
    print("\nms; rows = mean matches (+ included) per search; ratio = API / driver; docs examined = mean documents"
          " the main query's index scan fetched (executionStats, first cases)")
    for r in results:
        if r.mismatches or r.api.errors:
            print(f"! {r.label}: {r.mismatches} count mismatches, {r.api.errors} API errors")
            for sample in r.errors:
                print(f"    {sample}")
    for r in (r for r in results if r.api.p95 > slow_ms):
        keys = (r.winning_plan or {}).get("inputStage", {}).get("keyPattern")
        print(f"slow: {r.label}: API p95 {r.api.p95:.1f} ms > {slow_ms:g} ms, driver p95 {r.driver.p95:.1f} ms; "
              f"plan {r.plan} {json.dumps(keys)}; examined {r.examined}")
    if not any(r.mismatches or r.api.errors for r in results):
        print("API and driver returned the same number of resources in every iteration.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--resources", type=int, default=100_000, help="resources to load (copied Synthea bundles)")
    parser.add_argument("--concurrency", type=int, default=16, help="store writes in flight while loading")
    parser.add_argument("--iterations", type=int, default=200, help="timed iterations per search")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations per search first")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the embedded database's directory")
    parser.add_argument("--reuse", action="store_true", help="keep the data a previous run loaded in --data-dir")
    parser.add_argument("--slow-ms", type=float, default=15.0, help="print the plan of searches with a p95 above")
    parser.add_argument("--seed", type=int, default=1, help="seed of the target values")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    if args.resources < 1 or args.concurrency < 1 or args.iterations < 2 or args.warmup < 0:
        parser.error("--resources and --concurrency must be >= 1, --iterations >= 2, --warmup >= 0")

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["search.py", *argv])

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    rng = random.Random(args.seed)
    began = time.perf_counter()
    data_dir = args.data_dir.resolve()
    log(f"starting the embedded database in {data_dir}")
    server = ensure_embedded(data_dir)
    api_process: subprocess.Popen[bytes] | None = None
    client: MongoClient[Doc] = MongoClient(server.uri, tz_aware=True)
    try:
        settings = Settings(mongodb_uri=server.uri, database=DATABASE, data_dir=data_dir)
        stats = previous_load(client) if args.reuse else None
        if stats is not None:
            log(f"reusing the {stats.resources:,} resources loaded earlier")
        else:
            log(f"loading {args.resources:,} resources into '{DATABASE}' with FhirStore.create x{args.concurrency}")
            stats = asyncio.run(load(server.uri, args.resources, args.concurrency, log))
            log(f"loaded {stats.resources:,} in {stats.seconds:.0f}s ({stats.per_second:.0f}/s, {stats.errors} errors)")
        collection = client[DATABASE]["resources"]
        in_db = collection.count_documents({"deleted": False})
        targets = find_targets(collection, rng)
        log(f"targets: {len(targets.patients)} patients, {len(targets.observations)} sampled observations")
        cases = asyncio.run(build_cases(server.uri, settings, targets, args.warmup + args.iterations, rng))
        port = free_port()
        log(f"starting the API on http://{HOST}:{port}/fhir")
        api_process = start_api(settings, port)
        wait_for_api(api_process, port, START_TIMEOUT_S)
        token = sign_in(server.uri, DATABASE, port)  # a clinician's, as a ward terminal signs in
        log(f"timing {len(SEARCHES)} searches x {args.iterations}")
        before = os.getloadavg()[0]
        results = measure(port, token, collection, cases, args.warmup, log)
        loadavg = (before, os.getloadavg()[0])
        asyncio.run(explain_all(server.uri, cases, results))
        for result in results:
            result.examined = examined(collection, cases[result.label][args.warmup:], EXPLAIN_SAMPLES)
    finally:
        client.close()
        if api_process is not None:
            stop_process(api_process)
        server.close()

    elapsed = time.perf_counter() - began
    env = environment()
    if args.json:
        print(json.dumps({"command": command, "environment": env, "database": DATABASE, "resources_in_db": in_db,
                          "load": {"resources": stats.resources, "errors": stats.errors,
                                   "seconds": round(stats.seconds, 1), "per_second": round(stats.per_second, 1),
                                   "concurrency": stats.concurrency, "reused": stats.reused},
                          "iterations": args.iterations, "seconds": round(elapsed, 1), "loadavg": loadavg,
                          "searches": [r.row() for r in results],
                          "winning_plans": {r.label: r.winning_plan for r in results}}, indent=2, default=str))
    else:
        print_report(command, env, stats, in_db, results, args.iterations, args.slow_ms, elapsed, loadavg)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; an interrupted load is not reused", file=sys.stderr)
        sys.exit(130)
