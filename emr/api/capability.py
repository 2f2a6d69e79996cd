"""The CapabilityStatement, generated from the registered routes and the resource models.

Nothing here is a hand-written claim: interactions come from `routes.CAPABILITIES`
(one entry per route that exists), resource types from the R4B models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import emr
from emr.api.routes import CAPABILITIES
from fhir_store.resource_types import FHIR_VERSION, resource_types
from fhir_store.store import format_instant


@cache
def _resource_entries() -> tuple[dict[str, Any], ...]:
    type_codes = sorted({c.code for c in CAPABILITIES if c.level in ("type", "instance")})
    conditional = {c.code for c in CAPABILITIES if c.conditional}
    entries = []
    for name in resource_types():
        entry: dict[str, Any] = {
            "type": name,
            "interaction": [{"code": code} for code in type_codes],
            "versioning": "versioned-update",
            "readHistory": "vread" in type_codes,
            "updateCreate": "update" in type_codes,
            "conditionalCreate": "create" in conditional,
            "conditionalRead": "full-support",
            "conditionalUpdate": "update" in conditional,
            "conditionalDelete": "single" if "delete" in conditional else "not-supported",
        }
        entries.append(entry)
    return tuple(entries)


def capability_statement(base: str) -> dict[str, Any]:
    system_codes = sorted({c.code for c in CAPABILITIES if c.level == "system" and c.code != "capabilities"})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(datetime.now(UTC)),
        "publisher": "An Giang EMR",
        "kind": "instance",
        "software": {"name": "An Giang EMR", "version": emr.__version__},
        "implementation": {"description": "An Giang EMR FHIR server", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": list(_resource_entries()),
            "interaction": [{"code": code} for code in system_codes],
        }],
    }
