"""Configuration, from `EMR_*` environment variables (or a `.env` file)."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMR_", env_file=".env", extra="ignore")

    #: A MongoDB connection string (a replica set in production). Unset: the embedded server.
    mongodb_uri: str | None = None
    #: Database name inside MongoDB.
    database: str = "emr"
    #: Where the embedded database keeps its files (and its address, for other `emr` processes).
    data_dir: Path = Path("emr-data")
    #: Public base URL of the FHIR endpoint, for Location headers and Bundle links.
    #: Unset: derived from each request's Host.
    base_url: str | None = None
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 16 * 1024 * 1024
    #: Default and largest page size of history (and later search) Bundles.
    default_page_size: int = 50
    max_page_size: int = 1000
    #: Most entries a batch or transaction Bundle may carry (413 above it).
    max_bundle_entries: int = 5000
    #: Longest text value of a resource's `string` elements, in characters (413 above it): FHIR's own 1 MiB.
    #: `markdown`, `base64Binary` (attachments) and the narrative are bounded by the resource's size alone.
    max_string_chars: Annotated[int, Field(gt=0)] = 1024 * 1024
    #: Longest value of an identifying element (names, identifiers, phone numbers, addresses, codings' codes
    #: and displays, and every `code`, `id` and `uri`), in characters (413 above it).
    max_short_string_chars: Annotated[int, Field(gt=0)] = 4096
    #: Seconds the database may spend on each query of one search (MongoDB's `maxTimeMS`) before it stops it
    #: and the client is told to narrow the search (400). Bulk export and import are not limited.
    search_time_limit: Annotated[float, Field(gt=0)] = 10.0
    #: How long a request waits for an unreachable database before it is answered 503 (seconds; the driver's
    #: default is 30 s). Long enough for a replica set election or an embedded database restart.
    database_timeout: Annotated[float, Field(gt=0)] = 5.0
    #: The longest a request may take before its answer begins (seconds); past it, 503. A transaction
    #: cannot outlive MongoDB's own 60 s, so neither may a request by default.
    request_time_limit: Annotated[float, Field(gt=0)] = 60.0
    #: The longest a bulk export waits, after its transaction time, for the writes in flight then to land
    #: (usually milliseconds: the store's write horizon says when; MongoDB aborts transactions after 60 s).
    export_settle_seconds: float = 65.0
    #: How long a finished bulk export and its files are kept (seconds, or an ISO 8601 duration such as P1D);
    #: exports hold patient data, so they are deleted after this.
    export_retention: timedelta = timedelta(days=1)
    #: Codes of code systems loaded here (ICD-10, national lists, FHIR's own) are checked on every write:
    #: `reject` refuses a resource with an unknown code (400), `warn` keeps it and reports the problem,
    #: `off` does not look.
    terminology_validation: Literal["reject", "warn", "off"] = "warn"
    #: The log's form on standard error: `text` (lines to read) or `json` (one object a line, for a collector).
    log_format: Literal["text", "json"] = "text"
    #: The Ministry of Health's code of this facility (mã cơ sở khám chữa bệnh); names it in audit records.
    facility_code: str | None = None
    #: Seals the token signing keys at rest; every API process of a site must have the same one.
    #: Unset: a random one is made in `data_dir/secret.key` on first start.
    secret_key: str | None = None
    #: How long an access token is good for (seconds or ISO 8601): short, since a refresh is cheap.
    access_token_lifetime: timedelta = timedelta(minutes=15)
    #: How long a ward terminal stays signed in without the password (a refresh token's life): a shift.
    refresh_token_lifetime: timedelta = timedelta(hours=12)
    #: Origins (scheme://host[:port]) of the browser terminals allowed to call the API from another origin
    #: (CORS), comma-separated or a JSON list. Empty: no CORS headers at all, so browsers allow same-origin only.
    cors_origins: Annotated[list[str], NoDecode] = []
    #: When the database acknowledges a write (every resource write and transaction commit):
    #: `majority` — on disk in its journal, and on a majority of a replica set's members (on a single
    #: server, its own journal); `journaled` — in the journal of the server written to (a replica set's
    #: primary alone); `fast` — in memory only: an answered write can be lost if the database process
    #: dies, so only for throw-away copies, never for patient records.
    write_concern: Literal["majority", "journaled", "fast"] = "majority"
    host: str = "127.0.0.1"
    port: int = 8080

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


@cache
def get_settings() -> Settings:
    return Settings()
