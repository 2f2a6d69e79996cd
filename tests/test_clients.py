"""Widely used Python FHIR clients work against the server as their users call them: counts, paging, reads.

fhirpy's `count()` asks `_count=0&_totalMethod=count` and reads `Bundle.total`; its `fetch_all()` and
iteration follow `next` links; fhirclient (SMART's) reads and searches with its own R4 models.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from fhirclient import client as smart_client
from fhirclient.models.observation import Observation as SmartObservation
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import AsyncFHIRClient, SyncFHIRClient

from tests.conftest import LiveServer

OBSERVATIONS = 7
FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def bearer(module_server: LiveServer) -> str:
    """The clients sign in as a ward terminal would: a clinician's access token."""
    return f"Bearer {module_server.sign_in('clinician')}"


@pytest.fixture(scope="module")
def chart(module_server: LiveServer) -> Iterator[tuple[str, str, list[str]]]:
    """A patient with OBSERVATIONS observations: (base URL, patient id, observation ids)."""
    tag = uuid.uuid4().hex[:8]
    with module_server.client() as fhir:
        patient = {"resourceType": "Patient", "name": [{"family": "Lê", "given": ["Thị", "Hoa"]}],
                   "identifier": [{"system": "http://fhir.hl7.org.vn/core/sid/cccd", "value": f"0891{tag}"}],
                   "gender": "female", "birthDate": "1990-04-12"}
        pid = fhir.post("/Patient", json=patient, headers=FHIR_JSON).json()["id"]
        ids = []
        for i in range(OBSERVATIONS):
            observation = {"resourceType": "Observation", "status": "final",
                           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                           "subject": {"reference": f"Patient/{pid}"},
                           "effectiveDateTime": f"2026-11-{10 + i:02d}T08:00:00+07:00",
                           "valueQuantity": {"value": 70 + i, "unit": "/min", "system": "http://unitsofmeasure.org",
                                             "code": "/min"}}
            response = fhir.post("/Observation", json=observation, headers=FHIR_JSON)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    yield f"{module_server.url}/fhir", pid, ids


def test_count_zero_answers_the_total_and_no_entries(chart: tuple[str, str, list[str]], bearer: str) -> None:
    base, pid, _ = chart
    bundle = httpx.get(f"{base}/Observation", params={"subject": f"Patient/{pid}", "_count": "0"},
                       headers={"Authorization": bearer}).json()
    assert bundle["total"] == OBSERVATIONS
    assert "entry" not in bundle


def test_fhirpy_sync_counts_fetches_all_and_pages(chart: tuple[str, str, list[str]], bearer: str) -> None:
    base, pid, ids = chart
    fhir = SyncFHIRClient(base, authorization=bearer)
    observations = fhir.resources("Observation").search(subject=f"Patient/{pid}")
    assert observations.count() == OBSERVATIONS
    every = observations.limit(3).fetch_all()  # three pages of at most 3, by the next links
    assert sorted(o.id for o in every) == sorted(ids)
    first_page = observations.limit(3).sort("date").fetch()
    assert [o["effectiveDateTime"][:10] for o in first_page] == ["2026-11-10", "2026-11-11", "2026-11-12"]
    patient = fhir.reference("Patient", pid).to_resource()
    assert patient["name"][0]["family"] == "Lê"


@pytest.mark.anyio
async def test_fhirpy_async_counts_and_fetches_all(chart: tuple[str, str, list[str]], bearer: str) -> None:
    base, pid, ids = chart
    fhir = AsyncFHIRClient(base, authorization=bearer)
    observations = fhir.resources("Observation").search(subject=f"Patient/{pid}")
    assert await observations.count() == OBSERVATIONS
    every = await observations.limit(2).fetch_all()
    assert sorted(o.id for o in every) == sorted(ids)
    found = [o.id async for o in observations.limit(4)]
    assert sorted(found) == sorted(ids)


def test_fhirclient_reads_and_searches(chart: tuple[str, str, list[str]], bearer: str) -> None:
    base, pid, ids = chart
    smart = smart_client.FHIRClient(settings={"app_id": "an-giang-emr-test", "api_base": base})
    smart.server.session.headers["Authorization"] = bearer
    patient = SmartPatient.read(pid, smart.server)
    assert patient.name[0].family == "Lê" and patient.birthDate.isostring == "1990-04-12"
    search = SmartObservation.where(struct={"subject": f"Patient/{pid}", "_count": "3"})
    found = list(search.perform_resources_iter(smart.server))  # three pages, by the next links
    assert sorted(o.id for o in found) == sorted(ids)
    assert all(o.subject.reference == f"Patient/{pid}" for o in found)
    first_page = next(iter(search.perform_iter(smart.server)))
    assert len(first_page.entry) == 3 and first_page.total is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
