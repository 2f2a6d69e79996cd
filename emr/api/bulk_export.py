"""FHIR Bulk Data export (`$export`): kick-off, status polling, cancellation and file download.

The flow is the Bulk Data IG's asynchronous request pattern: kick-off
(`Prefer: respond-async`) records a job and answers 202 with a status URL;
the worker (`fhir_store.bulk.jobs`, started with the app) exports in the
background; polling answers 202 with `X-Progress` until the manifest (200) is
ready; the manifest's file URLs are served from this router. Every route runs
through the app's `Pipeline`, like `routes.py`, so authorisation and audit
see exports too.

This router is included before the main one: its fixed paths (`/fhir/$export`,
`/fhir/Patient/$export`) would otherwise be taken for `/fhir/{resource_type}`
and `/fhir/{resource_type}/{resource_id}`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path

import orjson
from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from emr.api.context import Call
from emr.api.http import prefer
from emr.api.responses import ApiError, fhir_response
from emr.api.routing import operation
from emr.settings import Settings
from fhir_store import (
    Exporter,
    ExportRequest,
    ExportWorker,
    FhirStore,
    Issue,
    Job,
    Level,
    format_instant,
    operation_outcome,
    parse_instant,
)

router = APIRouter(prefix="/fhir")

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {NDJSON, "application/ndjson", "ndjson"}
#: Kick-off parameters this server implements; the IG's others are refused unless `Prefer: handling=lenient`.
_SUPPORTED = {"_outputFormat", "_type", "_since", "_typeFilter", "_format", "_pretty"}
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_FILE_NAME = re.compile(r"[A-Za-z]{1,64}\.ndjson")


@asynccontextmanager
async def export_worker(settings: Settings, store: FhirStore) -> AsyncIterator[ExportWorker]:
    """Run the export worker for the app's lifetime; files go to `<EMR_DATA_DIR>/exports/<job id>/`."""
    worker = ExportWorker(store, Path(settings.data_dir) / "exports",
                          settle=timedelta(seconds=settings.export_settle_seconds),
                          retention=settings.export_retention)
    await worker.queue.ensure_indexes()
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


# ---- kick-off -------------------------------------------------------------------------------

async def export_system(call: Call) -> Response:
    """Export every resource (Bulk Data system-level export)."""
    return await _kick_off(call, "system")


async def export_patients(call: Call) -> Response:
    """Export the compartments of every Patient (Bulk Data patient-level export)."""
    return await _kick_off(call, "patient")


async def export_group(call: Call) -> Response:
    """Export the compartments of a Group's Patient members (Bulk Data group-level export)."""
    return await _kick_off(call, "group")


# Kick-off by GET (query parameters) or POST (a Parameters body, Bulk Data IG v2).
for _method in ("GET", "POST"):
    operation(router, _method, "/$export", "export")(export_system)
    operation(router, _method, "/Patient/$export", "export", resource_type="Patient")(export_patients)
    operation(router, _method, "/Group/{resource_id}/$export", "export", resource_type="Group")(export_group)


async def _kick_off_parameters(call: Call) -> list[tuple[str, str]]:
    """The kick-off's parameters: the query string's, and for POST those of its Parameters body."""
    pairs = call.query
    if call.request.method != "POST":
        return pairs
    body = await call.json()
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise ApiError(400, "A POSTed $export takes a Parameters resource")
    for param in body.get("parameter") or []:
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise ApiError(400, "Every Parameters.parameter needs a name")
        values = [v for k, v in param.items() if k.startswith("value")]
        if len(values) != 1 or not isinstance(values[0], str):
            raise ApiError(400, f"$export parameter '{param['name']}' needs one value (valueString, "
                                "valueInstant, …)")
        pairs.append((param["name"], values[0]))
    return pairs


async def _kick_off(call: Call, level: Level) -> Response:
    request = call.request
    preferences = prefer(call)
    if "respond-async" not in preferences:
        raise ApiError(400, "$export runs asynchronously: send the header 'Prefer: respond-async'")
    params = await _kick_off_parameters(call)
    named = {k for k, _ in params}
    output_format = next((v for k, v in reversed(params) if k == "_outputFormat"), NDJSON)
    if output_format not in OUTPUT_FORMATS:
        raise ApiError(400, f"_outputFormat '{output_format}' is not supported; use {NDJSON}", "not-supported")
    unsupported = sorted(named - _SUPPORTED)
    if unsupported and preferences.get("handling") != "lenient":
        raise ApiError(400, f"$export does not support {', '.join(unsupported)} "
                            "(send 'Prefer: handling=lenient' to have them ignored)", "not-supported")
    types = tuple(dict.fromkeys(t.strip() for k, v in params if k == "_type" for t in v.split(",") if t.strip()))
    since_values = [v for k, v in params if k == "_since"]
    since = parse_instant("_since", since_values[-1]) if since_values else None
    filters = tuple(ExportRequest.parse_type_filter(v) for k, v in params if k == "_typeFilter")
    export = ExportRequest(level, types, since, call.it.resource_id, filters)  # InvalidRequest → 400
    for rtype, query in filters:  # a bad search is a 400 now, not a failed job later
        await call.store.find(rtype, query, limit=1)
    if level == "group":
        await call.store.read("Group", str(call.it.resource_id))  # 404 / 410 now, rather than a failed job later
    worker = call.services.export_worker
    base = call.base
    kick_off_url = base + request.url.path.removeprefix("/fhir") + (f"?{request.url.query}" if request.url.query
                                                                      else "")
    job = await worker.queue.submit(export, kick_off_url, requested_by=_requester(call))
    worker.wake()
    status_url = f"{base}/$export-poll-status?_jobId={job.id}"
    message = f"Export accepted as of {format_instant(job.transaction_time)}; poll {status_url}"
    return fhir_response(_information(message), 202, {"Content-Location": status_url})


# ---- status, cancel, files ------------------------------------------------------------------

@operation(router, "GET", "/$export-poll-status", "export-poll-status", advertise=False)
async def export_status(call: Call) -> Response:
    """202 with X-Progress while the export runs; the manifest (200) when done; 500 if it failed."""
    job = await _job(call)
    if job.status in ("queued", "running"):
        worker = call.services.export_worker
        return Response(status_code=202, headers={"X-Progress": _progress(job, worker), "Retry-After": "2"})
    if job.status == "failed":
        outcome = operation_outcome([Issue("exception", job.error or "The export failed")])
        return fhir_response(outcome, 500)
    base = call.base
    manifest = {
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [{"type": o["type"], "url": f"{base}/$export-file/{job.id}/{o['file']}", "count": o["count"]}
                   for o in job.output],
        "error": [],
    }
    headers = {}
    expires = call.services.export_worker.expires(job)
    if expires is not None:  # the files are deleted then (EMR_EXPORT_RETENTION)
        headers["Expires"] = format_datetime(expires, usegmt=True)
    return Response(orjson.dumps(manifest), 200, headers=headers, media_type="application/json")


@operation(router, "DELETE", "/$export-poll-status", "export-poll-status", advertise=False)
async def export_cancel(call: Call) -> Response:
    """Cancel an export: stop it if it runs, and delete the job and its files."""
    job_id = (await _job(call)).id
    worker = call.services.export_worker
    if not await worker.cancel(job_id):
        raise ApiError(404, f"There is no export job '{job_id}'", "not-found")
    return fhir_response(_information(f"Export {job_id} cancelled; its files are deleted"), 202)


@operation(router, "GET", "/$export-file/{job_id}/{file_name}", "export-file", advertise=False,
           negotiate=False)
async def export_file(call: Call) -> Response:
    """One NDJSON file of a completed export, streamed from disk."""
    job_id, file_name = call.request.path_params["job_id"], call.request.path_params["file_name"]
    missing = ApiError(404, f"Export {job_id} has no file '{file_name}'", "not-found")
    if not _JOB_ID.fullmatch(job_id) or not _FILE_NAME.fullmatch(file_name):
        raise missing
    worker = call.services.export_worker
    job = await _job(call, job_id)
    if job.status != "complete" or file_name not in {o["file"] for o in job.output}:
        raise missing
    path = worker.job_dir(job_id) / file_name
    if not path.is_file():
        raise missing
    return FileResponse(path, media_type=NDJSON)


# ---- helpers --------------------------------------------------------------------------------

def _job_id(call: Call) -> str:
    job_id = call.request.query_params.get("_jobId", "")
    if not _JOB_ID.fullmatch(job_id):
        raise ApiError(404, f"There is no export job '{job_id}'", "not-found")
    return job_id


def _requester(call: Call) -> str | None:
    caller = call.it.caller
    return f"{caller.kind}/{caller.name}" if caller is not None else None


async def _job(call: Call, job_id: str | None = None) -> Job:
    """The caller's own export job: someone else's is answered as unknown, not as forbidden."""
    job_id = job_id or _job_id(call)
    job = await call.services.export_worker.queue.get(job_id)
    if job is None or job.requested_by not in (None, _requester(call)):
        raise ApiError(404, f"There is no export job '{job_id}'", "not-found")
    return job


def _progress(job: Job, worker: ExportWorker) -> str:
    if job.status == "queued":
        return "queued" if job.attempts == 0 else "queued again (its worker stopped)"
    if not job.progress:
        latest = format_instant(job.transaction_time + worker.settle)
        return f"waiting (at most until {latest}) for writes in flight at the transaction time to land"
    planned = len(Exporter.types_for(job.request))
    return f"{sum(job.progress.values())} resources exported; {len(job.progress)} of {planned} types started"


def _information(message: str) -> dict[str, object]:
    return operation_outcome([Issue("informational", message, severity="information")])
