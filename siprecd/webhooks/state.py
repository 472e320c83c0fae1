"""Which webhook targets this node has disabled, kept across restarts.

A target that answered 410 Gone stays disabled until an operator
re-enables it (``siprecd webhooks enable``), also across restarts, so the
state lives in a small JSON file in ``state_dir`` (mode 0600), written
atomically (temporary file, fsync, rename). The daemon and the CLI both
change it, so every read-modify-write holds an exclusive ``flock`` on a
lock file next to it.

The outbox has no "held" state, so a disabled target's rows are *parked*:
set pending with their next attempt far ahead. Their ids are kept here,
per target, so that re-enabling can make exactly those rows due again at
once. (If this file were lost, parked rows still come back by themselves
after ``webhooks.disabled_recheck``.) Only the head row of each stream is
ever claimed, so this list is at most one id per stream.

The functions here block (file I/O); the service runs them off the reactor
thread.

File format::

    {"version": 1, "targets": {"crm": {"disabled": true, "since_ms": ...,
     "reason": "HTTP 410 Gone from https://...", "parked": [12, 13]}}}
"""

import contextlib
import fcntl
import json
import os
from pathlib import Path

__all__ = ["TargetStates", "STATE_FILE", "StateFileError"]

STATE_FILE = "webhook-targets.json"


class StateFileError(Exception):
    """The state file cannot be read or written; one line."""


class TargetStates:
    def __init__(self, path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @classmethod
    def for_config(cls, config):
        return cls(config.state_dir / STATE_FILE)

    # Reading ------------------------------------------------------------------

    def mtime(self):
        """The file's modification time (ns), or None when there is none."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def read(self):
        """``{name: entry}`` as stored (empty when there is no file)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StateFileError(f"cannot read {self.path}: {e.strerror or e}") from None
        try:
            data = json.loads(text)
            targets = data["targets"]
            if not isinstance(targets, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise StateFileError(f"{self.path} is not a webhook target state file") from None
        return targets

    def disabled(self):
        """``{name: entry}`` of the targets disabled now."""
        return {n: e for n, e in self.read().items() if e.get("disabled")}

    # Changing ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StateFileError(f"cannot lock {self.lock_path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, targets):
        targets = {n: e for n, e in targets.items() if e.get("disabled") or e.get("parked")}
        data = json.dumps({"version": 1, "targets": targets}, indent=1, sort_keys=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise StateFileError(f"cannot write {self.path}: {e.strerror or e}") from None

    def update(self, change):
        """Run ``change(targets)`` on the stored dict under the lock, write
        it back, and return what *change* returned."""
        with self._locked():
            targets = self.read()
            result = change(targets)
            self._write(targets)
            return result

    def disable(self, name, since_ms, reason):
        """Mark *name* disabled; True if it was not disabled before."""
        def change(targets):
            entry = targets.setdefault(name, {})
            if entry.get("disabled"):
                return False
            entry.update(disabled=True, since_ms=since_ms, reason=reason)
            entry.setdefault("parked", [])
            return True

        return self.update(change)

    def enable(self, name):
        """Re-enable *name*; returns (was disabled, parked ids taken).

        The ids are removed from the file here, under the lock: whoever
        takes them makes them due again, so that is done exactly once."""
        def change(targets):
            entry = targets.get(name)
            if entry is None:
                return False, []
            was = bool(entry.get("disabled"))
            parked = list(entry.get("parked", ()))
            targets.pop(name)
            return was, parked

        return self.update(change)

    def park(self, name, ids):
        """Remember parked outbox row ids of *name*."""
        def change(targets):
            entry = targets.setdefault(name, {"disabled": False})
            parked = entry.setdefault("parked", [])
            known = set(parked)
            parked.extend(i for i in ids if i not in known)

        return self.update(change)

    def take_parked(self):
        """``{name: ids}`` parked for targets that are no longer disabled,
        removed from the file (see :meth:`enable`)."""
        if not any(e.get("parked") and not e.get("disabled") for e in self.read().values()):
            return {}

        def change(targets):
            taken = {}
            for name, entry in targets.items():
                if entry.get("parked") and not entry.get("disabled"):
                    taken[name] = list(entry["parked"])
                    entry["parked"] = []
            return taken

        return self.update(change)
