"""The FHIR resource store: validation, versioning and history on MongoDB. No HTTP in here."""

from fhir_store.errors import StoreError
from fhir_store.model import HistoryCursor, HistoryPage, Version, WriteResult
from fhir_store.store import FhirStore

__all__ = ["FhirStore", "HistoryCursor", "HistoryPage", "StoreError", "Version", "WriteResult"]
