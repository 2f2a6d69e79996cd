"""The audit record of every access: one FHIR `AuditEvent` (R4 shape) per interaction, Bundle entries included.

Runs first in the pipeline, so it also records what authentication and
authorisation refuse. Each event says what was done (`type` rest, `subtype`
the FHIR interaction, `action` C/R/U/D/E), when, with what `outcome`, by whom
(`agent`: user or client, role, network address) and to what (`entity`: the
patients whose record it touched, the resources, the query of a search).

A transaction's entries are recorded with the transaction, once it is over:
if it did not commit, they are recorded as not done. Successful look-ups in
code lists and export status polls are not recorded (they show nothing of a
patient); their refusals are.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from fhir_store import AuditTrail, Interaction, Result, ResultT, StoreError, format_instant, now
from security.authorisation import is_public

MOST_RESOURCES = 100  # per event; a bigger answer names its first ones and says how many there were

_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "RESTful Operation"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_ACTIONS = {"create": "C", "read": "R", "vread": "R", "history-instance": "R", "history-type": "R",
            "history-system": "R", "update": "U", "patch": "U", "delete": "D"}
_QUIET_OPERATIONS = frozenset({"lookup", "validate-code", "expand", "translate", "export-poll-status"})
USER_SYSTEM = "urn:angiang-emr:user"
CLIENT_SYSTEM = "urn:angiang-emr:client"
LOGIN = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114",
         "display": "User Authentication"}


def outcome_code(status: int) -> str:
    return "0" if status < 400 else "4" if status < 500 else "8"


def agent(kind: str, name: str, role: str | None, address: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "who": {"identifier": {"system": USER_SYSTEM if kind == "user" else CLIENT_SYSTEM, "value": name},
                "display": name},
        "altId": name, "name": name, "requestor": True}
    if role:
        found["role"] = [{"text": role}]
    if address:
        found["network"] = {"address": address, "type": "2"}
    return found


class AuditRecorder:
    """The interceptor. `patients_of` names the patients a resource belongs to (the store's compartments)."""

    def __init__(self, trail: AuditTrail, patients_of: Callable[[dict[str, Any]], list[str]], *,
                 site: str, observer: str) -> None:
        self.trail = trail
        self.patients_of = patients_of
        self.source = {"site": site, "observer": {"display": observer},
                       "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                                 "code": "4", "display": "Application Server"}]}

    async def __call__(self, it: Interaction, call_next: Callable[[Interaction], Awaitable[ResultT]]) -> ResultT:
        if is_public(it):
            return await call_next(it)
        try:
            result = await call_next(it)
        except StoreError as exc:
            await self._done(it, self.event(it, exc.status, str(exc), None))
            raise
        except Exception as exc:
            await self._done(it, self.event(it, 500, f"server error ({type(exc).__name__})", None))
            raise
        if not (result.status_code < 400 and it.kind == "operation" and it.operation in _QUIET_OPERATIONS):
            await self._done(it, self.event(it, result.status_code, None, result))
        return result

    async def _done(self, it: Interaction, event: dict[str, Any]) -> None:
        bundle = it.bundle
        if bundle is not None and bundle.kind == "transaction":
            bundle.context.setdefault("audit_entries", {})[it.entry] = event  # recorded with the transaction
            return
        entries = it.context.pop("audit_entries", {})
        if entries and event["outcome"] != "0":
            for entry in entries.values():
                entry["outcome"] = event["outcome"]
                entry["outcomeDesc"] = "not done: the transaction it was part of did not commit"
        await self.trail.record([event, *(entries[i] for i in sorted(entries))])

    # ---- the event -----------------------------------------------------------------------------

    def event(self, it: Interaction, status: int, problem: str | None, result: Result | None) -> dict[str, Any]:
        subtype = {"search-compartment": "search-type"}.get(it.kind, it.kind)
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "type": _REST,
            "subtype": [{"system": _INTERACTION, "code": subtype}],
            "action": _ACTIONS.get(it.kind, "E"),
            "recorded": format_instant(now()),
            "outcome": outcome_code(status),
            "agent": [self._agent(it)],
            "source": self.source,
        }
        if problem or status >= 400:
            event["outcomeDesc"] = f"{status}: {problem or 'refused'}"[:1000]
        entities = self._entities(it, result if status < 400 else None)
        if entities:
            event["entity"] = entities
        return event

    @staticmethod
    def _agent(it: Interaction) -> dict[str, Any]:
        caller = it.caller
        if caller is None:
            found = {"who": {"display": "not signed in"}, "requestor": True}
            if it.address:
                found["network"] = {"address": it.address, "type": "2"}
            return found
        return agent(caller.kind, caller.name, caller.role, it.address or caller.address)

    def _entities(self, it: Interaction, result: Result | None) -> list[dict[str, Any]]:
        resources = _resources(getattr(result, "resource", None)) if result is not None else []
        touched = [f"{r['resourceType']}/{r['id']}" for r in resources if isinstance(r.get("id"), str)]
        if not touched and it.resource_type and it.resource_id:
            touched = [f"{it.resource_type}/{it.resource_id}"]
        patients: list[str] = []
        for resource in resources:
            patients += self.patients_of(resource)
        if it.compartment is not None and it.compartment[0] == "Patient":
            patients.append(f"Patient/{it.compartment[1]}")
        if it.resource_type == "Patient" and it.resource_id:
            patients.append(f"Patient/{it.resource_id}")
        entities: list[dict[str, Any]] = [{"what": {"reference": p},
                     "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                     "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}}
                    for p in dict.fromkeys(patients)]
        unique = list(dict.fromkeys(touched))
        entities += [{"what": {"reference": ref},
                      "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                      "role": {"system": _OBJECT_ROLE, "code": "4", "display": "Domain Resource"}}
                     for ref in unique[:MOST_RESOURCES]]
        if len(unique) > MOST_RESOURCES:
            entities[-1]["description"] = f"the first {MOST_RESOURCES} of {len(unique)} resources"
        if it.query or it.operation:
            described = f"${it.operation}" if it.operation else it.kind
            query: dict[str, Any] = {"type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                     "role": {"system": _OBJECT_ROLE, "code": "24", "display": "Query"},
                     "description": f"{described} {it.resource_type or ''}".strip()}
            if it.query:
                query["query"] = base64.b64encode(urlencode(it.query).encode()).decode()
            entities.append(query)
        return entities


def _resources(body: Any) -> list[dict[str, Any]]:
    """The resources an answer carries: itself, or a Bundle's entries (never an OperationOutcome)."""
    if not isinstance(body, dict) or body.get("resourceType") == "OperationOutcome":
        return []
    if body.get("resourceType") == "Bundle" and body.get("type") in ("searchset", "history", "collection"):
        return [e["resource"] for e in body.get("entry") or []
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") != "OperationOutcome"]
    if body.get("resourceType") == "Bundle" and str(body.get("type", "")).endswith("-response"):
        return []  # each entry has its own event
    return [body]
