"""Progress of an import in bytes, for a progress bar with a bytes-based ETA.

Apart from the importer so that the arithmetic (how far into the file the
current pass is, what share of the file each pass stands for, the throttle)
sits behind a few calls instead of eight fields of the importer. A Bundle is
read three times (see "Streaming a Bundle" in the importer's docstring), so
each pass covers a share of the file's bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

#: (bytes done, bytes total, resources done): enough for a progress bar with a bytes-based ETA.
Progress = Callable[[int, int, int], None]

_EVERY = 0.1  # seconds between progress callbacks


class ImportProgress:
    """Calls `callback` at most every 0.1 s (or when forced); `resources_done` counts the resources finished."""

    def __init__(self, callback: Progress | None, resources_done: Callable[[], int]) -> None:
        self._callback = callback
        self._resources_done = resources_done
        self._bytes_total = 0
        self._bytes_before = 0  # bytes of the files finished
        self._file_size = 0
        self._raw: IO[bytes] | None = None
        self._pass_start = 0.0  # share of the current file done before this pass
        self._pass_share = 1.0  # share of the current file this pass covers
        self._file_done = 0.0  # share of the current file done (never goes back)
        self._last_tick = 0.0

    def start_run(self, bytes_total: int) -> None:
        self._bytes_total = bytes_total

    def start_file(self, size: int) -> None:
        self._file_size = size

    def start_pass(self, start: float, share: float) -> None:
        """The pass over the current file that begins once `start` of it is done and covers `share` of it."""
        self._pass_start, self._pass_share = start, share

    def reading(self, raw: IO[bytes] | None) -> None:
        """The file on disk being read (None: none); its position tells how far the pass is."""
        self._raw = raw

    def finish_file(self) -> None:
        self._raw = None
        self._bytes_before += self._file_size
        self._pass_start, self._pass_share, self._file_done = 0.0, 1.0, 0.0

    def tick(self, force: bool = False) -> None:
        if self._callback is None:
            return
        moment = time.monotonic()
        if not force and moment - self._last_tick < _EVERY:
            return
        self._last_tick = moment
        raw = self._raw
        if raw is not None and not raw.closed and self._file_size:
            fraction = min(raw.tell() / self._file_size, 1.0)
            self._file_done = max(self._file_done, self._pass_start + self._pass_share * fraction)
        done = self._bytes_before + int(self._file_size * self._file_done)
        self._callback(min(done, self._bytes_total), self._bytes_total, self._resources_done())
