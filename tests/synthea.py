"""Synthea transaction bundles from ../shared/data, turned into plain resources with resolved references.

Search tests load Synthea data resource by resource with PUT, independently of the
transaction and import code they are not testing: each entry keeps the id of its
`urn:uuid:` fullUrl, and every `urn:uuid:` reference becomes `Type/id`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import SHARED_DATA

SMART = SHARED_DATA / "synthea" / "smart-on-fhir"


def bundle_file(prefix: str) -> Path:
    return next(SMART.glob(f"{prefix}*.json"))


def resources(path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    keys: dict[str, str] = {}
    for entry in bundle["entry"]:
        uuid = entry["fullUrl"].removeprefix("urn:uuid:")
        keys[entry["fullUrl"]] = f"{entry['resource']['resourceType']}/{uuid}"
    out = []
    for entry in bundle["entry"]:
        resource = _rewrite(entry["resource"], keys)
        resource["id"] = keys[entry["fullUrl"]].split("/", 1)[1]
        out.append(resource)
    return out


def _rewrite(value: Any, keys: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (keys.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, keys))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, keys) for v in value]
    return value
