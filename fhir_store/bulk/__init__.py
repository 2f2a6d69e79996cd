"""Bulk data: NDJSON export (`exporter`, with its job queue in `jobs`) and import of the same files."""
