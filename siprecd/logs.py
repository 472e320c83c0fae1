"""Log output: text or JSON lines, filtered by level, built from config.

With ``logging.file`` the file is opened for appending and reopened (by
name) on SIGHUP, so logrotate can move it away and tell siprecd to start
a new one (``contrib/logrotate/siprecd``); lines being written meanwhile
go to one file or the other, never lost or torn.

Code logs with ``twisted.logger.Logger`` and stable keys (``guid``,
``call_id``, ``stream_id``, ``address``...) so the JSON output can be
searched by them. Secrets and unredacted transcript text are never put in
log events; config classes hide secret fields from ``repr()`` for the same
reason.
"""

import json
import re
import sys
import threading
from datetime import datetime, timezone

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

__all__ = ["make_observer", "event_as_json_line", "LogFile", "ConfiguredObserver"]

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


class LogFile:
    """A log file opened by name for appending, that :meth:`reopen` opens
    again by the same name (after logrotate moved it). Writes may come
    from any thread (Twisted logs from thread pools too)."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._file = self._open()

    def _open(self):
        return open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, text):
        with self._lock:
            self._file.write(text)

    def flush(self):
        with self._lock:
            self._file.flush()

    def reopen(self):
        """Open the file by its name again; the old one is closed. Raises
        OSError when it cannot be opened (the old one is kept then)."""
        fresh = self._open()
        with self._lock:
            old, self._file = self._file, fresh
        old.close()

    def close(self):
        with self._lock:
            self._file.close()


@implementer(ILogObserver)
class ConfiguredObserver:
    """The observer of the ``logging`` section; :meth:`reopen` reopens its
    file (nothing to do when it writes to standard output)."""

    def __init__(self, observer, output):
        self._observer = observer
        self.output = output

    def __call__(self, event):
        self._observer(event)

    def reopen(self):
        """True when a log file was reopened; OSError when it cannot be."""
        if isinstance(self.output, LogFile):
            self.output.reopen()
            return True
        return False


def make_observer(logging_config, stream=None):
    """Build the observer for the ``logging`` section of the config."""
    if stream is None:
        stream = sys.stdout if logging_config.file == "-" else LogFile(logging_config.file)
    formatter = event_as_json_line if logging_config.format == "json" else _text_line
    observer = FileLogObserver(stream, formatter)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[logging_config.level])
    return ConfiguredObserver(FilteringLogObserver(observer, [_drop_socket_chatter, predicate]),
                              stream)


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

