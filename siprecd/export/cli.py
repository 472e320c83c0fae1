"""``siprecd export``: build a day of the utterances feed now, and list runs.

::

    siprecd export -c FILE --date YYYY-MM-DD [--format jsonl|csv ...]
    siprecd export runs -c FILE [--date YYYY-MM-DD] [--limit N] [--json]

``export`` builds the UTC day given (today's rows so far, or any past
day; a future day is refused) into ``export.directory``, in the formats
of ``export.formats`` or those given with ``--format`` (repeatable; each
must be one of ``export.formats``, since only those are served). The run
is recorded like the daemon's, and refused while another run of the same
day is going (on any node). On a terminal a progress bar shows rows as
they are written; in every case one summary line ends it::

    utterances 2022-06-27: 10000 rows, 48 files (jsonl, csv) in 1.9s -> /var/lib/siprecd/exports

``export runs`` lists recorded runs, newest first, one per line (``--json``:
one JSON object per line with ``id``, ``feed``, ``day``, ``state``, ``node``,
``started``, ``finished``, ``rows``, ``files``, ``seconds``, ``error``).

Exit status: 0 done; 1 the build failed or was refused (one line on
standard error says why); 2 bad arguments; 78 configuration error.
"""

import argparse
import datetime
import json
import shutil
import sys

from siprecd.clitools import CommandError, with_storage
from siprecd.messages import iso_ms

__all__ = ["register"]


def _day(text):
    from siprecd.export.build import parse_day

    try:
        return parse_day(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def register(subparsers):
    from siprecd.export.feed import FORMATS

    export = subparsers.add_parser(
        "export", help="build the utterances feed for a UTC day now (or list runs)",
        usage="siprecd export -c FILE --date YYYY-MM-DD [--format {jsonl,csv}]\n"
              "       siprecd export runs -c FILE [--date YYYY-MM-DD] [--limit N] [--json]",
        description="Build the utterances feed for one UTC day now, or list export runs "
                    "(`siprecd export runs`).",
    )
    # Not required=True here: `siprecd export runs -c FILE` gives it to
    # the subcommand instead; _build checks it.
    export.add_argument("-c", "--config", help="YAML configuration file (required)")
    export.add_argument("--date", type=_day, metavar="YYYY-MM-DD",
                        help="the UTC day to build (required)")
    export.add_argument("--format", action="append", choices=FORMATS, dest="formats",
                        help="build only this format (repeatable; default: export.formats)")
    export.set_defaults(func=lambda args: _build(args, export))
    # prog: the subcommand's usage must not start with export's own usage.
    sub = export.add_subparsers(dest="export_command", metavar="ACTION", prog="siprecd export")
    runs = sub.add_parser("runs", help="list export runs, newest first")
    runs.add_argument("-c", "--config", required=True, help="YAML configuration file")
    runs.add_argument("--date", type=_day, metavar="YYYY-MM-DD", help="only runs of this day")
    runs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    runs.add_argument("--json", action="store_true", help="print JSON lines")
    runs.set_defaults(func=_runs)


def _build(args, parser):
    if not args.config:
        parser.error("the following arguments are required: -c/--config")
    if args.date is None:
        parser.error("the following arguments are required: --date")
    day = args.date
    today = datetime.datetime.now(datetime.UTC).date()
    if day > today:
        print(f"siprecd: --date {day} is in the future (today is {today} UTC); "
              "only days that have begun can be exported", file=sys.stderr)
        return 1

    async def job(reactor, config, storage):
        from siprecd.export.build import ExportBusy, Exporter

        configured = tuple(config.export.formats)
        formats = tuple(dict.fromkeys(args.formats)) if args.formats else configured
        extra = [f for f in formats if f not in configured]
        if extra:
            raise CommandError(f"--format {extra[0]} is not in export.formats "
                               f"({', '.join(configured)}): its files would not be served")
        exporter = Exporter.from_config(config, storage, reactor)
        bar = _progress_bar(f"utterances {day}")
        try:
            result = await exporter.export(day, formats=formats,
                                           progress=None if bar is None else bar.update)
        except ExportBusy as e:
            raise CommandError(str(e)) from None
        except OSError as e:
            raise CommandError(f"cannot write the export of {day} in {exporter.directory}: "
                               f"{e.strerror or e}") from None
        finally:
            if bar is not None:
                bar.close()
        print(f"utterances {day}: {result.rows} rows, {len(result.files)} files "
              f"({', '.join(formats)}) in {result.seconds:.1f}s -> {exporter.directory}")

    return with_storage(args.config, job)


def _progress_bar(description):
    """A tqdm bar on standard error when that is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # a plain summary line is enough
        return None
    # A terminal that reports no size (a fresh pty, `docker exec -t`) would
    # get no bar at all (zero rows, zero columns): fall back to $COLUMNS
    # and $LINES, or 80x24.
    size = shutil.get_terminal_size((80, 24))
    return tqdm(desc=description, unit=" rows", file=sys.stderr, leave=False,
                ncols=size.columns, nrows=size.lines)


def _runs(args):
    from siprecd.export.feed import FEED

    async def job(reactor, config, storage):
        if args.limit < 1:
            raise CommandError("--limit must be at least 1")
        runs = await storage.export_runs(
            feed=FEED, day=None if args.date is None else args.date.isoformat(), limit=args.limit)
        for r in runs:
            detail = r.detail or {}
            row = {"id": r.id, "feed": r.feed, "day": r.day, "state": r.state, "node": r.node,
                   "started": iso_ms(r.started_ms), "finished": iso_ms(r.finished_ms),
                   "rows": r.rows, "files": detail.get("files"),
                   "seconds": detail.get("seconds"), "error": r.error}
            if args.json:
                print(json.dumps(row))
                continue
            parts = [f"{r.id}", r.day, f"{r.state:<7}", f"node {r.node}",
                     f"started {row['started']}"]
            if r.state == "done":
                parts.append(f"{r.rows} rows, {row['files']} files in {row['seconds']}s")
            if r.error:
                parts.append(f"error: {r.error}")
            print("  ".join(parts))
        if not runs and not args.json:
            print("no export runs")

    return with_storage(args.config, job)
