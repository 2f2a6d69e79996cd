"""The FHIR REST API: HTTP in, store calls, FHIR JSON out."""
