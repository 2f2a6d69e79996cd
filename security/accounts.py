"""Who may sign in: staff users (name, role, argon2id password hash) and system clients (id, scopes, hashed
secret), each in its own MongoDB collection.

Nothing here keeps a secret in clear: a password or client secret is seen once,
hashed, and dropped. Disabling keeps the account (its audit trail names it) and
is what IT staff do when someone leaves; `TokenService.revoke_subject` then ends
its tokens.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_store import now
from security.passwords import check_strength, dummy_hash, hash_password, needs_rehash, verify_password
from security.roles import role
from security.scopes import Scope, parse_scopes

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    disabled: bool
    created: datetime

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "role": self.role, "disabled": self.disabled,
                "created": self.created.isoformat()}


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    scopes: tuple[Scope, ...]
    disabled: bool
    created: datetime
    facility: str | None = None  # a partner hospital's client: the facility it acts for (`confinement.py`)
    organization: str | None = None

    def to_json(self) -> dict[str, Any]:
        found = {"client_id": self.client_id, "name": self.name, "scope": " ".join(map(str, self.scopes)),
                 "disabled": self.disabled, "created": self.created.isoformat()}
        return found | ({"facility": self.facility, "organization": self.organization} if self.facility else {})


def normalise_username(username: str) -> str:
    name = unicodedata.normalize("NFC", username).strip().lower()
    if not _USERNAME.match(name):
        raise AccountError(f"'{username}' is not a usable user name: 2 to 64 of a-z, 0-9, '.', '_', '-', "
                           "starting with a letter or digit (no accents)")
    return name


def _user(doc: dict[str, Any]) -> User:
    return User(doc["_id"], doc["role"], bool(doc.get("disabled")), doc["created"])


def _client(doc: dict[str, Any]) -> Client:
    return Client(doc["_id"], doc["name"], tuple(parse_scopes(doc["scope"])), bool(doc.get("disabled")),
                  doc["created"], doc.get("facility"), doc.get("organization"))


class Accounts:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.users = db["users"]
        self.clients = db["clients"]

    # ---- users ---------------------------------------------------------------------------------

    async def add_user(self, username: str, role_name: str, password: str) -> User:
        name = normalise_username(username)
        try:
            role(role_name)
        except KeyError as exc:
            raise AccountError(str(exc.args[0])) from None
        check_strength(password, name)
        doc = {"_id": name, "role": role_name, "hash": hash_password(password), "disabled": False,
               "created": now(), "password_changed": now()}
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError:
            raise AccountError(f"There is already a user '{name}'") from None
        return _user(doc)

    async def user(self, username: str) -> User | None:
        try:
            name = normalise_username(username)
        except AccountError:
            return None
        doc = await self.users.find_one({"_id": name})
        return _user(doc) if doc is not None else None

    async def list_users(self) -> list[User]:
        return [_user(doc) async for doc in self.users.find({}, {"hash": False}).sort("_id", 1)]

    async def count_users(self) -> int:
        return await self.users.count_documents({})

    async def set_disabled(self, username: str, disabled: bool) -> User:
        doc = await self.users.find_one_and_update({"_id": normalise_username(username)},
                                                   {"$set": {"disabled": disabled, "updated": now()}},
                                                   return_document=True)
        if doc is None:
            raise AccountError(f"There is no user '{username}'")
        return _user(doc)

    async def reset_password(self, username: str, password: str) -> User:
        name = normalise_username(username)
        check_strength(password, name)
        doc = await self.users.find_one_and_update(
            {"_id": name}, {"$set": {"hash": hash_password(password), "password_changed": now()}},
            return_document=True)
        if doc is None:
            raise AccountError(f"There is no user '{username}'")
        return _user(doc)

    async def check_password(self, username: str, password: str) -> User | None:
        """The user, if the password is theirs and the account is enabled (a missing user costs the same)."""
        try:
            name = normalise_username(username)
        except AccountError:
            name = ""
        doc = await self.users.find_one({"_id": name}) if name else None
        if doc is None:
            verify_password(dummy_hash(), password)
            return None
        if not verify_password(doc["hash"], password) or doc.get("disabled"):
            return None
        if needs_rehash(doc["hash"]):
            await self.users.update_one({"_id": name}, {"$set": {"hash": hash_password(password)}})
        return _user(doc)

    # ---- clients ------------------------------------------------------------------------------

    async def add_client(self, name: str, scope: str, *, facility: str | None = None,
                         organization: str | None = None) -> tuple[Client, str]:
        """A new system client; returns it with its secret, which is never shown again.

        A partner hospital's client names the `facility` it acts for and that facility's `organization`
        here ("Organization/12"): it is then confined to its exchange with us (`confinement.py`).
        """
        scopes = parse_scopes(scope)
        if not scopes or any(s.context != "system" for s in scopes):
            raise AccountError("A client's scopes are system scopes, e.g. --scope 'system/Task.cru system/Patient.r'")
        if (facility is None) != (organization is None) or (organization and not organization.startswith(
                "Organization/")):
            raise AccountError("A partner client names both its facility code and its Organization/id here")
        client_id = secrets.token_urlsafe(12)
        secret = secrets.token_urlsafe(32)
        doc = {"_id": client_id, "name": name, "scope": " ".join(map(str, scopes)), "hash": hash_password(secret),
               "disabled": False, "created": now()}
        if facility:
            doc |= {"facility": facility, "organization": organization}
        await self.clients.insert_one(doc)
        return _client(doc), secret

    async def client(self, client_id: str) -> Client | None:
        doc = await self.clients.find_one({"_id": client_id})
        return _client(doc) if doc is not None else None

    async def list_clients(self) -> list[Client]:
        return [_client(doc) async for doc in self.clients.find({}, {"hash": False}).sort("name", 1)]

    async def set_client_disabled(self, client_id: str, disabled: bool) -> Client:
        doc = await self.clients.find_one_and_update({"_id": client_id}, {"$set": {"disabled": disabled}},
                                                     return_document=True)
        if doc is None:
            raise AccountError(f"There is no client '{client_id}'")
        return _client(doc)

    async def check_client_secret(self, client_id: str, secret: str) -> Client | None:
        doc = await self.clients.find_one({"_id": client_id})
        if doc is None:
            verify_password(dummy_hash(), secret)
            return None
        if not verify_password(doc["hash"], secret) or doc.get("disabled"):
            return None
        return _client(doc)
