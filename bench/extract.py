"""How long write-time work takes per resource: validation, and search-index extraction.

Extraction runs on every write for every search parameter of the type, so it
must stay a small part of a write. Run: .venv/bin/python bench/extract.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_store.search.extract import extract  # noqa: E402
from fhir_store.search.registry import load_registry  # noqa: E402
from fhir_store.validation import validate_resource  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def load() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((DATA / "synthea").glob("*/*.json")):
        out += [e["resource"] for e in json.loads(path.read_text())["entry"]]
    out += [json.loads(p.read_text()) for p in sorted((DATA / "fhir-r4-examples").glob("*.json"))]
    return out


def per_resource_us(work: Any, resources: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for resource in resources:
        work(resource)
    return (time.perf_counter() - start) / len(resources) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    resources = load()
    reg = load_registry()
    extract(reg, resources[0])  # warm caches
    validate_times = [per_resource_us(validate_resource, resources) for _ in range(args.repeat)]
    extract_times = [per_resource_us(lambda r: extract(reg, r), resources) for _ in range(args.repeat)]
    entries = [len(extract(reg, r)[0]) for r in resources]
    result = {
        "resources": len(resources),
        "validate_us_median": round(statistics.median(validate_times), 1),
        "extract_us_median": round(statistics.median(extract_times), 1),
        "index_keys_per_resource_median": statistics.median(entries),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['resources']} resources (Synthea + HL7 examples), median of {args.repeat} runs")
    print(f"  validation  {result['validate_us_median']:8.1f} us/resource")
    print(f"  extraction  {result['extract_us_median']:8.1f} us/resource "
          f"({result['index_keys_per_resource_median']} index keys per resource, median)")
    print(f"command: {result['command']}")


if __name__ == "__main__":
    main()
