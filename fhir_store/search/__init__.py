"""FHIR search, in the HAPI FHIR server's separation of concerns.

- `registry`: the spec's SearchParameter definitions, compiled per resource type.
- `paths`: their FHIRPath expressions compiled once into walks over resource JSON.
- `extract`: at write time, the normalised index values of every parameter.
- `parameters`: a parameter's value text parsed (escapes, separators, prefixes, date and number ranges).
- `clauses`: `Clause` (exact filter and driving condition), shared by the modules below.
- `predicates`: one value of one parameter type turned into a `Clause` on the index values.
- `query`: a request's criteria turned into clauses per type (modifiers, chains and `_has` in stages).
- `engine`: runs a search: filter, sort, keyset paging, totals, includes.
- `elements`: `_summary` and `_elements`.
"""
