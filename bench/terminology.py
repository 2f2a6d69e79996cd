"""Terminology benchmark: the ICD-10 type-ahead (`ValueSet/$expand?filter=…`) over HTTP, against a driver floor.

Why: a clinician picks a diagnosis by typing words into a box that asks the
server on every keystroke; the issue's aim is p95 under 30 ms on the full
ICD-10 list. One run, on the embedded SecantusDB server:

- loads the shipped lists with the real command (`emr terminology load`, a child
  process) into database `bench_terminology` (`--reuse` keeps an earlier load):
  the full WHO ICD-10 (12,542 codes, ValueSet `icd-10`), the Ministry's
  Vietnamese sample (`icd10-vn`) and the 2025 administrative units (`dvhc-2025`);
- starts the real API (uvicorn + `emr.app:create_app`, a child process) and times
  `GET /fhir/ValueSet/{id}/$expand?filter=…&count=20`, `--iterations` times per
  group, sequentially on one keep-alive connection, the filter drawn at random
  (seeded) from what a clinician types keystroke by keystroke; the first request
  of each value set (which builds that process's in-memory index) is reported
  apart as "cold";
- times, interleaved, the floor: PyMongo finding the same concepts by word
  prefixes in a collection of one small document per concept (`{system, code,
  display, w: [words]}`, index `(system, w)`): an index range on the longest typed word, the
  other words checked client-side (the API answers with a total, so every match is read), each
  distinct filter `--floor-repeat` times (the embedded server needs ~0.3 ms a document, so the
  floor is slow), and checks both totals agree;
- times `CodeSystemIndex.matching` in process: the matching alone.

    .venv/bin/python bench/terminology.py [--iterations 300] [--floor-repeat 3] [--reuse] [--data-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import MongoClient  # noqa: E402
from pymongo.collection import Collection  # noqa: E402

from bench._common import HOST, REPO, environment, free_port, stop_process  # noqa: E402
from emr.embedded_db import ensure_embedded  # noqa: E402
from fhir_store.terminology.concepts import CodeSystemIndex, search_tokens  # noqa: E402

DATABASE = "bench_terminology"
DEFAULT_DATA_DIR = REPO / "bench" / "results" / "terminology-db"
PAGE = 20

#: (group, value set id, code system resource id, what is typed, keystroke by keystroke).
GROUPS: list[tuple[str, str, str, list[str]]] = [
    ("ICD-10 WHO, English words", "icd-10", "icd10-who-2019",
     ["h", "hy", "hyp", "hyper", "hypert", "hypertensive", "hypertensive heart", "pneu", "pneumonia", "diab",
      "diabetes mell", "fract", "fracture of femur", "tuberc", "malignant neoplasm of bronchus"]),
    ("ICD-10 WHO, code prefixes", "icd-10", "icd10-who-2019", ["I1", "I10", "J18", "E11.", "A0", "S72", "C34.1"]),
    ("ICD-10 VN, Vietnamese words", "icd10-vn", "icd10-vn-2020-10-26",
     ["tang", "tang huyet ap", "viem phoi", "tả", "đái tháo đường", "benh ta"]),
    ("Administrative units 2025", "dvhc-2025", "dvhc-2025-2025-10-18", ["long xuyen", "rach gia", "phuong", "an"]),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p95": percentile(values, 0.95), "max": max(values)}


def load_lists(uri: str, client: MongoClient[dict[str, Any]], reuse: bool) -> float | None:
    if reuse and client[DATABASE]["resources"].count_documents({"_id": "CodeSystem/icd10-who-2019"}, limit=1):
        return None
    started = time.perf_counter()
    env = {**os.environ, "EMR_MONGODB_URI": uri, "EMR_DATABASE": DATABASE, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "emr.cli", "terminology", "load", "--json"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def fill_floor(client: MongoClient[dict[str, Any]]) -> tuple[Collection[dict[str, Any]], dict[str, str]]:
    """One small document per concept of the benchmarked code systems; returns it and vs id → system."""
    floor = client[DATABASE]["bench_concepts"]
    floor.drop()
    systems: dict[str, str] = {}
    for _, vs_id, cs_id, _ in GROUPS:
        doc = client[DATABASE]["resources"].find_one({"_id": f"CodeSystem/{cs_id}"})
        if doc is None:
            raise SystemExit(f"CodeSystem/{cs_id} is not loaded; run without --reuse")
        resource = doc["res"]
        systems[vs_id] = resource["url"]
        if floor.count_documents({"system": resource["url"]}, limit=1):
            continue
        rows = []
        for concept in resource["concept"]:
            words = set(search_tokens(concept["code"]))
            for text in [concept.get("display", ""), *(d.get("value", "") for d in concept.get("designation", []))]:
                words.update(search_tokens(text))
            rows.append({"system": resource["url"], "code": concept["code"], "display": concept.get("display"),
                         "w": sorted(words)})
        floor.insert_many(rows)
    floor.create_index([("system", 1), ("w", 1)])
    return floor, systems


def floor_query(floor: Collection[dict[str, Any]], system: str, text: str) -> tuple[float, int]:
    """The database doing the matching: an index range on the longest typed word, the other words checked here."""
    tokens = search_tokens(text)
    longest = max(tokens, key=len)
    query = {"system": system, "w": {"$gte": longest, "$lt": longest + "\U0010ffff"}}
    started = time.perf_counter()
    rows = [d for d in floor.find(query, {"code": 1, "display": 1, "w": 1})
            if all(any(w.startswith(t) for w in d["w"]) for t in tokens)]
    return (time.perf_counter() - started) * 1000, len(rows)


def api_query(conn: http.client.HTTPConnection, vs_id: str, text: str) -> tuple[float, int]:
    path = f"/fhir/ValueSet/{vs_id}/$expand?" + urlencode({"filter": text, "count": PAGE})
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise SystemExit(f"{path}: HTTP {response.status}: {body[:300]!r}")
    return elapsed, int(json.loads(body)["expansion"]["total"])


def start_api(uri: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import uvicorn\nfrom pathlib import Path\nfrom emr.app import create_app\nfrom emr.settings import Settings\n"
        f"app = create_app(Settings(mongodb_uri={uri!r}, database={DATABASE!r}, data_dir=Path({str(data_dir)!r})))\n"
        f"uvicorn.run(app, host={HOST!r}, port={port}, log_level='warning', access_log=False)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


def wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the API process exited")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/fhir/metadata")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the API did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="requests per group")
    parser.add_argument("--floor-repeat", type=int, default=3, help="floor runs per distinct filter")
    parser.add_argument("--reuse", action="store_true", help="keep lists an earlier run loaded")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    command = "python bench/terminology.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    server = ensure_embedded(args.data_dir.resolve())
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    process = None
    try:
        load_seconds = load_lists(server.uri, client, args.reuse)
        floor, systems = fill_floor(client)
        port = free_port()
        process = start_api(server.uri, args.data_dir.resolve(), port)
        wait_for(port, process)
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        rng = random.Random(42)
        results: dict[str, Any] = {}
        for label, vs_id, cs_id, typed in GROUPS:
            cold, _ = api_query(conn, vs_id, typed[0])
            for text in typed:  # warm-up, and the totals must agree with the floor's
                _, total = api_query(conn, vs_id, text)
                _, floor_total = floor_query(floor, systems[vs_id], text)
                if total != floor_total:
                    print(f"! {label} '{text}': API total {total}, floor total {floor_total}", file=sys.stderr)
            api_ms, floor_ms, totals = [], [], []
            for _ in range(args.iterations):
                text = rng.choice(typed)
                elapsed, total = api_query(conn, vs_id, text)
                api_ms.append(elapsed)
                totals.append(total)
            for text in typed * args.floor_repeat:
                floor_ms.append(floor_query(floor, systems[vs_id], text)[0])
            resource = client[DATABASE]["resources"].find_one({"_id": f"CodeSystem/{cs_id}"})
            index = CodeSystemIndex(resource["res"] if resource else {}, key=cs_id, vid=1)
            match_ms = []
            for text in typed * 20:
                started = time.perf_counter()
                index.matching(text)
                match_ms.append((time.perf_counter() - started) * 1000)
            results[label] = {"value_set": vs_id, "concepts": len(index), "cold_ms": cold,
                              "mean_total": statistics.mean(totals), "api": summary(api_ms),
                              "floor": summary(floor_ms), "matching": summary(match_ms)}
    finally:
        if process is not None:
            stop_process(process)
        client.close()
        server.close()

    env = environment()
    if args.json:
        print(json.dumps({"command": command, "environment": env, "load_seconds": load_seconds,
                          "results": results}, indent=1))
        return 0
    print(f"command: {command}")
    print(f"machine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}; commit {env['commit']}")
    if load_seconds is not None:
        print(f"emr terminology load (every shipped list, first load): {load_seconds:.1f} s")
    print(f"{args.iterations} requests per group, {PAGE} rows a page; ms\n")
    print(f"{'group':30} {'codes':>6} {'total':>6} {'cold':>6}  {'API p50':>7} {'p95':>6} {'max':>6}  "
          f"{'floor p50':>9} {'p95':>6}  {'ratio p50':>9} {'p95':>5}  {'match p50':>9}")
    for label, r in results.items():
        a, f, m = r["api"], r["floor"], r["matching"]
        print(f"{label:30} {r['concepts']:>6} {r['mean_total']:>6.0f} {r['cold_ms']:>6.0f}  {a['p50']:>7.2f} "
              f"{a['p95']:>6.2f} {a['max']:>6.1f}  {f['p50']:>9.2f} {f['p95']:>6.2f}  "
              f"{a['p50'] / f['p50']:>9.2f} {a['p95'] / f['p95']:>5.2f}  {m['p50']:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
