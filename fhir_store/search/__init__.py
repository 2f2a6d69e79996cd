"""FHIR search, in the HAPI FHIR server's separation of concerns.

- `registry`: the spec's SearchParameter definitions, compiled per resource type.
- `paths`: their FHIRPath expressions compiled once into walks over resource JSON.
- `extract`: at write time, the normalised index values of every parameter.
- `parameters`: a search request parsed and checked (names, modifiers, prefixes).
- `query`: parsed parameters turned into a MongoDB filter (chains and `_has` in stages).
- `engine`: runs a search: filter, sort, keyset paging, totals, includes.
- `elements`: `_summary` and `_elements`.
"""
