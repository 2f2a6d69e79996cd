"""Where a resource is validated: a worker thread, or a worker process for a large one.

Validation is CPU work that must never hold up other requests on the event loop.
A worker thread is enough for most resources: Python code gives the GIL up every
few milliseconds, so a read or `/metadata` goes on beside it. But pydantic-core
validates a whole model in Rust *holding the GIL*: a 1.4 MB Patient (30,000 names)
holds it for about 0.3 s, and every other request of the process waits that long.
A resource whose JSON passes `PROCESS_BYTES` therefore goes to a worker process,
as JSON bytes (cheap to send, and `dumps`/`loads` keep decimals as written); the
process pool starts with the first such resource, so a server that never meets
one never pays for it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fhir_store.fhir_json import dumps, loads
from fhir_store.validation import ElementLimits, validate_resource

#: Past this size of JSON (bytes), validation runs in a worker process (see the module's docstring).
PROCESS_BYTES = 256 * 1024


class ValidationRunner:
    def __init__(self, limits: ElementLimits, *, process_bytes: int = PROCESS_BYTES) -> None:
        self._limits = limits
        self._process_bytes = process_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def validate(self, data: Any, expected_type: str | None,
                       then: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """`then(validate_resource(data))`, off the event loop: one worker-thread hop for the usual resource."""
        small = await asyncio.to_thread(self._in_thread, data, expected_type, then)
        if isinstance(small, dict):
            return small
        if self._pool is None:
            # spawn, not fork: the server process runs threads (the driver's, this module's) a fork would break.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        valid = await loop.run_in_executor(self._pool, _validate_json, small, expected_type, self._limits)
        return await asyncio.to_thread(lambda: then(loads(valid)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _in_thread(self, data: Any, expected_type: str | None,
                   then: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any] | bytes:
        """The validated resource, or its JSON when it is too large to validate in this process."""
        if isinstance(data, dict):
            try:
                body = dumps(data)
            except TypeError:  # not JSON at all: validation below says what is wrong
                body = b""
            if len(body) > self._process_bytes:
                return body
        return then(validate_resource(data, expected_type=expected_type, limits=self._limits))


def _validate_json(body: bytes, expected_type: str | None, limits: ElementLimits) -> bytes:
    """In the worker process. Raises the same `StoreError`s as `validate_resource` (they travel pickled)."""
    return dumps(validate_resource(loads(body), expected_type=expected_type, limits=limits))
