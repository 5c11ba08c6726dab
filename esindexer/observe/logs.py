"""Logging set-up for the command line: plain text for people, JSON lines for collectors.

Modules log with ``extra={"tid": ..., "zoid": ..., "index": ...}``; the JSON format
puts those fields at the top level of each line, so a log pipeline can filter on
them. Secrets never reach the logs: settings are logged in redacted form, and both
formatters pass every finished line through :func:`esindexer.redact.redact` (a DSN or
URL in an exception message, a traceback, an ``extra`` field).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from esindexer.redact import redact

#: Loggers of libraries kept at WARNING whatever ``log_level`` says.
QUIET_LIBRARIES = ("urllib3", "elasticsearch")
#: ... and at ERROR: elastic_transport warns of every failed request ("Node ... has failed for
#: 3 times in a row"), which esindexer's own retry line already says with the cause and a hint;
#: opensearch-py warns about every answer >= 400 (a 404 of an existence check, the 400 of
#: creating an index that exists), each of which esindexer's OpenSearch client turns into the
#: Elasticsearch client's exception and handles or logs.
SILENT_LIBRARIES = ("elastic_transport", "opensearch")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    """Readable lines; ``extra`` fields are appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if extras and "config" not in extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        elif "config" in extras:
            text += " config=" + json.dumps(extras["config"], default=str)
        return redact(text)


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The HTTP client and its connection pool log every request (at INFO and DEBUG): at our
    # volume that drowns esindexer's own lines, also at debug level. Their warnings still show.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SILENT_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
