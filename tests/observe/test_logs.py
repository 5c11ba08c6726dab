"""Log formats: JSON lines carry the structured fields; secrets never appear."""

from __future__ import annotations

import json
import logging

from esindexer.config import load_settings
from esindexer.observe.logs import JsonFormatter, TextFormatter


def _record(message: str, **extra) -> logging.LogRecord:
    logger = logging.getLogger("esindexer.test")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None, extra=extra)


def test_json_lines_carry_extra_fields():
    line = JsonFormatter().format(_record("rejected", zoid=42, tid=291972294502024669, index="zodb-objects"))
    entry = json.loads(line)
    assert entry["message"] == "rejected" and entry["level"] == "warning"
    assert entry["zoid"] == 42 and entry["tid"] == 291972294502024669 and entry["index"] == "zodb-objects"
    assert entry["time"].endswith("+00:00")


def test_text_lines_append_extra_fields():
    line = TextFormatter().format(_record("progress saved", tid=5, rows=10))
    assert line.endswith("progress saved tid=5 rows=10")


def test_start_up_line_shows_settings_without_secrets():
    settings = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://zodb:hunter2@db/zodb",
                                  "ESINDEXER_ES_API_KEY": "c2VjcmV0"})
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(_record("esindexer starting", config=settings.redacted()))
        assert "hunter2" not in line and "c2VjcmV0" not in line
        assert "postgresql://zodb:***@db/zodb" in line
