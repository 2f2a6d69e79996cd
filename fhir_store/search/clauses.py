"""The vocabulary shared by the predicate builders, the query builder and the engine.

A `Clause` is one search criterion: its exact filter and, where one exists, a
*driving* condition: a necessary condition on a single indexed field (e.g. a
string prefix as a plain range, where the exact filter needs `$elemMatch`). The
engine starts each query from the best driving condition, so the database walks
one index and checks the rest on few rows. These types live apart so that
`predicates` and `query` can both use them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Filter = dict[str, Any]


@dataclass(frozen=True)
class Clause:
    exact: Filter
    drive: Filter | None = None


@dataclass
class TypeQuery:
    """The clauses that select resources of one type (ANDed)."""

    resource_type: str
    clauses: list[Clause]
