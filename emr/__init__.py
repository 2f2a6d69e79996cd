"""An Giang EMR: the FHIR R4 server (FastAPI), its settings and the `emr` command line."""

__version__ = "0.1.0"
