"""The CapabilityStatement, generated from the registered routes and the resource models.

Nothing here is a hand-written claim: interactions come from `routing.CAPABILITIES`
(one entry per route that exists), resource types from the R4B models, search
parameters from the same registry the search uses.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import emr
from emr.api.auth import REVOKE_PATH, TOKEN_PATH
from emr.api.routing import CAPABILITIES
from emr.api.versions import DEFAULT, RELEASES
from fhir_store import MODIFIERS, Registry, format_instant, now, r4_differences
from fhir_store import compartment_definitions as compartments
from fhir_store import known_resource_types as resource_types

#: Canonical definitions of the operations the routes implement, by (name, level).
OPERATION_DEFINITIONS = {
    ("everything", "Patient"): "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ("match", "Patient"): "http://hl7.org/fhir/OperationDefinition/Patient-match",
    ("export", "system"): "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    ("export", "Patient"): "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
    ("export", "Group"): "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
    ("lookup", "CodeSystem"): "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup",
    ("validate-code", "CodeSystem"): "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code",
    ("expand", "ValueSet"): "http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
    ("validate-code", "ValueSet"): "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
    ("translate", "ConceptMap"): "http://hl7.org/fhir/OperationDefinition/ConceptMap-translate",
}


#: The audit trail is read and searched, never written or changed through the API.
_AUDIT_INTERACTIONS = ("read", "vread", "search-type")


def _operations(level: str) -> list[dict[str, str]]:
    names = sorted({c.code for c in CAPABILITIES if c.level == f"operation:{level}"})
    return [{"name": name, "definition": OPERATION_DEFINITIONS[(name, level)]} for name in names]


@cache
def _resource_entries(reg: Registry) -> tuple[dict[str, Any], ...]:
    """Built once per registry (a few ms per type): the routes are all registered by the time it is asked."""
    type_codes = sorted({c.code for c in CAPABILITIES if c.level in ("type", "instance")})
    conditional = {c.code for c in CAPABILITIES if c.conditional}
    revincludes: dict[str, list[str]] = {}
    for source in resource_types():
        for param in reg.params(source).values():
            if param.type == "reference":
                for target in param.targets:
                    revincludes.setdefault(target, []).append(f"{source}:{param.code}")
    entries = []
    for name in resource_types():
        params = sorted(reg.params(name).values(), key=lambda p: p.code)
        codes = [c for c in type_codes if c in _AUDIT_INTERACTIONS] if name == "AuditEvent" else type_codes
        entry: dict[str, Any] = {
            "type": name,
            "interaction": [{"code": code} for code in codes],
            "versioning": "versioned-update",
            "readHistory": "vread" in type_codes,
            "updateCreate": "update" in type_codes,
            "conditionalCreate": "create" in conditional,
            "conditionalRead": "full-support",
            "conditionalUpdate": "update" in conditional,
            "conditionalDelete": "single" if "delete" in conditional else "not-supported",
        }
        operations = _operations(name)
        if operations:
            entry["operation"] = operations
        if "search-type" in type_codes:
            entry["searchInclude"] = ["*"] + [f"{name}:{p.code}" for p in params if p.type == "reference"]
            entry["searchRevInclude"] = sorted(revincludes.get(name, []))
            entry["searchParam"] = [_search_param(p.code, p.url, p.type) for p in params]
        entries.append(entry)
    return tuple(entries)


def _search_param(code: str, url: str, ptype: str) -> dict[str, Any]:
    modifiers = ", ".join(f":{m}" for m in MODIFIERS.get(ptype, ()))
    chain = "; chainable" if ptype == "reference" else ""
    return {"name": code, "definition": url, "type": ptype,
            "documentation": f"Modifiers: {modifiers or 'none'}{chain}"}


def _security(base: str) -> dict[str, Any]:
    """SMART on FHIR: where the token and revocation endpoints are (the oauth-uris extension)."""
    origin = base.rstrip("/").removesuffix("/fhir")
    return {
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": "token", "valueUri": f"{origin}{TOKEN_PATH}"},
                                     {"url": "revoke", "valueUri": f"{origin}{REVOKE_PATH}"}]}],
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}]}],
        "description": "OAuth 2.0 bearer tokens (SMART on FHIR v2 scopes); every access is recorded as an "
                       "AuditEvent. See /fhir/.well-known/smart-configuration.",
    }


def capability_statement(base: str, registry: Registry, release: str = DEFAULT) -> dict[str, Any]:
    """What this server does, in the FHIR version asked for (R4 leaves out the types that differ from R4B)."""
    left_out = r4_differences() if release != DEFAULT else {}
    system_codes = sorted({c.code for c in CAPABILITIES if c.level == "system" and c.code != "capabilities"})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(now()),
        "publisher": "An Giang EMR",
        "kind": "instance",
        "software": {"name": "An Giang EMR", "version": emr.__version__},
        "implementation": {"description": "An Giang EMR FHIR server", "url": base},
        "fhirVersion": RELEASES[release],
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": _security(base),
            "resource": [e for e in _resource_entries(registry) if e["type"] not in left_out],
            "interaction": [{"code": code} for code in system_codes],
            "operation": _operations("system"),
            "compartment": [f"http://hl7.org/fhir/CompartmentDefinition/{c.lower()}" for c in compartments()]
            if any(c.level == "compartment" for c in CAPABILITIES) else [],
        }],
    }
