"""Access and refresh tokens: short-lived signed JWTs to use, long-lived opaque tokens to renew them.

- **Access tokens** are JWTs (ES256, `joserfc`) carrying who (`sub`: `user/alice` or
  `client/<id>`), the role and the granted scopes, valid `access_ttl`. Verifying
  one needs no database read: the signature, the expiry, and the revocation list.
  A verified token is remembered by its text, so a terminal's next requests cost
  a dictionary lookup, not a signature check.
- **Refresh tokens** are random strings, stored only as their SHA-256, rotated at
  each use; a refresh token used twice (stolen and replayed) ends the whole
  sign-in session (RFC 6819 §5.2.2.3).
- **Revocation** (RFC 7009, disabling a user or client) writes to `revocations`;
  every process reloads that small list at most every `REVOCATION_REFRESH`
  seconds, so a revoked token stops working everywhere within that time and at
  once in the process that revoked it.
- **Signing keys** live in `signing_keys`, their private part encrypted (AES-GCM)
  with the server's secret (`EMR_SECRET_KEY`, or `secret.key` in the data
  directory); `rotate_key` adds a new one, old ones keep verifying until their
  tokens have expired.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from fhir_store import now

ALGORITHM = "ES256"
REVOCATION_REFRESH = 0.5  # seconds
_CACHE_LIMIT = 10_000


class InvalidToken(Exception):
    """A token that does not (or no longer) grant anything; the message says why, for the audit trail."""


@dataclass(frozen=True)
class Subject:
    """Whom a token is for: a user with a role, or a system client."""

    kind: str  # "user" | "client"
    id: str
    role: str | None
    scope: str
    facility: str | None = None  # a partner hospital's client: its facility code
    organization: str | None = None  # and its Organization here ("Organization/12")

    @property
    def sub(self) -> str:
        return f"{self.kind}/{self.id}"


@dataclass(frozen=True)
class Claims:
    subject: Subject
    jti: str
    issued: float
    expires: float


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"access_token": self.access_token, "token_type": "Bearer",
                               "expires_in": self.expires_in, "scope": self.scope}
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
        return out


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], secret: Callable[[], bytes], *, issuer: str,
                 access_ttl: timedelta = timedelta(minutes=15), refresh_ttl: timedelta = timedelta(hours=12)) -> None:
        self.keys = db["signing_keys"]
        self.refresh_tokens = db["refresh_tokens"]
        self.revocations = db["revocations"]
        self._secret = secret  # read when a key is first sealed or opened, so commands that sign nothing
        self._sealer: AESGCM | None = None  # never make a secret file
        self.issuer = issuer
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._keyset: KeySet | None = None
        self._signing: ECKey | None = None
        self._verified: dict[str, Claims] = {}
        self._revoked_jti: set[str] = set()
        self._revoked_before: dict[str, float] = {}
        self._revocations_loaded = 0.0
        self._lock = asyncio.Lock()

    async def ensure_indexes(self) -> None:
        await self.refresh_tokens.create_index([("expires", ASCENDING)], expireAfterSeconds=0)
        await self.refresh_tokens.create_index([("family", ASCENDING)])
        await self.refresh_tokens.create_index([("sub", ASCENDING)])
        await self.revocations.create_index([("expires", ASCENDING)], expireAfterSeconds=0)

    # ---- keys -----------------------------------------------------------------------------------

    @property
    def _aead(self) -> AESGCM:
        if self._sealer is None:
            self._sealer = AESGCM(hashlib.sha256(self._secret()).digest())
        return self._sealer

    def _seal(self, key: ECKey) -> dict[str, Any]:
        nonce = secrets.token_bytes(12)
        private = json.dumps(key.as_dict(private=True)).encode()
        return {"nonce": nonce, "sealed": self._aead.encrypt(nonce, private, key.kid.encode() if key.kid else None)}

    def _open(self, doc: dict[str, Any]) -> ECKey:
        try:
            private = self._aead.decrypt(doc["nonce"], doc["sealed"], doc["_id"].encode())
        except InvalidTag:
            raise RuntimeError(f"Signing key {doc['_id']} cannot be opened: EMR_SECRET_KEY is not the one it was "
                               "sealed with (every API process of a site needs the same one)") from None
        return ECKey.import_key({**json.loads(private), "kid": doc["_id"]})

    async def rotate_key(self) -> str:
        """Add a new signing key and sign with it from now on; returns its key id."""
        kid = f"{now():%Y%m%d}-{secrets.token_hex(4)}"
        key = ECKey.generate_key("P-256", parameters={"kid": kid})
        await self.keys.insert_one({"_id": kid, "alg": ALGORITHM, "created": now(), **self._seal(key)})
        self._keyset = None
        return kid

    async def _load_keys(self) -> tuple[ECKey, KeySet]:
        if self._keyset is None or self._signing is None:
            docs = [doc async for doc in self.keys.find({}).sort("created", -1)]
            if not docs:
                await self.rotate_key()
                docs = [doc async for doc in self.keys.find({}).sort("created", -1)]
            keys = [self._open(doc) for doc in docs]
            self._signing, self._keyset = keys[0], KeySet(list(keys))
        return self._signing, self._keyset

    # ---- issuing --------------------------------------------------------------------------------

    async def issue(self, subject: Subject, *, refresh: bool, family: str | None = None) -> TokenPair:
        key, _ = await self._load_keys()
        issued = int(time.time())
        ttl = int(self.access_ttl.total_seconds())
        claims = {"iss": self.issuer, "sub": subject.sub, "iat": issued, "exp": issued + ttl,
                  "jti": secrets.token_urlsafe(12), "scope": subject.scope, "role": subject.role}
        if subject.facility:
            claims |= {"facility": subject.facility, "organization": subject.organization}
        access = jwt.encode({"alg": ALGORITHM, "kid": key.kid}, claims, key, algorithms=[ALGORITHM])
        refresh_token = None
        if refresh:
            refresh_token = secrets.token_urlsafe(32)
            await self.refresh_tokens.insert_one({
                "_id": _digest(refresh_token), "sub": subject.sub, "kind": subject.kind, "id": subject.id,
                "role": subject.role, "scope": subject.scope, "family": family or secrets.token_urlsafe(12),
                "created": now(), "expires": now() + self.refresh_ttl})
        return TokenPair(access, ttl, subject.scope, refresh_token)

    async def refresh(self, refresh_token: str) -> tuple[Subject, str]:
        """The subject of a refresh token, which is used up; a second use ends its whole family."""
        doc = await self.refresh_tokens.find_one_and_update(
            {"_id": _digest(refresh_token)}, {"$set": {"used": now()}})
        if doc is None or doc["expires"].timestamp() <= time.time():
            raise InvalidToken("the refresh token is unknown or expired")
        if doc.get("used") is not None:
            await self.refresh_tokens.delete_many({"family": doc["family"]})
            raise InvalidToken("the refresh token was already used: the sign-in session is ended")
        return Subject(doc["kind"], doc["id"], doc.get("role"), doc["scope"]), doc["family"]

    # ---- checking -------------------------------------------------------------------------------

    async def verify(self, token: str) -> Claims:
        await self._fresh_revocations()
        claims = self._verified.get(token)
        if claims is None:
            claims = await self._verify_signature(token)
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = claims
        if claims.expires <= time.time():
            self._verified.pop(token, None)
            raise InvalidToken("the access token has expired")
        if claims.jti in self._revoked_jti or claims.issued <= self._revoked_before.get(claims.subject.sub, -1.0):
            raise InvalidToken("the access token was revoked")
        return claims

    async def _verify_signature(self, token: str, *, reload: bool = True) -> Claims:
        _, keyset = await self._load_keys()
        try:
            decoded = jwt.decode(token, keyset, algorithms=[ALGORITHM])
        except (JoseError, ValueError):
            if reload and self._unknown_kid(token, keyset):  # a key another process added since we loaded
                self._keyset = None
                return await self._verify_signature(token, reload=False)
            raise InvalidToken("the access token is not valid: damaged, or not signed by this server") from None
        c = decoded.claims
        if c.get("iss") != self.issuer or not isinstance(c.get("sub"), str) or "/" not in c["sub"]:
            raise InvalidToken("the access token was not issued by this server")
        kind, _, ident = c["sub"].partition("/")
        return Claims(Subject(kind, ident, c.get("role"), str(c.get("scope", "")), c.get("facility"),
                              c.get("organization")), str(c.get("jti", "")),
                      float(c.get("iat", 0)), float(c.get("exp", 0)))

    @staticmethod
    def _unknown_kid(token: str, keyset: KeySet) -> bool:
        try:
            kid = jws.extract_compact(token.encode()).protected.get("kid")
        except (JoseError, ValueError):
            return False
        return isinstance(kid, str) and all(k.kid != kid for k in keyset.keys)

    # ---- revoking -------------------------------------------------------------------------------

    async def revoke(self, token: str) -> None:
        """RFC 7009: a refresh token ends its session; an access token stops working. Unknown: nothing."""
        doc = await self.refresh_tokens.find_one({"_id": _digest(token)})
        if doc is not None:
            await self.refresh_tokens.delete_many({"family": doc["family"]})
            return
        try:
            claims = await self._verify_signature(token)
        except InvalidToken:
            return
        expires = datetime.fromtimestamp(claims.expires).astimezone()
        await self.revocations.update_one({"_id": f"jti:{claims.jti}"}, {"$set": {"expires": expires}}, upsert=True)
        self._revoked_jti.add(claims.jti)

    async def revoke_subject(self, sub: str) -> None:
        """End every token of a user or client issued until now (disabled, password reset)."""
        moment = time.time()
        await self.refresh_tokens.delete_many({"sub": sub})
        await self.revocations.update_one(
            {"_id": f"sub:{sub}"},
            {"$set": {"before": moment, "expires": now() + self.access_ttl + timedelta(minutes=1)}}, upsert=True)
        self._revoked_before[sub] = moment

    async def _fresh_revocations(self) -> None:
        if time.monotonic() - self._revocations_loaded < REVOCATION_REFRESH:
            return
        async with self._lock:
            if time.monotonic() - self._revocations_loaded < REVOCATION_REFRESH:
                return
            jti: set[str] = set()
            before: dict[str, float] = {}
            async for doc in self.revocations.find({}):
                kind, _, value = doc["_id"].partition(":")
                if kind == "jti":
                    jti.add(value)
                else:
                    before[value] = float(doc["before"])
            self._revoked_jti, self._revoked_before = jti, before
            self._revocations_loaded = time.monotonic()
