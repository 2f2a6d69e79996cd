"""Every sample resource in ../shared/data can be written through the API and read back unchanged.

The HL7 R4 examples are PUT with their own ids, as R4B (the default) and as R4
(`fhirVersion=4.0` in the media types). The Synthea bundles are loaded
resource by resource: every entry is POSTed (the server assigns the id; the
bundles' `urn:uuid:` references are left as they are) and a sample is also PUT
with its original id. Each write must succeed (never a 5xx, never a 4xx), and a
read of the written resource must give back exactly what was sent, apart from the
server-owned `meta.versionId` and `meta.lastUpdated` (and `id`, after a POST).
Numbers are compared as written on the wire (`1.50` is not `1.5`). Value types are
compared strictly, so `true` never equals `1`.

These tests use a server with a database of their own, so the shared session
database is not filled with thousands of resources, and the fixed ids of the
examples cannot clash with other tests.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED_DATA

JSON = {"Content-Type": "application/fhir+json"}
EXAMPLES = SHARED_DATA / "fhir-r4-examples"
SYNTHEA = SHARED_DATA / "synthea"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
SYNTHEA_FILES = sorted(SYNTHEA.glob("*/*.json"))
# Of each Synthea file, the first resource of every type and every PUT_STRIDE-th entry is also PUT.
PUT_STRIDE = 20
# A failing test shows at most this many problems in full (and counts the rest).
SHOWN_PROBLEMS = 15

Resource = dict[str, Any]
R4 = "application/fhir+json; fhirVersion=4.0"


class Written(str):
    """A JSON number as its text, so a comparison sees `1.50` and `1.5` as different."""


def exact_json(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Written, parse_int=Written)


def as_sent(resource: Resource) -> Resource:
    """What `httpx`'s `json=` puts on the wire, numbers as written there."""
    return exact_json(json.dumps(resource))  # type: ignore[no-any-return]


# ---- comparison -----------------------------------------------------------------------------

def without_server_meta(resource: Resource, *, drop_id: bool = False) -> Resource:
    """The resource without `meta.versionId` / `meta.lastUpdated` (and `id` if asked); other meta stays."""
    out = {k: v for k, v in resource.items() if k != "meta" and not (drop_id and k == "id")}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return out


def differences(sent: Any, got: Any, path: str = "") -> Iterator[str]:
    """Where `got` differs from `sent`, as FHIRPath-like paths with both values."""
    if isinstance(sent, dict) and isinstance(got, dict):
        for key in sorted(sent.keys() | got.keys()):
            here = f"{path}.{key}" if path else key
            if key not in got:
                yield f"{here}: sent {_short(sent[key])}, missing from the read"
            elif key not in sent:
                yield f"{here}: not sent, read back {_short(got[key])}"
            else:
                yield from differences(sent[key], got[key], here)
    elif isinstance(sent, list) and isinstance(got, list):
        if len(sent) != len(got):
            yield f"{path}: sent {len(sent)} items, read back {len(got)}: sent {_short(sent)}, got {_short(got)}"
        else:
            for i, (a, b) in enumerate(zip(sent, got, strict=True)):
                yield from differences(a, b, f"{path}[{i}]")
    elif type(sent) is not type(got) or sent != got:
        yield f"{path}: sent {_short(sent)}, read back {_short(got)}"


def _short(value: Any, limit: int = 200) -> str:
    text = str(value) if isinstance(value, Written) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _body(response: httpx.Response, limit: int = 2000) -> str:
    text = response.text
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


# ---- loading --------------------------------------------------------------------------------

@dataclass
class Problems:
    """What went wrong while loading one file; the test fails listing them."""

    source: str
    items: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def check(self) -> None:
        if not self.items:
            return
        shown = "\n\n".join(self.items[:SHOWN_PROBLEMS])
        more = len(self.items) - SHOWN_PROBLEMS
        tail = f"\n\n... and {more} more problems" if more > 0 else ""
        pytest.fail(f"{self.source}: {len(self.items)} problems\n\n{shown}{tail}", pytrace=False)


def write_status_problem(response: httpx.Response, expected: tuple[int, ...]) -> str | None:
    """Why a write's answer is wrong, with the server's body (an OperationOutcome for a 4xx), or None."""
    if response.status_code in expected:
        return None
    kind = "SERVER ERROR" if response.status_code >= 500 else "rejected"
    return f"{kind}: HTTP {response.status_code}, expected {' or '.join(map(str, expected))}; body: {_body(response)}"


def read_back(fhir: httpx.Client, resource_type: str, resource_id: str, sent: Resource, *,
              drop_id: bool, where: str, problems: Problems, headers: dict[str, str] | None = None) -> bool:
    """GET the resource and compare it with what was sent (numbers as written); True when it round-tripped."""
    response = fhir.get(f"/{resource_type}/{resource_id}", headers=headers)
    if response.status_code != 200:
        problems.add(where, f"read {resource_type}/{resource_id} gave HTTP {response.status_code}: {_body(response)}")
        return False
    got = exact_json(response.text)
    if got.get("id") != resource_id:
        problems.add(where, f"read {resource_type}/{resource_id} returned id {got.get('id')!r}")
        return False
    diffs = list(differences(without_server_meta(sent, drop_id=drop_id), without_server_meta(got, drop_id=drop_id)))
    if diffs:
        problems.add(where, f"{resource_type}/{resource_id} read back differently:\n  " + "\n  ".join(diffs[:20]))
        return False
    return True


def created_id(response: httpx.Response, resource_type: str) -> str | None:
    """The id in a create's Location header (`.../fhir/Type/id/_history/1`), or None if it is not one."""
    parts = httpx.URL(response.headers.get("location", "")).path.split("/")
    if len(parts) >= 5 and parts[-4] == resource_type and parts[-2] == "_history":
        return parts[-3]
    return None


def short_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# ---- tests ----------------------------------------------------------------------------------

def test_sample_data_is_all_there() -> None:
    """Guards the parametrised tests against silently running on nothing."""
    assert len(EXAMPLE_FILES) == 69, f"expected 69 HL7 examples in {EXAMPLES}, found {len(EXAMPLE_FILES)}"
    assert len(SYNTHEA_FILES) == 24, f"expected 24 Synthea bundles under {SYNTHEA}, found {len(SYNTHEA_FILES)}"


def test_comparison_sees_real_differences() -> None:
    """The round-trip check ignores only server-owned meta, and is strict about value types."""
    sent = {"resourceType": "Observation", "id": "a", "meta": {"profile": ["p"], "versionId": "9"},
            "valueBoolean": True, "component": [{"valueInteger": 1}]}
    same = {**sent, "meta": {"profile": ["p"], "versionId": "1", "lastUpdated": "2025-01-01T00:00:00.000Z"}}
    assert list(differences(without_server_meta(sent), without_server_meta(same))) == []
    assert list(differences(exact_json('{"v": 1.50}'), exact_json('{"v": 1.5}'))) == ["v: sent 1.50, read back 1.5"]
    changed = {**sent, "meta": {}, "valueBoolean": 1, "component": [{"valueInteger": 1.0}, {}]}
    assert list(differences(without_server_meta(sent), without_server_meta(changed))) == [
        "component: sent 1 items, read back 2: sent [{\"valueInteger\": 1}], got [{\"valueInteger\": 1.0}, {}]",
        "meta: sent {\"profile\": [\"p\"]}, missing from the read",
        "valueBoolean: sent true, read back 1",
    ]
    assert list(differences({"a": [1]}, {"a": [1.0]})) == ["a[0]: sent 1, read back 1.0"]
    assert "id" not in without_server_meta(sent, drop_id=True)


@pytest.mark.parametrize("release", ["R4B", "R4"])
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_hl7_example_put_and_read_back(own_fhir: httpx.Client, path: Path, release: str) -> None:
    resource: Resource = exact_json(path.read_bytes())
    rtype, rid = resource["resourceType"], resource["id"]
    problems = Problems(f"fhir-r4-examples/{path.name} ({rtype}/{rid}) as {release}")
    media = R4 if release == "R4" else JSON["Content-Type"]
    response = own_fhir.put(f"/{rtype}/{rid}", content=path.read_bytes(), headers={"Content-Type": media,
                                                                                   "Accept": media})
    if (problem := write_status_problem(response, (200, 201))) is not None:
        problems.add(f"PUT {rtype}/{rid}", problem)
    elif release == "R4" and "fhirVersion=4.0" not in response.headers["content-type"]:
        problems.add(f"PUT {rtype}/{rid}", f"answered as {response.headers['content-type']}, not as R4")
    else:
        read_back(own_fhir, rtype, rid, resource, drop_id=False, where="read back", problems=problems,
                  headers={"Accept": media})
    problems.check()


@pytest.mark.parametrize("path", SYNTHEA_FILES, ids=short_name)
def test_synthea_bundle_post_put_and_read_back(own_fhir: httpx.Client, path: Path) -> None:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    entries: list[Resource] = bundle["entry"]
    problems = Problems(f"synthea/{short_name(path)} ({len(entries)} entries)")
    sent_types: Counter[str] = Counter()
    loaded_types: Counter[str] = Counter()
    new_ids: set[str] = set()
    put_sample: list[int] = []

    for index, entry in enumerate(entries):
        resource: Resource = entry["resource"]
        rtype = resource["resourceType"]
        where = f"entry[{index}] {rtype} (fullUrl {entry.get('fullUrl')})"
        if sent_types[rtype] == 0 or index % PUT_STRIDE == 0:
            put_sample.append(index)
        sent_types[rtype] += 1
        response = own_fhir.post(f"/{rtype}", json=resource, headers=JSON)
        if (problem := write_status_problem(response, (201,))) is not None:
            problems.add(f"POST {where}", problem)
            continue
        rid = created_id(response, rtype)
        if rid is None:
            problems.add(f"POST {where}", f"no usable Location header: {response.headers.get('location')!r}")
            continue
        if rid in new_ids:
            problems.add(f"POST {where}", f"the server assigned id {rid} twice")
            continue
        new_ids.add(rid)
        if read_back(own_fhir, rtype, rid, as_sent(resource), drop_id=True, where=f"read after POST {where}",
                     problems=problems):
            loaded_types[rtype] += 1

    for index in put_sample:
        resource = entries[index]["resource"]
        rtype, rid = resource["resourceType"], resource["id"]
        where = f"entry[{index}] {rtype}/{rid}"
        response = own_fhir.put(f"/{rtype}/{rid}", json=resource, headers=JSON)
        if (problem := write_status_problem(response, (200, 201))) is not None:
            problems.add(f"PUT {where}", problem)
            continue
        read_back(own_fhir, rtype, rid, as_sent(resource), drop_id=False, where=f"read after PUT {where}",
                  problems=problems)

    problems.check()
    assert loaded_types == sent_types, f"{short_name(path)}: loaded {dict(loaded_types)} of {dict(sent_types)}"
    assert loaded_types.total() == len(entries), f"{short_name(path)}: loaded {loaded_types.total()} of {len(entries)}"
