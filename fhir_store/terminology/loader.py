"""Write the resources read from source files into the store, one list at a time.

Each resource is written with update-or-create by its id, so a run that finds a
list already loaded and unchanged makes no new version, a corrected file of the
same edition makes a new version of the same resource, and a new edition (a new
id) is kept beside the old one: records coded against the old edition keep
their meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhir_store.store import FhirStore
from fhir_store.terminology.sources import Source

_ORDER = {"CodeSystem": 0, "ValueSet": 1, "ConceptMap": 2}


@dataclass(frozen=True)
class Loaded:
    """One resource of a load, and what the write did."""

    resource_type: str
    id: str
    url: str
    version: str | None
    concepts: int
    outcome: str  # created | updated | unchanged
    version_id: int

    def to_json(self) -> dict[str, Any]:
        return {"resourceType": self.resource_type, "id": self.id, "url": self.url, "version": self.version,
                "concepts": self.concepts, "outcome": self.outcome, "versionId": self.version_id}


@dataclass
class SourceReport:
    name: str
    files: list[str]
    notes: list[str]
    resources: list[Loaded] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.name, "files": self.files, "notes": self.notes,
                "resources": [r.to_json() for r in self.resources]}


Progress = Callable[[Source, dict[str, Any]], None]


async def load(store: FhirStore, sources: list[Source], progress: Progress | None = None) -> list[SourceReport]:
    reports = []
    for source in sources:
        report = SourceReport(source.name, [str(f) for f in source.files], list(source.notes))
        for resource in sorted(source.resources, key=lambda r: _ORDER.get(r["resourceType"], 3)):
            result = await store.update(resource, resource_type=resource["resourceType"], resource_id=resource["id"])
            outcome = "created" if result.created else "updated" if result.changed else "unchanged"
            report.resources.append(Loaded(resource["resourceType"], resource["id"], resource.get("url", ""),
                                           resource.get("version"), _concepts(resource), outcome,
                                           result.version.version_id))
            if progress is not None:
                progress(source, resource)
        reports.append(report)
    return reports


def _concepts(resource: dict[str, Any]) -> int:
    if resource["resourceType"] == "CodeSystem":
        return int(resource.get("count") or len(resource.get("concept", [])))
    if resource["resourceType"] == "ConceptMap":
        return sum(len(g.get("element", [])) for g in resource.get("group", []))
    return 0
