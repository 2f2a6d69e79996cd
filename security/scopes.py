"""SMART on FHIR scopes (v2, with v1's `read`/`write` understood): what a token lets its holder do.

A scope is `context/Type.permissions`: context `patient`, `user` or `system`; a
resource type or `*`; permissions from `cruds` (create, read, update, delete,
search). SMART v1's `.read` is `rs`, `.write` is `cud`, `.*` is `cruds`.
Granular scopes (`?category=…`) are not supported and are refused where they
are asked for, never silently widened.

One rule of our own: `*` never covers `AuditEvent`. The audit trail is granted
only by name (`user/AuditEvent.rs`), so a clinician's `user/*.rs` does not read
who looked at what.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PERMISSIONS = "cruds"
CONTEXTS = ("patient", "user", "system")
#: Types that `*` leaves out: granted only by name.
NAMED_ONLY = frozenset({"AuditEvent"})

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


class ScopeError(ValueError):
    """A scope this server does not understand or grant."""


@dataclass(frozen=True)
class Scope:
    context: str
    resource_type: str  # a type or "*"
    permissions: str  # a subset of "cruds", in that order

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.permissions}"

    def covers(self, resource_type: str, permission: str) -> bool:
        if permission not in self.permissions:
            return False
        if self.resource_type == "*":
            return resource_type not in NAMED_ONLY
        return self.resource_type == resource_type


def parse_scope(text: str) -> Scope:
    """One scope from its text; `ScopeError` says what is wrong with it."""
    if "?" in text:
        raise ScopeError(f"'{text}': granular scopes (with '?') are not supported")
    match = _SCOPE.match(text)
    if match is None:
        raise ScopeError(f"'{text}' is not a SMART scope such as user/Patient.rs or system/*.cruds")
    context, rtype, perms = match.groups()
    perms = _V1.get(perms, perms)
    if not perms or any(p not in PERMISSIONS for p in perms) or len(set(perms)) != len(perms):
        raise ScopeError(f"'{text}': permissions are letters of 'cruds' (or v1's read, write, *)")
    return Scope(context, rtype, "".join(p for p in PERMISSIONS if p in perms))


#: Scopes that grant no resource access (OpenID Connect, SMART launch and refresh): understood, left out.
_NO_ACCESS = frozenset({"openid", "profile", "fhirUser", "offline_access", "online_access", "launch"})


def parse_scopes(text: str) -> list[Scope]:
    """A space-separated list; OpenID and launch scopes are left out, anything else unknown is refused."""
    found = []
    for word in text.split():
        if word in _NO_ACCESS or word.startswith("launch/"):
            continue
        found.append(parse_scope(word))
    return found


@dataclass(frozen=True)
class Grant:
    """The scopes a caller holds, and the question asked of them."""

    scopes: tuple[Scope, ...]

    @classmethod
    def of(cls, scopes: Iterable[Scope]) -> Grant:
        return cls(tuple(scopes))

    def allows(self, resource_type: str, permission: str) -> bool:
        return any(s.covers(resource_type, permission) for s in self.scopes)

    def text(self) -> str:
        return " ".join(str(s) for s in self.scopes)


def narrow(held: Iterable[Scope], asked: Iterable[Scope]) -> list[Scope]:
    """The part of `asked` that `held` allows: each asked scope cut down to the permissions held for it.

    A scope asked for a type (`user/Patient.rs`) under a held wildcard (`user/*.cruds`) keeps its type;
    a wildcard asked under named held scopes gives those named scopes.
    """
    held = list(held)
    granted: list[Scope] = []
    for want in asked:
        for have in held:
            if have.context != want.context:
                continue
            if want.resource_type == "*":
                rtype = have.resource_type
            elif have.resource_type == "*" and want.resource_type not in NAMED_ONLY or \
                    have.resource_type == want.resource_type:
                rtype = want.resource_type
            else:
                continue
            perms = "".join(p for p in PERMISSIONS if p in want.permissions and p in have.permissions)
            if perms and Scope(want.context, rtype, perms) not in granted:
                granted.append(Scope(want.context, rtype, perms))
    return granted
