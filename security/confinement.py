"""Partner hospitals reach only their exchange with us, whatever their scopes say.

A partner's client (a `Caller` with a `facility`) works on the Tasks addressed
to or from its facility: those whose `owner` or `requester` is its
Organization here, named by reference (`Organization/12`) or by its facility
code (`identifier` with the `ma-cskcb` system). Nothing else: a read or search
of any other type is refused (403) rather than answered with an empty page, so
a misconfigured partner sees at once why it gets nothing. (The referral
packages a partner delivers join this list with the referral exchange.)

- A search of Task is narrowed to its Tasks (`Interaction.within`, applied by
  the store's search) and takes plain parameters only: `_include`,
  `_revinclude`, `_has` and chains could each reach past its Tasks.
- A read, vread or history of a Task that is not its own answers 404, as for a
  Task that does not exist: a partner learns nothing of the others.
- A write is checked by `partner_writes`, a store write check, so it sees the
  resource as it will be stored (a PATCH's result, each transaction entry): the
  Task must stay its own, and only a Task that was its own may be changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fhir_store import (
    Caller,
    FhirStore,
    Forbidden,
    Interaction,
    Issue,
    ResourceGone,
    ResourceNotFound,
    ResultT,
    WriteContext,
)

#: The identifier system of facility codes issued by Vietnam Social Security (VN Core).
FACILITY_SYSTEM = "http://fhir.hl7.org.vn/core/sid/ma-cskcb"
#: What a partner's client may hold: its Tasks, created, read, updated and searched.
PARTNER_SCOPE = "system/Task.crus"
PARTNER_TYPES = frozenset({"Task"})
#: The Task elements that say whom a Task is between.
_PARTIES = ("owner", "requester")
_KINDS = frozenset({"read", "vread", "history-instance", "search-type", "create", "update", "patch",
                    "transaction", "batch"})
_READS = frozenset({"read", "vread", "history-instance"})
_REACHING = ("_include", "_revinclude", "_has", "_contained")


def is_partner(caller: Caller | None) -> bool:
    return caller is not None and caller.facility is not None


def belongs(resource: dict[str, Any], caller: Caller) -> bool:
    """Whether a Task is between us and the caller's facility."""
    for party in _PARTIES:
        ref = resource.get(party)
        if not isinstance(ref, dict):
            continue
        if caller.organization and ref.get("reference") == caller.organization:
            return True
        ident = ref.get("identifier")
        if isinstance(ident, dict) and ident.get("system") == FACILITY_SYSTEM and ident.get("value") == caller.facility:
            return True
    return False


def _outside(caller: Caller, what: str) -> Forbidden:
    return Forbidden(f"{caller.name} is the client of partner facility {caller.facility}: it reaches only the "
                     f"Tasks between that facility and us, and {what}")


class Confinement:
    """The interceptor (after authorisation): narrows and checks what a partner's client reads."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store

    async def __call__(self, it: Interaction, call_next: Callable[[Interaction], Awaitable[ResultT]]) -> ResultT:
        caller = it.caller
        if caller is None or not is_partner(caller) or it.kind in ("transaction", "batch"):
            return await call_next(it)  # a Bundle's entries come through here one by one
        if it.kind not in _KINDS or it.resource_type not in PARTNER_TYPES:
            target = f"{it.resource_type or 'the server'}" + (f" ${it.operation}" if it.operation else "")
            raise _outside(caller, f"not {it.kind} of {target}")
        if it.kind == "search-type":
            reaching = [k for k, _ in it.query if k.partition(":")[0] in _REACHING or "." in k]
            if reaching:
                raise _outside(caller, f"its searches take plain parameters only, not {', '.join(reaching)}")
            it.within = {key: values for party in _PARTIES for key, values in (
                (party, [caller.organization or ""]),
                (f"{party}:identifier", [f"{FACILITY_SYSTEM}|{caller.facility}"]))}
        elif it.kind in _READS and it.resource_id is not None:
            await self._own(caller, str(it.resource_type), it.resource_id)
        return await call_next(it)

    async def _own(self, caller: Caller, resource_type: str, resource_id: str) -> None:
        unknown = ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        try:
            version = await self.store.read(resource_type, resource_id)
        except ResourceGone:
            raise unknown from None
        if version.resource is None or not belongs(version.resource, caller):
            raise unknown


async def partner_writes(resource: dict[str, Any], context: WriteContext) -> list[Issue]:
    """The store write check: a partner writes only its own Tasks, and they stay its own."""
    caller = context.caller
    if caller is None or not is_partner(caller):
        return []
    rtype = resource.get("resourceType")
    if rtype not in PARTNER_TYPES:
        raise _outside(caller, f"may not write a {rtype}")
    if not belongs(resource, caller):
        raise _outside(caller, f"this {rtype} would not be one: its owner or requester must be "
                               f"{caller.organization} (or the identifier {FACILITY_SYSTEM}|{caller.facility})")
    resource_id = resource.get("id")
    if isinstance(resource_id, str):
        current = await context.read(str(rtype), resource_id)
        if current is not None and current.resource is not None and not belongs(current.resource, caller):
            raise _outside(caller, f"{rtype}/{resource_id} is not one of them")
    return []
