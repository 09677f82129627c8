"""Log line formats: `text` for people, `json` (one object a line) for log collectors (SENSORHUB_LOG_FORMAT)."""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: The fields of a JSON line, besides `time` (ISO 8601, UTC) and whatever a record adds (`exc_info`).
JSON_FIELDS = "%(levelname)s %(name)s %(message)s"


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of `log_format` (`text` or `json`, as the setting validated it)."""
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger"}, timestamp="time",
                             json_ensure_ascii=False)
    return logging.Formatter(TEXT_FORMAT)
