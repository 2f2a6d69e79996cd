"""The roles a hospital gives its staff, each as the SMART scopes it may hold.

A user's token carries at most its role's scopes (less when the terminal asks
for less). The lists are deliberately short and readable: `emr users roles`
prints them, and `docs/security.md` explains them to IT staff.
"""

from __future__ import annotations

from dataclasses import dataclass

from security.scopes import Scope, parse_scope

#: Every role may look codes up (ICD-10 titles, value sets): nothing about a patient is in them.
_TERMINOLOGY = ("user/CodeSystem.rs", "user/ValueSet.rs", "user/ConceptMap.rs")
#: Who and where: the directory every clinical role reads.
_DIRECTORY = ("user/Organization.rs", "user/Practitioner.rs", "user/PractitionerRole.rs", "user/Location.rs")


@dataclass(frozen=True)
class Role:
    name: str
    title: str
    does: str
    scopes: tuple[Scope, ...]
    #: May manage users, clients and partners (the `emr users` / `emr clients` commands and their API).
    manages_accounts: bool = False
    #: May run bulk exports (`$export`): whole databases or many records leave the hospital that way.
    bulk_export: bool = False


def _role(name: str, title: str, does: str, scopes: tuple[str, ...], *, admin: bool = False) -> Role:
    return Role(name, title, does, tuple(parse_scope(s) for s in scopes), manages_accounts=admin, bulk_export=admin)


ROLES: dict[str, Role] = {r.name: r for r in (
    _role("clinician", "Bác sĩ — doctor",
          "reads and searches the whole record; creates and updates clinical data (diagnoses, orders, notes, "
          "referrals); never deletes (a mistaken entry is marked entered-in-error)",
          ("user/*.crus",)),
    _role("nurse", "Điều dưỡng — nurse",
          "reads and searches the whole record; records vital signs, observations, medication given, "
          "procedures, specimens and tasks",
          ("user/*.rs", "user/Observation.cu", "user/MedicationAdministration.cu", "user/Immunization.cu",
           "user/Procedure.cu", "user/Specimen.cu", "user/Task.cu", "user/Communication.cu",
           "user/QuestionnaireResponse.cu", "user/DocumentReference.c", "user/Encounter.u")),
    _role("clerk", "Tiếp đón — registration clerk",
          "registers patients and matches them (search by name, CCCD, birth date), admits and schedules "
          "encounters and appointments, records insurance; reads nothing clinical",
          ("user/Patient.crus", "user/RelatedPerson.crus", "user/Person.crus", "user/Coverage.crus",
           "user/Encounter.crus", "user/Appointment.crus", "user/EpisodeOfCare.crus", *_DIRECTORY,
           *_TERMINOLOGY)),
    _role("it-admin", "Quản trị CNTT — IT administrator",
          "every FHIR permission (imports, bulk exports, repairs, deletes), reading the audit trail to archive it, "
          "and managing users, clients and partners",
          ("user/*.cruds", "user/AuditEvent.rs"), admin=True),
    _role("auditor", "Kiểm tra — auditor",
          "reads and searches the audit trail (who looked at or changed which record, when, from where); "
          "reads nothing clinical",
          ("user/AuditEvent.rs", *_DIRECTORY[:2])),
)}


def role(name: str) -> Role:
    found = ROLES.get(name)
    if found is None:
        raise KeyError(f"There is no role '{name}'; the roles are {', '.join(ROLES)}")
    return found
