"""Building one UTC day of the utterances feed into files.

How a build goes, and why:

- **Streamed.** Messages come from ``IStorage.messages_for_day`` one page
  at a time (the next page is fetched while the current one is written),
  and each page is encoded and appended to the open file of its hour: a
  day of any size is built in the memory of about two pages.
- **Off the reactor.** Encoding and every file operation run in a worker
  thread (``deferToThreadPool``), one call at a time, so the daemon keeps
  answering SIP and HTTP while it exports.
- **All or nothing, file by file atomic.** A build writes into a staging
  directory next to the day (``.staging-dt=<day>-<token>`` in the format
  directory: same file system, hidden from the catalogue); each file is
  fsynced when its hour is complete. Only when every page has been
  written are the files renamed into place, one ``os.replace`` each (then
  the directories are fsynced). A failure or a stop before that leaves the
  published day exactly as it was; a crash during the renames leaves each
  file either old or new, never partial. Staging left by a crash is removed
  by the next build of that day.
- **Idempotent.** Rows are in storage order and encoded deterministically,
  so the same rows give byte-identical files. After publishing, hours (and
  part files) that this build did not write are removed, so a rebuild
  after messages were purged leaves no stale hours; a day with no rows has
  no directory at all.

Only names the builder writes (``hr=HH``, ``part-NNNN.fmt``) are ever
removed. Files are created 0600: they hold transcripts.

:func:`build_day` is the bare build; :class:`Exporter` adds the record of
each run in storage (``start_export_run``/``finish_export_run``), which is
also what keeps two builds of one day (two nodes, or the daemon and the
CLI) from running at once.
"""

import collections
import datetime
import os
import secrets
import shutil
import time
from pathlib import Path

import attrs
from twisted.internet import defer, threads
from twisted.logger import Logger

from siprecd.export import feed as utterances
from siprecd.export.layout import (
    APP_DIR,
    APPS_DIR,
    DATE_DIR,
    HOUR_DIR,
    PART_FILE,
    app_dir_name,
    day_dir,
    format_dir,
    part_name,
    staging_prefix,
)

__all__ = ["build_day", "Exporter", "BuildResult", "ExportBusy", "BuildStopped", "parse_day",
           "PAGE_SIZE"]

# Rows read per query: 1,000 is as fast as 5,000 (bench/export_bench) in
# a third of the memory.
PAGE_SIZE = 1000
# Conversation ids remembered during a build: messages of a call are
# created close together, so a small cache saves nearly every lookup.
_CONVERSATION_CACHE = 4096
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class ExportBusy(Exception):
    """A run for this feed and day is already going (here or on another node)."""


class BuildStopped(Exception):
    """The build was asked to stop (shutdown); nothing was published."""


def parse_day(day):
    """A ``datetime.date`` from a date or a strict ``YYYY-MM-DD`` string."""
    if isinstance(day, datetime.datetime):
        raise TypeError("expected a date, not a datetime")
    if isinstance(day, datetime.date):
        return day
    if isinstance(day, str) and DATE_DIR.fullmatch(f"dt={day}"):
        try:
            return datetime.date.fromisoformat(day)
        except ValueError:
            pass
    raise ValueError(f"expected a date YYYY-MM-DD, got {day!r}")


@attrs.frozen
class BuildResult:
    """What one build published."""

    feed: str
    version: str
    day: str
    formats: tuple
    rows: int
    # Published files, relative to the export directory (POSIX form).
    files: tuple
    # Files of hours that had no rows any more, removed.
    removed: tuple
    bytes: int
    seconds: float

    def detail(self):
        """The ``detail`` stored with the export run."""
        return {
            "version": self.version, "formats": list(self.formats), "files": len(self.files),
            "bytes": self.bytes, "seconds": round(self.seconds, 3), "paths": list(self.files),
            "removed": list(self.removed),
        }


@attrs.define
class _OpenFile:
    hour: int
    path: object
    file: object
    encoder: object
    rows: int = 0


class _DayWriter:
    """Writes one day's files; every method blocks (run it in a thread),
    and calls never overlap (the caller awaits each one)."""

    def __init__(self, root, feed, version, day, formats):
        self.root = root
        self.feed = feed
        self.version = version
        self.day = day
        self.formats = tuple(formats)
        self.token = secrets.token_hex(6)
        self._staging = {
            fmt: format_dir(root, feed, version, fmt) / f"{staging_prefix(day)}{self.token}"
            for fmt in self.formats
        }
        self._open = {}
        self._staged = {fmt: [] for fmt in self.formats}  # (hour, path)
        self.bytes = 0

    def prepare(self):
        for fmt in self.formats:
            parent = format_dir(self.root, self.feed, self.version, fmt)
            # Every level private (mkdir's mode applies to the last only).
            _make_dirs(parent)
            prefix = staging_prefix(self.day)
            for entry in os.scandir(parent):
                # A crashed build of this day left its staging behind.
                if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
            self._staging[fmt].mkdir(mode=_DIR_MODE)

    def write(self, messages, conversation_ids):
        rows = [(utterances.hour_of(m.created_ms), utterances.row(m, conversation_ids.get(m.guid)))
                for m in messages]
        for fmt in self.formats:
            current = self._open.get(fmt)
            chunk = []
            for hour, r in rows:
                if current is None or current.hour != hour:
                    if chunk:
                        current.file.write("".join(chunk))
                        chunk = []
                    current = self._next_file(fmt, hour)
                chunk.append(current.encoder.encode(r))
                current.rows += 1
            if chunk:
                current.file.write("".join(chunk))

    def _next_file(self, fmt, hour):
        self._close(fmt)
        path = self._staging[fmt] / f"hr={hour:02d}.{part_name(0, fmt)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        f = open(fd, "w", encoding="utf-8", newline="", buffering=1 << 16)
        encoder = utterances.ENCODERS[fmt]()
        f.write(encoder.header())
        self._open[fmt] = current = _OpenFile(hour, path, f, encoder)
        self._staged[fmt].append((hour, path))
        return current

    def _close(self, fmt):
        current = self._open.pop(fmt, None)
        if current is not None:
            current.file.flush()
            os.fsync(current.file.fileno())
            self.bytes += current.file.tell()
            current.file.close()

    def commit(self):
        """Publish every staged file, remove what this build did not
        write; fires with (published, removed) relative paths."""
        for fmt in self.formats:
            self._close(fmt)
        published, removed = [], []
        for fmt in self.formats:
            day = day_dir(self.root, self.feed, self.version, fmt, self.day)
            written = {}
            for hour, staged in self._staged[fmt]:
                target_dir = day / f"hr={hour:02d}"
                _make_dirs(target_dir)
                target = target_dir / part_name(0, fmt)
                os.replace(staged, target)
                _fsync_dir(target_dir)
                written.setdefault(target_dir.name, set()).add(target.name)
                published.append(target.relative_to(self.root).as_posix())
            removed += self._remove_stale(day, written, fmt)
            shutil.rmtree(self._staging[fmt], ignore_errors=True)
            if day.is_dir() and not any(os.scandir(day)):
                day.rmdir()
            parent = format_dir(self.root, self.feed, self.version, fmt)
            _fsync_dir(parent)
        return published, removed

    def _remove_stale(self, day, written, fmt):
        removed = []
        if not day.is_dir():
            return removed
        for hour_entry in sorted(os.scandir(day), key=lambda e: e.name):
            if not (HOUR_DIR.fullmatch(hour_entry.name)
                    and hour_entry.is_dir(follow_symlinks=False)):
                continue
            keep = written.get(hour_entry.name, set())
            for entry in sorted(os.scandir(hour_entry.path), key=lambda e: e.name):
                m = PART_FILE.fullmatch(entry.name)
                if m and m.group(2) == fmt and entry.name not in keep:
                    os.unlink(entry.path)
                    removed.append(os.path.relpath(entry.path, self.root))
            if keep:
                _fsync_dir(hour_entry.path)
                continue
            try:
                os.rmdir(hour_entry.path)
            except OSError:
                pass  # something not ours is in there: leave it
        _fsync_dir(day)
        return [p.replace(os.sep, "/") for p in removed]

    def abort(self):
        for current in self._open.values():
            current.file.close()
        self._open.clear()
        for staging in self._staging.values():
            shutil.rmtree(staging, ignore_errors=True)


class _PartitionedWriter:
    """The shared day (every row) and, with *per_app*, one day per app
    under ``apps/<app>`` (the rows of the conversations that app started),
    written and published together; same interface as :class:`_DayWriter`.
    A rebuild also clears the day of an app that has no rows any more."""

    def __init__(self, root, feed, version, day, formats, per_app):
        self.root = root
        self.args = (feed, version, day, formats)
        self.per_app = per_app
        self.shared = _DayWriter(root, *self.args)
        self.apps = {}          # app directory name -> _DayWriter

    @property
    def bytes(self):
        return self.shared.bytes + sum(w.bytes for w in self.apps.values())

    def _writers(self):
        return [self.shared, *self.apps.values()]

    def prepare(self):
        self.shared.prepare()

    def write(self, messages, conversation_ids):
        self.shared.write(messages, conversation_ids)
        if not self.per_app:
            return
        by_app = collections.defaultdict(list)
        for m in messages:
            app = (m.stream_params or {}).get("appId")
            if app:
                by_app[app_dir_name(app)].append(m)
        for name, rows in by_app.items():
            writer = self.apps.get(name)
            if writer is None:
                writer = self.apps[name] = _DayWriter(self.root / APPS_DIR / name, *self.args)
                writer.prepare()
            writer.write(rows, conversation_ids)

    def commit(self):
        published, removed = [], []
        for writer in self._writers():
            p, r = writer.commit()
            prefix = writer.root.relative_to(self.root).as_posix()
            published += [p_ if prefix == "." else f"{prefix}/{p_}" for p_ in p]
            removed += [r_ if prefix == "." else f"{prefix}/{r_}" for r_ in r]
        # Apps that had rows on this day before but have none now.
        apps = self.root / APPS_DIR
        for entry in _entries_of(apps):
            if entry.name in self.apps or not entry.is_dir(follow_symlinks=False):
                continue
            if not APP_DIR.fullmatch(entry.name):
                continue
            cleaner = _DayWriter(apps / entry.name, *self.args)
            if not any(day_dir(cleaner.root, cleaner.feed, cleaner.version, fmt,
                               cleaner.day).is_dir() for fmt in cleaner.formats):
                continue
            cleaner.prepare()
            _, r = cleaner.commit()
            removed += [f"{APPS_DIR}/{entry.name}/{r_}" for r_ in r]
        return published, removed

    def abort(self):
        for writer in self._writers():
            writer.abort()


def _entries_of(path):
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _make_dirs(path):
    """mkdir -p, fsyncing each parent whose entries changed (so a
    published file's directory survives a power cut)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=_DIR_MODE, exist_ok=True)
        _fsync_dir(d.parent)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def build_day(storage, directory, day, formats=utterances.FORMATS, *, reactor=None,
                    page_size=PAGE_SIZE, progress=None, should_stop=None, per_app=False):
    """Build the utterances feed of UTC *day* into *directory*, in *formats*.

    With *per_app* (``api.app_isolation``), each app's rows are also
    written under ``apps/<app>/``: the feed that app is shown.

    *progress*, if given, is called (on the reactor thread) with the
    number of rows of each page written; *should_stop*, if given, is asked
    before each page and stops the build (:class:`BuildStopped`, nothing
    published) when it answers true. Fires with a :class:`BuildResult`.
    """
    if reactor is None:
        from twisted.internet import reactor
    day = parse_day(day).isoformat()
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in utterances.ENCODERS]
    if unknown or not formats:
        raise ValueError(f"expected formats among {', '.join(utterances.FORMATS)}, got {formats}")
    began = time.monotonic()
    pool = reactor.getThreadPool()

    def blocking(f, *args):
        return threads.deferToThreadPool(reactor, pool, f, *args)

    writer = _PartitionedWriter(Path(directory), utterances.FEED, utterances.VERSION, day,
                                formats, per_app)
    conversations = collections.OrderedDict()
    rows = 0
    fetching = writing = None
    await blocking(writer.prepare)
    try:
        fetching = storage.messages_for_day(day, after=None, limit=page_size)
        while True:
            d, fetching = fetching, None
            page = await d
            if not page:
                break
            if should_stop is not None and should_stop():
                raise BuildStopped(f"export of {day} stopped before it was complete")
            # The next page is read while this one is written.
            fetching = storage.messages_for_day(day, after=page[-1], limit=page_size)
            ids = await _conversation_ids(storage, page, conversations)
            if writing is not None:
                d, writing = writing, None
                await d
            writing = blocking(writer.write, page, ids)
            rows += len(page)
            if progress is not None:
                writing.addCallback(lambda _, n=len(page): progress(n))
        if writing is not None:
            d, writing = writing, None
            await d
        published, removed = await blocking(writer.commit)
    except BaseException:
        # What is still in flight must finish (its failure is not ours to
        # report twice) before the staging is removed under it.
        for d in (fetching, writing):
            if d is not None:
                await d.addErrback(lambda _: None)
        await blocking(writer.abort)
        raise
    return BuildResult(
        feed=utterances.FEED, version=utterances.VERSION, day=day, formats=formats, rows=rows,
        files=tuple(published), removed=tuple(removed), bytes=writer.bytes,
        seconds=time.monotonic() - began,
    )


async def _conversation_ids(storage, page, cache):
    """guid -> the API's conversationId for the guids of *page*."""
    wanted = list(dict.fromkeys(m.guid for m in page))
    missing = [g for g in wanted if g not in cache]
    if missing:
        calls = await defer.gatherResults(
            [storage.get_call_by_guid(g) for g in missing], consumeErrors=True
        ).addErrback(_first_error)
        for guid, call in zip(missing, calls):
            cache[guid] = None if call is None else call.conversation_id
            while len(cache) > _CONVERSATION_CACHE:
                cache.popitem(last=False)
    return {g: cache.get(g) for g in wanted}


def _first_error(f):
    """Fail with what went wrong, not gatherResults' FirstError wrapper."""
    f.trap(defer.FirstError)
    f.value.subFailure.raiseException()


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Exporter:
    """Builds days of the feed and records every run in storage.

    *reactor* runs the file work on its thread pool; *clock* (default: the
    reactor) gives the times stored with runs.
    """

    log = Logger()

    def __init__(self, storage, directory, node, formats=utterances.FORMATS, reactor=None,
                 clock=None, page_size=PAGE_SIZE, per_app=False):
        if reactor is None:
            from twisted.internet import reactor
        self.storage = storage
        self.directory = directory
        self.node = node
        self.formats = tuple(formats)
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.page_size = page_size
        self.per_app = per_app

    @classmethod
    def from_config(cls, config, storage, reactor, clock=None):
        return cls(storage, config.in_state_dir(config.export.directory), config.node.name,
                   tuple(config.export.formats), reactor, clock,
                   per_app=config.api.app_isolation)

    def _now(self):
        return int(self.clock.seconds() * 1000)

    async def export(self, day, formats=None, progress=None, should_stop=None):
        """Build *day* now; fires with the BuildResult. Fails with
        :class:`ExportBusy` if a run of that day is going (nothing done),
        else with the build's error after recording the run as failed."""
        day = parse_day(day).isoformat()
        formats = self.formats if formats is None else tuple(formats)
        run_id = await self.storage.start_export_run(utterances.FEED, day, self.node,
                                                     now=self._now())
        if run_id is None:
            going = await self.storage.export_runs(feed=utterances.FEED, day=day, limit=1)
            who = f" (node {going[0].node})" if going and going[0].state == "running" else ""
            raise ExportBusy(f"an export of {utterances.FEED} for {day} is already running{who}")
        try:
            result = await build_day(
                self.storage, self.directory, day, formats, reactor=self.reactor,
                page_size=self.page_size, progress=progress, should_stop=should_stop,
                per_app=self.per_app,
            )
        except BaseException as e:
            try:
                await self.storage.finish_export_run(run_id, None, error=_one_line(e),
                                                     now=self._now())
            except Exception:
                self.log.failure("export: could not record the failed run {run_id}",
                                 run_id=run_id)
            raise
        await self.storage.finish_export_run(run_id, result.rows, detail=result.detail(),
                                             now=self._now())
        return result
