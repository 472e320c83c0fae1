"""Failure drills: what the drill suite (``tests/drills``) needs to break
things for real and to tell what was lost.

- :class:`DrillAsrBackend` -- a TEST DOUBLE ASR backend found the real way,
  through the ``siprecd.asr`` entry-point group (:func:`asr_plugin_path`
  writes the packaging metadata of a throwaway distribution that declares
  it; put that folder on ``PYTHONPATH`` or ``sys.path``, or use
  :func:`plugin_pythonpath`). Its recognisers
  are :class:`~siprecd.testing.asr.FakeRecognizer` (each loud stretch of
  audio is a word), so a drill needs no model and runs in seconds; chosen
  ones fail mid-stream (:class:`FailingRecognizer`) as told by the
  ``SIPRECD_DRILL_ASR`` environment variable (JSON).
- :func:`bursts` -- "speech" the fake recogniser turns into one utterance
  per burst.
- :func:`place_call` -- one SIPREC call of bursts from the simulator;
  :func:`media_ports` -- a media port range of the drills' own.
- :func:`sip_options` -- an OPTIONS probe (UDP with retransmissions, or TCP);
  :func:`api_until` -- an API answer awaited with a bound.
- :class:`DrillDaemon` -- :class:`~harness.daemon.Daemon` that can
  also count what it has logged so far without waiting.
- :class:`LogWatch` -- the same for a service tree in the test's process.
- :class:`SmallDisk` -- a real, small file system (tmpfs) that can be
  filled to the last byte and given space again; needs root with
  CAP_SYS_ADMIN (see :meth:`SmallDisk.possible`).
- :class:`DrillPostgres` -- a throwaway PostgreSQL cluster of the drills'
  own (``scripts/test-postgres`` on another port and folder), so that
  restarting it disturbs no other test.
- :data:`REPORT` / :func:`record` / :func:`format_table` -- the summary
  table (drill | what happened | what was lost) printed after a run.
"""

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import attrs
import numpy as np
from twisted.internet import defer, threads
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from harness.daemon import Daemon
from siprecd.asr.common import normalise_language
from siprecd.interfaces import IASRBackend
from siprecd.testing.asr import FakeAsrBackend, FakeRecognizer

__all__ = [
    "ASR_ENV", "DrillAsrBackend", "FailingRecognizer", "DrillAsrError", "asr_plugin_path",
    "plugin_pythonpath",
    "bursts", "media_ports", "place_call", "api_until", "sip_options", "DrillDaemon",
    "LogWatch", "SmallDisk", "DrillPostgres", "REPORT", "Drill", "record", "format_table",
]

REPO = Path(__file__).resolve().parents[1]
ASR_ENV = "SIPRECD_DRILL_ASR"


# -- ASR ---------------------------------------------------------------------------


class DrillAsrError(RuntimeError):
    """What a FailingRecognizer raises."""


class FailingRecognizer(FakeRecognizer):
    """TEST DOUBLE: a FakeRecognizer whose ``accept`` fails from its
    *fail_after* + 1-th call on: every call when *permanent* (a recogniser
    that broke for good), else only that one. *mode* ``"raise"`` raises at
    once; ``"thread"`` fails the Deferred from a worker thread, as a real
    backend running on a thread pool does."""

    def __init__(self, *args, fail_after=5, permanent=True, mode="thread", **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_after = fail_after
        self.permanent = permanent
        self.mode = mode
        self.accepts = 0
        self.failures = 0

    def accept(self, pcm, deadline=None):
        return self._failure() or super().accept(pcm, deadline)

    def accept_partial(self, pcm, deadline=None):
        return self._failure() or super().accept_partial(pcm, deadline)

    def _failure(self):
        """The failure of this call to accept audio, if it is to fail
        (raised at once, or a failing Deferred); else None."""
        self.accepts += 1
        if self.accepts > self.fail_after and (self.permanent or not self.failures):
            self.failures += 1
            message = f"drill: recogniser broke at accept #{self.accepts}"
            if self.mode == "raise":
                raise DrillAsrError(message)

            def fail():
                raise DrillAsrError(message)

            return threads.deferToThread(fail)
        return None


@implementer(IASRBackend)
class DrillAsrBackend(FakeAsrBackend):
    """TEST DOUBLE backend (see the module docstring). Languages: those of
    ``asr.models`` plus en-us. Options (JSON in ``SIPRECD_DRILL_ASR``):
    ``fail`` -- which recognisers fail, by index in the order they are
    made (0 is the first stream of the first start: the customer), either
    a list (each with the default ``fail_after``, ``permanent``, ``mode``
    options, as FailingRecognizer's) or an object ``{"index": {options}}``."""

    name = "drill"

    def __init__(self, languages=("en-us",), fail=(), fail_after=5, permanent=True,
                 mode="thread", **recognizer_options):
        super().__init__(languages, **recognizer_options)
        default = dict(fail_after=fail_after, permanent=permanent, mode=mode)
        if isinstance(fail, dict):
            self.fail = {int(k): dict(default, **v) for k, v in fail.items()}
        else:
            self.fail = {int(k): default for k in fail}

    @classmethod
    def from_config(cls, config, reactor):
        options = json.loads(os.environ.get(ASR_ENV) or "{}")
        languages = sorted({normalise_language(t) for t in config.asr.models} | {"en-us"})
        return cls(languages, **options)

    def describe(self):
        return "starting the drill ASR backend"

    def new_recognizer(self, language, sample_rate=8000):
        index = len(self.recognizers)
        if index not in self.fail:
            return super().new_recognizer(language, sample_rate)
        recognizer = FailingRecognizer(normalise_language(language), sample_rate,
                                       **self.fail[index], **self.recognizer_options)
        self.recognizers.append(recognizer)
        return recognizer


def asr_plugin_path(directory):
    """Write a throwaway distribution's metadata declaring the ``drill``
    ASR backend into *directory*; returns the folder to put on the path."""
    directory = Path(directory)
    info = directory / "siprecd_drill_asr-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: siprecd-drill-asr\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[siprecd.asr]\ndrill = harness.drills:DrillAsrBackend.from_config\n")
    return str(directory)


def plugin_pythonpath(directory):
    """``PYTHONPATH`` for a daemon that must find the ``drill`` ASR backend:
    the folder :func:`asr_plugin_path` writes into *directory*, in front of
    the ``PYTHONPATH`` already set (which may be what makes ``harness``
    itself importable, as in a checkout that is not installed)."""
    path = asr_plugin_path(directory)
    return os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)


def bursts(seconds, on=0.6, off=1.0, frequency=440.0, amplitude=8000, offset=0.0):
    """*seconds* of 8 kHz int16 audio: *on* seconds of a tone, *off* of
    silence, repeated (starting *offset* seconds into the pattern). The
    fake recogniser hears one word, and the pipeline ends one utterance,
    per burst."""
    rate = 8000
    t = np.arange(int(seconds * rate)) / rate
    phase = (t + offset) % (on + off)
    tone = amplitude * np.sin(2 * np.pi * frequency * t)
    return np.where(phase < on, tone, 0).astype(np.int16)


def media_ports(count=200, probe=40):
    """A ``media`` config section with a port range of the drills' own,
    away from the default range (20000-29999, which benchmarks running
    on the same machine may fill) and from the ephemeral ports; its first
    *probe* ports were free when it was chosen (the allocator gives up
    after a few taken ones in a row)."""
    import random

    for _ in range(50):
        base = random.randrange(30000, 32700 - count, 2)
        if all(_udp_free(port) for port in range(base, base + probe)):
            break
    return {"host": "127.0.0.1", "port_min": base, "port_max": base + count - 1}


def _udp_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- SIP -------------------------------------------------------------------------------

_OPTIONS = (
    "OPTIONS sip:srs@{host} SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} {local};branch=z9hG4bKdrill{n};rport\r\n"
    "From: <sip:drill@127.0.0.1>;tag=d{n}\r\nTo: <sip:srs@{host}>\r\n"
    "Call-ID: drill{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def sip_options(host, port, transport="udp", deadline=16.0):
    """Send OPTIONS and return the status of its answer (blocking; run it
    in a thread from the reactor). Over UDP it is retransmitted as RFC
    3261 clients do (T1 doubling); raises AssertionError without answer."""
    from siprecd.sip.message import parse_message

    n = uuid.uuid4().hex[:12]
    if transport == "tcp":
        with socket.create_connection((host, port), timeout=deadline) as s:
            local = "%s:%d" % s.getsockname()
            s.sendall(_OPTIONS.format(host=host, transport="TCP", local=local, n=n).encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    raise AssertionError("connection closed without an answer to OPTIONS")
                data += chunk
            return parse_message(data.split(b"\r\n\r\n")[0] + b"\r\n\r\n").status
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        local = "127.0.0.1:%d" % s.getsockname()[1]
        message = _OPTIONS.format(host=host, transport="UDP", local=local, n=n).encode()
        interval, waited = 0.5, 0.0
        while waited < deadline:
            s.sendto(message, (host, port))
            s.settimeout(interval)
            try:
                while True:
                    data, _ = s.recvfrom(65536)
                    if f"drill{n}@".encode() in data:
                        return parse_message(data).status
            except TimeoutError:
                waited += interval
                interval = min(2 * interval, 4.0)
    raise AssertionError(f"no answer to OPTIONS within {deadline}s")


# -- logs -------------------------------------------------------------------------------


class DrillDaemon(Daemon):
    """A Daemon whose output can also be taken as far as it has come
    (:meth:`take`) and counted, without waiting for more."""

    def take(self):
        """Move every line already read into ``lines``; returns them all."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.lines
            if line is None:
                self._queue.put(None)
                return self.lines
            self.lines.append(line)

    def matching(self, pattern):
        regex = re.compile(pattern)
        return [line for line in self.take() if regex.search(line)]

    def wait_for_count(self, pattern, count, timeout=30.0):
        """The first *count* lines matching *pattern* (waiting for more)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = [line for line in self.take() if regex.search(line)]
            if len(found) >= count:
                return found[:count]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(found)} of {count} lines matching {pattern!r} "
                                   f"within {timeout}s; output:\n" + "\n".join(self.lines[-40:]))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise EOFError(f"daemon exited before {count} lines matching {pattern!r}")
            self.lines.append(line)


class LogWatch:
    """Every log event of this process while installed, as (level,
    namespace, text); :meth:`wait_for` is a Deferred for a future (or
    past) event whose text matches."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.events = []
        self._waiters = []

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)

    def __call__(self, event):
        level = event.get("log_level")
        text = formatEvent(event) or ""
        if event.get("log_failure") is not None:
            text += " | " + event["log_failure"].getErrorMessage()
        entry = (getattr(level, "name", str(level)), event.get("log_namespace", ""), text)
        self.events.append(entry)
        for waiter in list(self._waiters):
            regex, d = waiter
            if regex.search(text):
                self._waiters.remove(waiter)
                self.reactor.callLater(0, d.callback, entry)

    def matching(self, pattern, level=None):
        regex = re.compile(pattern)
        return [e for e in self.events if regex.search(e[2]) and (level is None or e[0] == level)]

    def wait_for(self, pattern, timeout=30.0, after=0):
        """Fires with the first event from index *after* on matching *pattern*."""
        regex = re.compile(pattern)
        for entry in self.events[after:]:
            if regex.search(entry[2]):
                return defer.succeed(entry)
        d = defer.Deferred()
        self._waiters.append((regex, d))
        return d.addTimeout(timeout, self.reactor, lambda *_: self._expired(regex, d, pattern))

    def _expired(self, regex, d, pattern):
        if (regex, d) in self._waiters:
            self._waiters.remove((regex, d))
        raise defer.TimeoutError(f"no log event matching {pattern!r}; last events: "
                                 + " // ".join(e[2] for e in self.events[-15:]))


# -- a disk that fills up ----------------------------------------------------------------


class SmallDisk:
    """A tmpfs of *size_mb* MiB mounted at *path*: a real file system that
    runs out of space (ENOSPC) like a full disk. :meth:`fill` takes every
    free byte with a filler file, :meth:`free` gives it back."""

    def __init__(self, path, size_mb=24):
        self.path = Path(path)
        self.size_mb = size_mb
        self.filler = self.path / ".drill-filler"
        self.mounted = False

    @staticmethod
    def possible():
        """(True, "") when this process may mount a tmpfs, else (False, why)."""
        if shutil.which("mount") is None:
            return False, "no mount command"
        probe = Path(f"/tmp/siprecd-drill-probe-{os.getpid()}")
        probe.mkdir(exist_ok=True)
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                return False, done.stderr.strip() or "mount failed"
            subprocess.run(["umount", str(probe)], check=True)
            return True, ""
        finally:
            probe.rmdir()

    def mount(self):
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700",
                        "tmpfs", str(self.path)], check=True)
        self.mounted = True
        return self

    def fill(self):
        """Write the filler until the file system is full; returns bytes written."""
        written = 0
        block = b"\0" * (64 * 1024)
        with open(self.filler, "ab", buffering=0) as f:
            for size in (len(block), 4096, 512, 1):
                while True:
                    try:
                        written += f.write(block[:size])
                    except OSError:
                        break
        return written

    def free(self):
        self.filler.unlink(missing_ok=True)

    def unmount(self):
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False

    def __enter__(self):
        return self.mount()

    def __exit__(self, *exc):
        self.unmount()


# -- PostgreSQL -------------------------------------------------------------------------


class DrillPostgres:
    """The drills' own PostgreSQL cluster, started (and reused) with
    ``scripts/test-postgres`` on *port* with data in *directory*, so
    restarting it disturbs no other test. Blocking methods: run them in a
    thread from the reactor."""

    def __init__(self, port=None, directory=None):
        self.port = int(port or os.environ.get("SIPRECD_DRILL_POSTGRES_PORT", "55442"))
        self.directory = directory or os.environ.get(
            "SIPRECD_DRILL_POSTGRES_DIR", "/tmp/siprecd-drill-postgres")
        self.dsn = None

    def _script(self, command):
        env = dict(os.environ, SIPRECD_TEST_POSTGRES_PORT=str(self.port),
                   SIPRECD_TEST_POSTGRES_DIR=self.directory)
        done = subprocess.run(["bash", str(REPO / "scripts" / "test-postgres"), command],
                              env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/test-postgres {command} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self):
        self.dsn = self._script("start")
        return self.dsn

    def stop(self):
        self._script("stop")

    def restart(self):
        """pg_ctl restart -m fast: every connection is cut, the server is
        down for a moment, then up again."""
        self._script("restart")

    def database(self):
        """A new empty database; returns its DSN."""
        import psycopg
        from psycopg import conninfo

        name = f"drill_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return conninfo.make_conninfo(self.dsn, dbname=name)

    def drop(self, dsn):
        import psycopg
        from psycopg import conninfo

        name = conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def terminate(self, dsn, application_name="siprecd"):
        """pg_terminate_backend on every connection of *application_name*
        to the database of *dsn*; returns how many were cut."""
        import psycopg
        from psycopg import conninfo

        name = conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
                (name, application_name)).fetchall()
        return len(rows)


# -- the summary table --------------------------------------------------------------------


@attrs.define
class Drill:
    drill: str
    happened: str
    lost: str
    ok: bool = True


REPORT = []


def record(drill, happened, lost, ok=True):
    """Add a row to the drills' summary table (printed at the end of the run)."""
    row = Drill(drill, " ".join(happened.split()), " ".join(lost.split()), ok)
    REPORT.append(row)
    return row


def format_table(rows=None):
    """The rows as a Markdown table: drill | what happened | what was lost."""
    rows = REPORT if rows is None else rows
    out = ["| drill | what happened | what was lost |", "|---|---|---|"]
    for row in rows:
        drill = row.drill if row.ok else f"{row.drill} [KNOWN BUG: xfail]"
        cells = [c.replace("|", "\\|") for c in (drill, row.happened, row.lost)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# -- a call ---------------------------------------------------------------------------------


async def place_call(reactor, sip_port, seconds, transport="tcp", timeout=30.0):
    """Place one SIPREC call of *seconds* of :func:`bursts` on both streams
    (the agent's offset, so the two do not speak at once); fires with
    (guid, Deferred of the simulator's Summary) once it is answered."""
    from siprecd.simulator import CallSpec, Target, place_calls

    answered = defer.Deferred()
    spec = CallSpec(customer=bursts(seconds), agent=bursts(seconds, offset=0.8, frequency=660.0),
                    duration=seconds)
    placed = place_calls(
        reactor, Target("127.0.0.1", sip_port, transport), [spec], local_host="127.0.0.1",
        media_host="127.0.0.1", answer_timeout=5.0, seed=1,
        on_call_answered=lambda result: answered.called or answered.callback(result.guid))

    def ended_early(result):
        if not answered.called:
            answered.errback(RuntimeError(f"the call ended before it was answered: {result!r}"))
        return result

    placed.addBoth(ended_early)
    guid = await answered.addTimeout(timeout, reactor)
    return guid, placed


async def api_until(api, path, predicate, timeout=15.0, interval=0.2):
    """GET *path* with an ApiClient (from a thread) until ``predicate(body)``
    holds; fires with that body. For states the daemon does not log: each
    try is a real answer of the API, and the wait is bounded."""
    from twisted.internet import reactor, task

    deadline = reactor.seconds() + timeout
    while True:
        answer = await threads.deferToThread(api.get, path)
        if answer.status == 200 and predicate(answer.body):
            return answer.body
        if reactor.seconds() > deadline:
            raise TimeoutError(f"GET {path}: still {answer.status} {answer.body!r} "
                               f"after {timeout}s")
        await task.deferLater(reactor, interval, lambda: None)
