"""How the `emr` command writes its log: readable lines by default, one JSON object a line when
`EMR_LOG_FORMAT=json` (for a log collector: journald, Loki, ELK).

A request's line carries its fields (`request_id`, `method`, `path`, `status`, `ms`, `reason`) as
record attributes, so the JSON form has them as keys instead of inside the text.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

#: Record attributes a request's log line carries (see `emr/api/request_log.py`).
REQUEST_FIELDS = ("request_id", "method", "path", "status", "ms", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {"time": self.formatTime(record), "level": record.levelname,
                                   "logger": record.name, "message": record.getMessage()}
        line.update({name: getattr(record, name) for name in REQUEST_FIELDS if getattr(record, name, None)
                     is not None})
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def log_to_stderr(log_format: Literal["text", "json"]) -> None:
    """The `emr` loggers at INFO on standard error; other libraries' warnings too, in the same form."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    emr_log = logging.getLogger("emr")
    emr_log.addHandler(handler)
    emr_log.setLevel(logging.INFO)
    emr_log.propagate = False
    for name in ("fhir_store", "security", "referral"):  # the rooms' own warnings, said the same way
        room = logging.getLogger(name)
        room.addHandler(handler)
        room.setLevel(logging.INFO)
        room.propagate = False
