"""What a route handler works with: the interaction, the HTTP request, and typed services.

The app's services are set once, by the lifespan (`emr/app.py`), as one typed
`ApiServices` on `app.state.services`; handlers reach them through `Call`, never
through loose `app.state` attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from emr.api import versions
from emr.api.formats import is_pretty, read_json
from emr.settings import Settings
from fhir_store import BundleProcessor, ExportWorker, FhirStore, Interaction, Pipeline, TerminologyService
from security import Security


@dataclass(frozen=True)
class ApiServices:
    settings: Settings
    pipeline: Pipeline
    store: FhirStore
    terminology: TerminologyService
    bundles: BundleProcessor
    export_worker: ExportWorker
    security: Security


def services_of(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


@dataclass
class Call:
    """One request being handled: its FHIR interaction, its HTTP request, the app's services."""

    it: Interaction
    request: Request
    services: ApiServices
    release: str = versions.DEFAULT  # the FHIR version negotiated with the client ("4.0" or "4.3")

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def store(self) -> FhirStore:
        return self.services.store

    @property
    def base(self) -> str:
        """This server's FHIR base URL: `EMR_BASE_URL`, else the one the request came in on."""
        configured = self.settings.base_url
        return configured.rstrip("/") if configured else f"{str(self.request.base_url).rstrip('/')}/fhir"

    @property
    def pretty(self) -> bool:
        return is_pretty(self.request)

    @property
    def query(self) -> list[tuple[str, str]]:
        return list(self.request.query_params.multi_items())

    async def json(self, *, patch: bool = False) -> Any:
        """The body, refused (415) when it holds a resource type an R4 client cannot send us as it is."""
        body = await read_json(self.request, self.settings.max_body_bytes, patch=patch)
        if not patch:
            release = versions.body_release(self.request, self.release) or self.release
            versions.check_resources(release, versions.resources_in(body), 415)
        return body
