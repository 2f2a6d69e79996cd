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
from pathlib import Path

import httpx

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
