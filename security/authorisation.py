"""Authorisation: every interaction, Bundle entries included, checked against the caller's scopes.

Decided here, in the pipeline, never route by route. An interaction needs a
permission on each type it touches *or can reveal*: a search needs `s` on its
type and on every type its `_include`, `_revinclude`, chains and `_has` reach
(a chain on `subject:Patient.name` tells which patients are called that);
`$everything` and `$export` need `r` on every type they can return; a system
search without `_type` needs `s` on every type (`*`). Refusing up front, from
the request alone, means nothing is read that is then hidden, and the answer
never silently leaves things out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import lru_cache

from fhir_store import Forbidden, Interaction, Registry, ResultT, Unauthorized, compartment_definitions
from security.roles import ROLES
from security.scopes import Grant, parse_scopes

#: Interactions that answer without a caller: what a client needs before it can sign in.
PUBLIC = frozenset({("capabilities", None), ("operation", "versions")})
#: Operations on code lists: reading the lists, nothing about a patient.
_TERMINOLOGY_OPERATIONS = frozenset({"lookup", "validate-code", "expand", "translate", "subsumes"})
#: Steps of an export already allowed at kick-off; the handler checks the job is the caller's own.
_EXPORT_STEPS = frozenset({"export-poll-status", "export-file"})

_SIMPLE = {"read": "r", "vread": "r", "history-instance": "r", "history-type": "s", "search-type": "s",
           "search-compartment": "s", "create": "c", "update": "u", "patch": "u", "delete": "d"}

Need = tuple[str, str]
_WRITES = frozenset({"create", "update", "patch", "delete"})  # (resource type or "*", permission letter)


def is_public(it: Interaction) -> bool:
    return (it.kind, it.operation) in PUBLIC


@lru_cache(maxsize=1024)
def _grant(scope: str) -> Grant:
    return Grant.of(parse_scopes(scope))


class Authoriser:
    """The interceptor; `registry` gives search parameters' targets (for includes and chains)."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry

    async def __call__(self, it: Interaction, call_next: Callable[[Interaction], Awaitable[ResultT]]) -> ResultT:
        if is_public(it):
            return await call_next(it)
        if it.caller is None:
            raise Unauthorized("This request needs a signed-in caller")
        if it.kind == "operation" and it.operation == "export" and it.caller.kind == "user" \
                and not (it.caller.role in ROLES and ROLES[it.caller.role].bulk_export):
            raise Forbidden(f"{it.caller.name} may not run bulk exports: they are for it-admin users and system "
                            "clients (a clinician reads a chart with $everything)")
        if it.resource_type == "AuditEvent" and it.kind in _WRITES:
            return await call_next(it)  # nobody may: the store answers 405, and the attempt is recorded
        grant = _grant(it.caller.scope)
        missing = sorted({n for n in self.needs(it) if not _allows(grant, n)})
        if missing:
            wanted = ", ".join(f"{p} on {t}" for t, p in missing)
            it.context["refused"] = wanted
            raise Forbidden(f"{it.caller.name} may not do this: it needs {wanted}, which "
                            f"{'the role ' + it.caller.role if it.caller.role else 'the client'} does not hold")
        return await call_next(it)

    def needs(self, it: Interaction) -> set[Need]:
        """Every (type, permission) the interaction requires."""
        rtype = it.resource_type or "*"
        needs: set[Need] = set()
        if it.kind in _SIMPLE:
            needs.add((rtype, _SIMPLE[it.kind]))
            if it.conditional:
                needs.add((rtype, "s"))
            if it.compartment is not None:
                needs.add((it.compartment[0], "r"))
        elif it.kind in ("search-system", "history-system"):
            named = [t for v in _values(it, "_type") for t in v.split(",") if t]
            needs |= {(t, "s") for t in named or ["*"]}
        elif it.kind in ("transaction", "batch"):
            return needs  # each entry is checked as the interaction it is
        elif it.kind == "operation":
            needs |= self._operation(it)
        else:
            needs.add(("*", "cruds"))  # an interaction this table does not know: only a full grant
        if it.kind in ("search-type", "search-system", "search-compartment", "history-type"):
            needs |= self._revealed(it)
        return needs

    def _operation(self, it: Interaction) -> set[Need]:
        name = it.operation or ""
        if name in _TERMINOLOGY_OPERATIONS:
            return {(it.resource_type or "CodeSystem", "r")}
        if name in _EXPORT_STEPS:
            return set()
        if name == "match":  # finds patients by what they are: reading and searching Patients
            return {("Patient", "r"), ("Patient", "s")}
        if name in ("everything", "export"):
            types = [t for v in _values(it, "_type") for t in v.split(",") if t]
            if not types:
                if it.resource_type in ("Patient", "Group"):
                    # the compartment's types, but AuditEvents: they live apart and are never returned
                    types = ["Patient", *(t for t in compartment_definitions()["Patient"] if t != "AuditEvent")]
                else:
                    types = ["*"]
            return {(t, "r") for t in types} | ({("Group", "r")} if it.resource_type == "Group" else set())
        return {("*", "cruds")}

    def _revealed(self, it: Interaction) -> set[Need]:
        """The types a search's includes, chains and `_has` can reveal."""
        registry = self._registry()
        found: set[Need] = set()
        base_type = it.resource_type
        for key, value in it.query:
            name, _, modifier = key.partition(":")
            if name == "_include":
                source, _, rest = value.partition(":")
                param_code, _, target = rest.partition(":")
                if target:
                    found.add((target, "s"))
                    continue
                params = registry.params(source) if source else {}
                chosen = params.values() if param_code == "*" else [p for c, p in params.items() if c == param_code]
                found |= {(t, "s") for p in chosen for t in p.targets}
                found.add((source or "*", "s"))
            elif name == "_revinclude":
                found.add((value.partition(":")[0] or "*", "s"))
            elif name == "_has":
                parts = key.split(":")
                found |= {(parts[i], "s") for i in range(1, len(parts), 3) if parts[i - 1] == "_has"}
            elif "." in key and base_type is not None and not key.startswith("_"):
                found |= self._chain(base_type, key)
        return found

    def _chain(self, base_type: str, key: str) -> set[Need]:
        registry = self._registry()
        found: set[Need] = set()
        types = [base_type]
        for link in key.split(".")[:-1]:
            code, _, target = link.partition(":")
            next_types: list[str] = []
            for rtype in types:
                param = registry.params(rtype).get(code)
                next_types += [target] if target else list(param.targets if param is not None else [])
            types = list(dict.fromkeys(next_types)) or ["*"]
            found |= {(t, "s") for t in types}
        return found


def _values(it: Interaction, name: str) -> list[str]:
    return [v for k, v in it.query if k == name]


def _allows(grant: Grant, need: Need) -> bool:
    rtype, permissions = need
    if rtype == "*":
        return all(any(s.resource_type == "*" and p in s.permissions for s in grant.scopes) for p in permissions)
    return all(grant.allows(rtype, p) for p in permissions)
