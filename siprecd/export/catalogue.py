"""What the File Exporter API (docs/api.rst) lists and serves, without HTTP.

The API hands request values straight to a :class:`Catalogue`; it answers
with plain lists, or a :class:`FeedFile` for a download, or raises:

- :class:`InvalidValue` (the API's 400): a value that is missing, not a
  string, or not of its field's syntax, and so every path-traversal
  attempt (``..``, ``/``, ``\\``, NUL, other scripts' digits...), and
  values that contradict each other (a ``fileName`` of another format or
  another interval than the one given);
- :class:`NotFound` (the API's 404): a well-formed value naming nothing
  there is: an unknown feed, version or format, a date or interval with
  no files, a file that does not exist.

Both derive from :class:`CatalogueError`, whose ``field`` is the request
field at fault (``feed``, ``version``, ``format``, ``date``, ``interval``,
``fileName``) and whose ``str()`` is one line that is safe to show the
client (a value is quoted, shortened, never interpreted).

Accepted values (plain or in partition form, as docs/api.rst allows):

==========  ==============================  =============================
field       plain                           partition form
==========  ==============================  =============================
feed        ``utterances``                  —
version     ``1`` (a JSON number too)       ``version=1``
format      ``jsonl``, ``csv``              ``format=jsonl``
date        ``2022-06-27``                  ``dt=2022-06-27``
interval    ``02`` (two digits, 00-23)      ``hr=02``
fileName    ``part-0000.jsonl``             ``hr=02/part-0000.jsonl``
==========  ==============================  =============================

Listings: feeds, versions and formats are what this siprecd builds
(feeds and versions are fixed by the code, formats by ``export.formats``);
dates are those with files (newest last); intervals are in partition form
(``hr=02``) and only those with files; files of one interval are bare
names (``part-0000.jsonl``), files of a whole date carry their interval
(``hr=02/part-0000.jsonl``) so that each names one file, and either form
is accepted back as ``fileName``.

Listing and resolving read directories (blocking but brief); the API may
call them from a thread. Symbolic links are never followed out of the
export directory, and never listed.
"""

import datetime
import os
import re
import stat
from pathlib import Path

import attrs

from siprecd.export import feed as utterances
from siprecd.export.layout import (
    APP_DIR, APPS_DIR, DATE_DIR, HOUR_DIR, PART_FILE, app_dir_name, day_dir, format_dir,
)

__all__ = ["Catalogue", "FeedFile", "CatalogueError", "InvalidValue", "NotFound", "MEDIA_TYPES"]

MEDIA_TYPES = {
    "jsonl": "application/jsonl; charset=utf-8",
    "csv": "text/csv; charset=utf-8; header=present",
}

# [0-9], never \d (which takes other scripts' digits); fullmatch only.
_FEED = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_VERSION = re.compile(r"[1-9][0-9]{0,5}")
_FORMAT = re.compile(r"[a-z0-9]{1,16}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HOUR = re.compile(r"0[0-9]|1[0-9]|2[0-3]")
_FILE = re.compile(r"(?:hr=(0[0-9]|1[0-9]|2[0-3])/)?(part-[0-9]{4}\.([a-z0-9]{1,16}))")


class CatalogueError(Exception):
    """A request value the catalogue cannot answer for; see subclasses."""

    #: The HTTP status the API answers with.
    status = 400

    def __init__(self, field, message):
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self):
        return self.message


class InvalidValue(CatalogueError):
    """Missing, malformed or contradictory (HTTP 400)."""

    status = 400


class NotFound(CatalogueError):
    """Well-formed, but there is no such thing (HTTP 404)."""

    status = 404


def _show(value):
    """A value quoted for an error message: short, printable, inert."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(field, value, key=None):
    """The string value of *field*, without its partition prefix."""
    if value is None or value == "":
        raise InvalidValue(field, f"{field} is required")
    if not isinstance(value, str):
        raise InvalidValue(field, f"{field} must be a string, got {_show(value)}")
    if key is not None and value.startswith(f"{key}="):
        value = value[len(key) + 1:]
    return value


@attrs.frozen
class FeedFile:
    """One file of a feed, resolved and checked."""

    path: object          # absolute pathlib.Path, a regular file inside the export directory
    relative: str         # "utterances/version=1/format=jsonl/dt=.../hr=02/part-0000.jsonl"
    name: str             # "part-0000.jsonl"
    size: int
    media_type: str


class Catalogue:
    """The feeds under one export directory.

    *feeds* maps feed -> version -> formats; by default the utterances
    feed, version 1, in *formats*.
    """

    def __init__(self, directory, formats=utterances.FORMATS, feeds=None, prefix=""):
        self.directory = Path(directory).absolute()
        if feeds is None:
            feeds = {utterances.FEED: {utterances.VERSION: tuple(formats)}}
        self._feeds = {f: {v: tuple(fmts) for v, fmts in vs.items()} for f, vs in feeds.items()}
        # Where this catalogue's tree is under the export directory ("" for
        # the whole feed, "apps/<app>/" for one app's): FeedFile.relative
        # starts with it, so a download link names the tree it opens.
        self.prefix = prefix

    def for_app(self, app_id):
        """The catalogue of what *app_id* may see under app isolation: its
        own tree (``apps/<app>/``), which holds the conversations it started."""
        name = app_dir_name(app_id)
        return Catalogue(self.directory / APPS_DIR / name, feeds=self._feeds,
                         prefix=f"{self.prefix}{APPS_DIR}/{name}/")

    @classmethod
    def from_config(cls, config):
        return cls(config.in_state_dir(config.export.directory), tuple(config.export.formats))

    # Values ---------------------------------------------------------------------

    def feed(self, value):
        """The feed name, checked to be one of ours."""
        name = _text("feed", value)
        if not _FEED.fullmatch(name):
            raise InvalidValue("feed", f"feed {_show(value)} is not a feed name")
        if name not in self._feeds:
            raise NotFound("feed", f"no feed {_show(value)} (feeds: {', '.join(self._feeds)})")
        return name

    def version(self, feed, value):
        """The version (plain string) of *feed*: "1", "version=1" or 1."""
        feed = self.feed(feed)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        plain = _text("version", value, "version")
        if not _VERSION.fullmatch(plain):
            raise InvalidValue("version", f"version {_show(value)} is not a version number")
        if plain not in self._feeds[feed]:
            raise NotFound("version", f"feed {feed} has no version {plain} "
                                      f"(versions: {', '.join(self._feeds[feed])})")
        return plain

    def format(self, feed, version, value):
        """The format (plain) of a feed version: "jsonl" or "format=jsonl"."""
        feed = self.feed(feed)
        version = self.version(feed, version)
        plain = _text("format", value, "format")
        if not _FORMAT.fullmatch(plain):
            raise InvalidValue("format", f"format {_show(value)} is not a format name")
        formats = self._feeds[feed][version]
        if plain not in formats:
            raise NotFound("format", f"feed {feed} version {version} has no format "
                                     f"{_show(plain)} (formats: {', '.join(formats)})")
        return plain

    @staticmethod
    def date(value):
        """The date (plain "YYYY-MM-DD"): "2022-06-27" or "dt=2022-06-27"."""
        plain = _text("date", value, "dt")
        if _DATE.fullmatch(plain):
            try:
                datetime.date.fromisoformat(plain)
                return plain
            except ValueError:
                pass
        raise InvalidValue("date", f"date {_show(value)} is not a date YYYY-MM-DD")

    @staticmethod
    def interval(value):
        """The interval in partition form ("hr=02"): "02" or "hr=02"."""
        plain = _text("interval", value, "hr")
        if not _HOUR.fullmatch(plain):
            raise InvalidValue("interval", f"interval {_show(value)} is not an hour "
                                           "interval hr=00 to hr=23")
        return f"hr={plain}"

    # Listings -----------------------------------------------------------------

    def feeds(self):
        return list(self._feeds)

    def versions(self, feed):
        return list(self._feeds[self.feed(feed)])

    def formats(self, feed, version):
        feed = self.feed(feed)
        return list(self._feeds[feed][self.version(feed, version)])

    def dates(self, feed, version, format):
        """Dates with files, oldest first ("YYYY-MM-DD")."""
        where = self._format_dir(feed, version, format)
        found = []
        for entry in _entries(where):
            m = DATE_DIR.fullmatch(entry.name)
            if m and entry.is_dir(follow_symlinks=False) and _is_date(m.group(1)):
                found.append(m.group(1))
        return sorted(found)

    def intervals(self, feed, version, format, date):
        """Intervals of *date* with files ("hr=02"), in order."""
        day, fmt = self._day_dir(feed, version, format, date)
        return [hour for hour, _ in self._hours(day, fmt)]

    def files(self, feed, version, format, date, interval=None):
        """File names of *date*: bare within an *interval*, else
        "hr=HH/name" across the whole date."""
        day, fmt = self._day_dir(feed, version, format, date)
        if interval is not None:
            hour = self.interval(interval)
            names = _parts(day / hour, fmt)
            if not names:
                raise NotFound("interval", f"no files for {hour} of {_date_plain(date)}")
            return names
        return [f"{hour}/{name}" for hour, names in self._hours(day, fmt) for name in names]

    def resolve(self, feed, version, format, date, interval, file_name):
        """The :class:`FeedFile` that ``getfeedfile`` names (*interval*
        may be None when *file_name* carries it)."""
        day, fmt = self._day_dir(feed, version, format, date)
        name = _text("fileName", file_name)
        m = _FILE.fullmatch(name)
        if not m:
            raise InvalidValue("fileName", f"fileName {_show(file_name)} is not a file name "
                                           "of this feed (e.g. part-0000.jsonl)")
        embedded, bare, extension = m.groups()
        if extension != fmt:
            raise InvalidValue("fileName", f"fileName {_show(file_name)} is not a {fmt} file")
        hour = None if interval is None else self.interval(interval)
        if embedded is not None:
            if hour is not None and hour != f"hr={embedded}":
                raise InvalidValue("fileName", f"fileName {_show(file_name)} is not in "
                                               f"interval {hour}")
            hour = f"hr={embedded}"
        if hour is None:
            raise InvalidValue("interval", "interval is required unless fileName carries it "
                                           "(hr=HH/part-NNNN.fmt)")
        return self._file(day / hour / bare, fmt, f"{name} of {_date_plain(date)}")

    def resolve_relative(self, relative):
        """The :class:`FeedFile` at *relative* (``FeedFile.relative``: the
        part of a download URL after its fixed prefix), every segment
        checked; the partition form is required here."""
        text = _text("path", relative)
        segments = text.split("/")
        if (len(segments) == 8 and segments[0] == APPS_DIR and not self.prefix
                and APP_DIR.fullmatch(segments[1]) and segments[1] not in (".", "..")):
            app = Catalogue(self.directory / APPS_DIR / segments[1], feeds=self._feeds,
                            prefix=f"{APPS_DIR}/{segments[1]}/")
            return app.resolve_relative("/".join(segments[2:]))
        if len(segments) != 6 or not all(segments):
            raise InvalidValue("path", f"path {_show(relative)} is not a feed file path")
        feed, version, fmt, date, hour, name = segments
        for segment, key in ((version, "version"), (fmt, "format"), (date, "dt"), (hour, "hr")):
            if not segment.startswith(f"{key}="):
                raise InvalidValue("path", f"path {_show(relative)} is not a feed file path")
        return self.resolve(feed, version, fmt, date, hour, name)

    # Internals ------------------------------------------------------------------

    def _format_dir(self, feed, version, format):
        feed = self.feed(feed)
        version = self.version(feed, version)
        fmt = self.format(feed, version, format)
        return format_dir(self.directory, feed, version, fmt)

    def _day_dir(self, feed, version, format, date):
        feed = self.feed(feed)
        version = self.version(feed, version)
        fmt = self.format(feed, version, format)
        plain = self.date(date)
        day = day_dir(self.directory, feed, version, fmt, plain)
        if not _real_dir(day):
            raise NotFound("date", f"no files for {plain}")
        return day, fmt

    @staticmethod
    def _hours(day, fmt):
        """[(hour, [names])] of the intervals of *day* that have files."""
        out = []
        for entry in _entries(day):
            if HOUR_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                names = _parts(day / entry.name, fmt)
                if names:
                    out.append((entry.name, names))
        return sorted(out)

    def _file(self, path, fmt, what):
        try:
            info = os.lstat(path)
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise NotFound("fileName", f"no file {what}")
        # Every segment was checked, so the file is inside the directory
        # unless a directory on the way is a symbolic link: then it is
        # not served.
        relative = os.path.relpath(path, self.directory)
        if os.path.realpath(path) != os.path.join(os.path.realpath(self.directory), relative):
            raise NotFound("fileName", f"no file {what}")
        return FeedFile(path=path, relative=self.prefix + relative.replace(os.sep, "/"),
                        name=path.name,
                        size=info.st_size,
                        media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"))


def _date_plain(value):
    """*value* (already checked) without its ``dt=`` prefix."""
    return value.removeprefix("dt=")


def _is_date(text):
    try:
        datetime.date.fromisoformat(text)
        return True
    except ValueError:
        return False


def _real_dir(path):
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _entries(path):
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _parts(hour_dir, fmt):
    names = []
    for entry in _entries(hour_dir):
        m = PART_FILE.fullmatch(entry.name)
        if m and m.group(2) == fmt and entry.is_file(follow_symlinks=False):
            names.append(entry.name)
    return sorted(names)
