"""Ingest benchmark: Synthea patient bundles posted as FHIR transactions, against the driver's insert_many.

Why: a referral or a district hospital's history arrives as transaction Bundles,
and what that costs only means something next to the database doing the same
writes without the server. One run measures, on the same embedded SecantusDB:

- API: every Synthea patient bundle of ../shared/data POSTed to /fhir as a
  transaction (facility and staff batch bundles loaded first, untimed), with 1
  client and with `--concurrency` clients (different bundles at once);
- floor: PyMongo `insert_many` of the very documents the server stores for those
  resources (built with the store's own `current_document`, so index values and
  all; the same indexes exist), one `insert_many` per bundle;
- `emr import` of the same files (when the import command is installed), as IT
  staff would run it.

Figures are medians over `--repeat` runs, each into a fresh database.

    .venv/bin/python bench/ingest.py [--repeat 3] [--concurrency 4] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from pymongo import MongoClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emr.embedded_db import ensure_embedded  # noqa: E402
from fhir_store import indexes  # noqa: E402
from fhir_store.documents import current_document  # noqa: E402
from fhir_store.search.indexing import indexer  # noqa: E402
from fhir_store.search.registry import load_registry  # noqa: E402
from fhir_store.validation import validate_resource  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "synthea"


def bundles() -> tuple[list[Path], list[Path]]:
    """(facility/staff batch bundles, patient transaction bundles)."""
    setup, patients = [], []
    for path in sorted(DATA.glob("*/*.json")):
        (setup if path.name.startswith(("hospital", "practitioner")) else patients).append(path)
    return setup, patients


def start_api(uri: str, database: str) -> tuple[subprocess.Popen[bytes], int]:
    code = ("import sys, uvicorn; from emr.app import create_app; from emr.settings import Settings; "
            "uvicorn.run(create_app(Settings(mongodb_uri=sys.argv[1], database=sys.argv[2])), "
            "host='127.0.0.1', port=int(sys.argv[3]), log_level='warning')")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    process = subprocess.Popen([sys.executable, "-c", code, uri, database, str(port)], cwd=REPO)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/fhir/metadata")
            if conn.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the API did not start")


def post_bundle(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/fhir", body=body, headers={"Content-Type": "application/fhir+json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise SystemExit(f"bundle refused: {response.status} {payload[:300]!r}")
    return len(orjson.loads(payload)["entry"])


def api_run(uri: str, database: str, setup: list[Path], patients: list[Path], clients: int) -> float:
    process, port = start_api(uri, database)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for path in setup:
            post_bundle(conn, path.read_bytes())
        bodies = [path.read_bytes() for path in patients]
        queue = list(bodies)
        lock = threading.Lock()
        written = [0]

        def worker() -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                n = post_bundle(c, body)
                with lock:
                    written[0] += n

        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return written[0] / (time.perf_counter() - start)
    finally:
        process.terminate()
        process.wait()


def driver_documents(patients: list[Path]) -> list[list[dict[str, Any]]]:
    """Per bundle, the documents the store writes for its resources (new ids, as POST entries get)."""
    out = []
    index = indexer(load_registry())
    for path in patients:
        docs = []
        for entry in json.loads(path.read_text())["entry"]:
            resource = validate_resource(entry["resource"])
            rid = str(uuid.uuid4())
            docs.append(current_document(resource["resourceType"], rid, 1, resource, "create", index))
        out.append(docs)
    return out


def driver_run(uri: str, database: str, per_bundle: list[list[dict[str, Any]]]) -> float:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    coll = client[database]["resources"]
    coll.create_indexes(indexes.RESOURCES)
    start = time.perf_counter()
    for docs in per_bundle:
        coll.insert_many([dict(d) for d in docs], ordered=False)
    elapsed = time.perf_counter() - start
    client.close()
    return sum(len(d) for d in per_bundle) / elapsed


def import_run(uri: str, database: str, setup: list[Path], patients: list[Path]) -> float | None:
    env = {**os.environ, "EMR_MONGODB_URI": uri, "EMR_DATABASE": database}
    probe = subprocess.run([sys.executable, "-m", "emr.cli", "import", "--help"], env=env, cwd=REPO,
                           capture_output=True)
    if probe.returncode != 0:
        return None
    subprocess.run([sys.executable, "-m", "emr.cli", "import", *map(str, setup), "--json"], env=env, cwd=REPO,
                   capture_output=True, check=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "emr.cli", "import", *map(str, patients), "--json"], env=env,
                          cwd=REPO, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"emr import failed: {done.stderr.decode()[-500:]}")
    resources = sum(len(json.loads(p.read_text())["entry"]) for p in patients)
    return resources / elapsed  # includes the command's start-up, as IT staff experience it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    setup, patients = bundles()
    n_resources = sum(len(json.loads(p.read_text())["entry"]) for p in patients)
    per_bundle = driver_documents(patients)
    results: dict[str, list[float]] = {"api_1": [], f"api_{args.concurrency}": [], "driver": [], "import": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = ensure_embedded(Path(tmp))
        try:
            for run in range(args.repeat):
                results["driver"].append(driver_run(server.uri, f"ingest_driver_{run}", per_bundle))
                results["api_1"].append(api_run(server.uri, f"ingest_api1_{run}", setup, patients, 1))
                results[f"api_{args.concurrency}"].append(
                    api_run(server.uri, f"ingest_apic_{run}", setup, patients, args.concurrency))
                imported = import_run(server.uri, f"ingest_import_{run}", setup, patients)
                if imported is not None:
                    results["import"].append(imported)
                if not args.json:
                    print(f"run {run + 1}/{args.repeat} done", file=sys.stderr)
        finally:
            server.close()
    median = {k: round(statistics.median(v), 1) for k, v in results.items() if v}
    floor = median["driver"]
    summary = {
        "resources": n_resources,
        "bundles": len(patients),
        "resources_per_second": median,
        "ratio_to_driver": {k: round(v / floor, 3) for k, v in median.items() if k != "driver"},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{n_resources} resources in {len(patients)} Synthea patient bundles; median of {args.repeat} runs")
    print(f"{'path':<28}{'resources/s':>14}{'x driver':>10}")
    for key, value in median.items():
        ratio = summary["ratio_to_driver"].get(key, 1.0)  # type: ignore[attr-defined]
        print(f"{key:<28}{value:>14.1f}{ratio:>10.3f}")
    print(f"command: {summary['command']}")


if __name__ == "__main__":
    main()
