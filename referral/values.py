"""Reading the sender's JSON, which nobody has validated: a wrong shape is read as nothing, never a crash."""

from __future__ import annotations

from typing import Any


def items(value: Any) -> list[Any]:
    """A JSON array's items; nothing for anything else."""
    return value if isinstance(value, list) else []
