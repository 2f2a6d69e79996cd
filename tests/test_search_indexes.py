"""Every search a ward terminal does often is answered from an index: `explain` must show no collection scan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from fhir_store import FhirStore
from tests.conftest import SHARED_DATA, unique

pytestmark = pytest.mark.anyio

COMMON_SEARCHES = [  # (type, parameters, the index that must drive the query)
    ("Patient", [("name", "nguyen")], "name"),
    ("Patient", [("name", "tran van")], "name"),
    ("Patient", [("family", "tran")], "family"),
    ("Patient", [("given", "binh")], "given"),
    ("Patient", [("identifier", "http://fhir.hl7.org.vn/core/sid/cccd|089080000001")], "identifier"),
    ("Patient", [("identifier", "089080000001")], "identifier"),
    ("Patient", [("birthdate", "1980-05-01")], "birthdate"),
    ("Patient", [("phone", "0912345678")], "phone"),
    ("Patient", [("name", "nguyen"), ("birthdate", "1980")], "name"),
    ("Patient", [("_id", "p1")], "type_id"),
    ("Patient", [("_lastUpdated", "gt2024-01-01"), ("_sort", "-_lastUpdated")], "last_updated"),
    ("Observation", [("patient", "Patient/p1"), ("date", "ge2020-01-01"), ("_sort", "-date")], "patient_date"),
    ("Observation", [("subject", "Patient/p1"), ("_sort", "-date")], "subject_date"),
    ("Observation", [("patient", "p1"), ("code", "http://loinc.org|2339-0")], "patient_date"),
    ("Observation", [("code", "http://loinc.org|2339-0"), ("date", "ge2020")], "code_date"),
    ("Observation", [("encounter", "Encounter/e1")], "encounter"),
    ("Condition", [("patient", "Patient/p1"), ("code", "http://hl7.org/fhir/sid/icd-10|I10")], "patient_date"),
    ("MedicationRequest", [("patient", "Patient/p1"), ("_sort", "-_lastUpdated")], "patient_date"),
    ("Encounter", [("patient", "Patient/p1"), ("date", "ge2024")], "patient_date"),
    ("Task", [("status", "requested"), ("authored-on", "ge2024-01-01"), ("_sort", "-authored-on")],
     "status"),
    ("ServiceRequest", [("status", "active"), ("authored", "ge2024-01-01")], "status"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(mongo_uri: str) -> AsyncIterator[FhirStore]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = FhirStore(client[f"test_{unique('ix').replace('-', '_')}"])
    await store.ensure_indexes()
    # real data, so the planner has real choices
    bundle = json.loads(next((SHARED_DATA / "synthea" / "smart-on-fhir").glob("Alfreda*.json")).read_text())
    for entry in bundle["entry"]:
        await store.create(entry["resource"])
    yield store
    await store.close()
    await client.drop_database(store.db.name)
    await client.close()


def stages(plan: dict[str, Any]) -> list[str]:
    found = [plan.get("stage", "")]
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            found += stages(plan[key])
    for child in plan.get("inputStages", []):
        found += stages(child)
    return found


def index_names(plan: dict[str, Any]) -> list[str]:
    names = [plan["indexName"]] if "indexName" in plan else []
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            names += index_names(plan[key])
    for child in plan.get("inputStages", []):
        names += index_names(child)
    return names


@pytest.mark.parametrize(("resource_type", "params", "index"), COMMON_SEARCHES,
                         ids=[f"{t}?{'&'.join(f'{k}={v}' for k, v in p)}" for t, p, _ in COMMON_SEARCHES])
async def test_common_search_uses_an_index(store: FhirStore, resource_type: str,
                                           params: list[tuple[str, str]], index: str) -> None:
    explained = await store.explain(resource_type, params)
    # an aggregate's explain puts the query plan of its leading $match in the first stage
    plan = explained["stages"][0]["$cursor"]["queryPlanner"]["winningPlan"]
    used = stages(plan)
    assert "COLLSCAN" not in used, json.dumps(plan, default=str, indent=1)
    assert "IXSCAN" in used, json.dumps(plan, default=str, indent=1)
    # the index of the query's selective field, not a walk over every resource of the type
    assert index_names(plan) == [index], json.dumps(plan, default=str, indent=1)
