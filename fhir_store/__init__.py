"""The FHIR resource store: validation, versioning, history, search, Bundles, bulk data and terminology
on MongoDB. No HTTP in here.

This module is the package's one public face (as `httpx/__init__.py` is httpx's): `emr/`,
`referral/`, `printing/` and the commands import from `fhir_store` only, never a submodule
(CI's import contract enforces it). What is not named here is private and may change.
"""

from fhir_store.audit import AuditTrail, AuditUnavailable
from fhir_store.bulk.exporter import Exporter, ExportRequest, ExportResult, Level
from fhir_store.bulk.importer import BulkImporter, ImportSummary, Rejection
from fhir_store.bulk.jobs import ExportWorker, Job, JobQueue
from fhir_store.bundles import etag, history_bundle, page_links, searchset_bundle
from fhir_store.compartments import compartments as compartment_definitions
from fhir_store.entries import not_modified, parse_if_match
from fhir_store.errors import (
    Forbidden,
    InvalidRequest,
    Issue,
    MethodNotAllowed,
    ResourceExists,
    ResourceGone,
    ResourceNotFound,
    StoreError,
    Unauthorized,
    operation_outcome,
)
from fhir_store.fhir_json import dumps as dump_json
from fhir_store.fhir_json import loads as load_json
from fhir_store.hooks import WriteCheck, WriteContext, WriteObserver
from fhir_store.instants import format_instant, now, parse_instant
from fhir_store.model import HistoryCursor, HistoryPage, Version, WriteResult
from fhir_store.params import whole_number
from fhir_store.pipeline import Caller, Interaction, Interceptor, Pipeline, Result
from fhir_store.pipeline import R as ResultT
from fhir_store.r4 import r4_differences, r4_problem
from fhir_store.resource_types import FHIR_VERSION
from fhir_store.resource_types import resource_types as known_resource_types
from fhir_store.search.engine import SearchResult
from fhir_store.search.registry import MODIFIERS, Registry, load_registry
from fhir_store.store import FhirStore
from fhir_store.terminology import TerminologyService, ValidationMode
from fhir_store.terminology.loader import SourceReport
from fhir_store.terminology.loader import load as load_terminology
from fhir_store.terminology.sources import SHIPPED as SHIPPED_TERMINOLOGY
from fhir_store.terminology.sources import SourceError
from fhir_store.terminology.sources import read as read_terminology_source
from fhir_store.text import fold as fold_text
from fhir_store.transactions import BundleProcessor

__all__ = [
    "FHIR_VERSION", "MODIFIERS", "SHIPPED_TERMINOLOGY", "AuditTrail", "AuditUnavailable", "BulkImporter",
    "BundleProcessor", "Caller", "ExportRequest", "ExportResult", "ExportWorker", "Exporter", "FhirStore",
    "Forbidden", "HistoryCursor", "HistoryPage", "ImportSummary", "Interaction", "Interceptor", "InvalidRequest",
    "Issue", "Job", "JobQueue", "Level", "MethodNotAllowed", "Pipeline", "Registry", "Rejection", "ResourceExists",
    "ResourceGone", "ResourceNotFound", "Result", "ResultT", "SearchResult", "SourceError", "SourceReport",
    "StoreError", "TerminologyService", "Unauthorized", "ValidationMode", "Version", "WriteCheck", "WriteContext",
    "WriteObserver", "WriteResult", "compartment_definitions", "dump_json", "etag", "fold_text", "format_instant",
    "history_bundle", "known_resource_types", "load_json", "load_registry", "load_terminology", "not_modified",
    "now", "operation_outcome", "page_links", "parse_if_match", "parse_instant", "r4_differences", "r4_problem",
    "read_terminology_source", "searchset_bundle", "whole_number"
]
