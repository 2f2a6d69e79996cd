"""One huge request does not hold up the others: a ward terminal's read answers while a 1.4 MB Patient is
validated.

The server runs as IT staff run it (`emr serve`, its own process), and the huge create comes from another
process (curl), so nothing but the server itself can delay the reads measured here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import LiveServer, make_settings
from tests.serving import free_port, sign_in, start_serve, stop_serve

NAMES = 30_000  # ~1.4 MB of JSON: seconds of validation on this machine
SLOWEST_READ = 0.75  # seconds; before validation left the event loop, reads waited for the whole create


def test_a_read_answers_while_a_huge_resource_is_validated(tmp_path: Path) -> None:
    port = free_port()
    serve = start_serve(tmp_path / "data", port)
    try:
        headers = sign_in(tmp_path / "data", port)
        base = f"http://127.0.0.1:{port}/fhir"
        with httpx.Client(base_url=base, headers=headers, timeout=60) as fhir:
            small = fhir.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Lê"}]}).json()
            huge = {"resourceType": "Patient",
                    "name": [{"family": f"Nguyễn{i}", "given": ["Văn", "An"]} for i in range(NAMES)]}
            body = tmp_path / "huge.json"
            body.write_text(json.dumps(huge, ensure_ascii=False), encoding="utf-8")
            fhir.get(f"/Patient/{small['id']}")  # the connection open, the read path warm
            post = subprocess.Popen(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", f"{base}/Patient",
                 "-H", "Content-Type: application/fhir+json", "-H", f"Authorization: {headers['Authorization']}",
                 "--data-binary", f"@{body}"], stdout=subprocess.PIPE, text=True)
            started = time.monotonic()
            reads: list[float] = []
            while post.poll() is None:
                before = time.monotonic()
                assert fhir.get(f"/Patient/{small['id']}").status_code == 200
                reads.append(time.monotonic() - before)
                time.sleep(0.02)
            huge_took = time.monotonic() - started
            status = post.stdout.read() if post.stdout else ""
    finally:
        stop_serve(serve)
    # The create itself is refused or stored (its search index may pass the per-resource limit): either way
    # it kept the server busy for seconds, and the reads went on meanwhile.
    assert status in ("201", "413"), status
    assert huge_took > 2 * SLOWEST_READ, f"the huge create took only {huge_took:.2f} s: the test proves nothing"
    assert len(reads) >= 5, reads
    assert max(reads) < SLOWEST_READ, (f"a read took {max(reads):.2f} s while the huge create ran "
                                       f"({huge_took:.1f} s); median {statistics.median(reads):.3f} s")


def test_a_request_over_the_time_limit_is_answered_503_and_stores_nothing(mongo_uri: str) -> None:
    with LiveServer(make_settings(mongo_uri, request_time_limit=1.0)) as server, server.client() as fhir:
        family = f"Quá{uuid.uuid4().hex[:8]}"
        huge = {"resourceType": "Patient", "name": [{"family": family, "given": [f"Văn{i}"]} for i in range(NAMES)]}
        started = time.monotonic()
        answer = fhir.post("/Patient", json=huge, timeout=60)
        took = time.monotonic() - started
        assert answer.status_code == 503, answer.text[:300]
        issue = answer.json()["issue"][0]
        assert issue["code"] == "timeout" and "EMR_REQUEST_TIME_LIMIT" in issue["diagnostics"]
        assert took < 4, took
        time.sleep(6)  # long enough for the cut-off validation to have finished, had it gone on to store
        assert fhir.get("/Patient", params={"family": family, "_summary": "count"}).json()["total"] == 0
        assert fhir.post("/Patient", json={"resourceType": "Patient"}).status_code == 201
