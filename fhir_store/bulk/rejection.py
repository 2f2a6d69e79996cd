"""What an import refused, and why: one line of the error file.

A module of its own because both `files` (paths that are no importable file)
and `importer` (resources the store refused) report them; defined in either,
the other would import it back (a cycle). `importer` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rejection:
    """Something that was not imported, and why: one line of the error file."""

    file: str
    position: str  # "line 12", "Bundle.entry[5]", "resource", "file"
    resource_type: str | None
    id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "position": self.position, "resourceType": self.resource_type, "id": self.id,
                "reason": self.reason}
