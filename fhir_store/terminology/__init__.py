"""Terminology: code systems, value sets and concept maps kept as FHIR resources, and the operations on them.

`TerminologyService` (`service.py`) is the one object callers hold; the modules beside it are its
parts. See docs/terminology.md for the lists shipped and docs/architecture.md for how the pieces fit.
"""

from fhir_store.terminology.service import TerminologyService, ValidationMode

__all__ = ["TerminologyService", "ValidationMode"]
