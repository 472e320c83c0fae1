"""Log output: text or JSON lines, filtered by level, built from config.

Code logs with ``twisted.logger.Logger`` and stable keys (``guid``,
``call_id``, ``stream_id``, ``address``...) so the JSON output can be
searched by them. Secrets and unredacted transcript text are never put in
log events; config classes hide secret fields from ``repr()`` for the same
reason.
"""

import json
import re
import sys
from datetime import datetime, timezone

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

# Keys Twisted adds to every event; the JSON form renders them its own way.
_INTERNAL = {
    "log_format", "log_level", "log_namespace", "log_source", "log_logger",
    "log_time", "log_failure", "log_io", "log_text", "log_system", "log_trace",
    "log_flattened", "log_legacy", "message", "isError", "format", "system",
    "time", "why", "failure",
}


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def event_as_json_line(event):
    """One flat JSON object per event: time, level, namespace, text, keys."""
    level = event.get("log_level")
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key not in _INTERNAL and not key.startswith("log_"):
            record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"


def _text_line(event):
    text = formatEventAsClassicLogText(event)
    return text if text is not None else ""


def make_observer(logging_config, stream=None):
    """Build the observer for the ``logging`` section of the config."""
    if stream is None:
        if logging_config.file == "-":
            stream = sys.stdout
        else:
            stream = open(logging_config.file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    formatter = event_as_json_line if logging_config.format == "json" else _text_line
    observer = FileLogObserver(stream, formatter)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[logging_config.level])
    return FilteringLogObserver(observer, [_drop_socket_chatter, predicate])


# Twisted announces every socket it opens and closes; with two per recorded
# stream that would be most of the log. siprecd logs what matters (each
# listener's address, each stream's port) itself.
_SOCKET_CHATTER = re.compile(r"\((?:UDP|TCP|TLS) Port \d+ Closed\)|\S+(?: \(TLS\))? starting on \d+")


def _drop_socket_chatter(event):
    message = event.get("message")
    if message and len(message) == 1 and isinstance(message[0], str) \
            and _SOCKET_CHATTER.fullmatch(message[0]):
        return PredicateResult.no
    return PredicateResult.maybe

