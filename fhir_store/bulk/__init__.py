"""Bulk data: NDJSON export (`exporter`, with its job queue in `jobs`) and import of the same files.

The import is `importer` (the writing), reading through `files`, deciding each
entry's write in `planning` and reporting through `progress`.
"""
