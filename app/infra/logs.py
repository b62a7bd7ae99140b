"""Logging: one JSON object per line on stderr (audit events, the access log, errors).

Records may carry `extra={"fields": {...}}`, merged into the object; nothing here ever receives
a token, code, secret or password (callers pass identifiers only).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        else:
            doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"), default=str)


def configure(level: str) -> None:
    """Send the `ostiary.*` loggers to stderr as JSON lines (each server process calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ostiary")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
