"""The daily "utterances" batch feed (the File Exporter of docs/api.rst).

- :mod:`~siprecd.export.feed`: the rows and the two formats (jsonl, csv);
- :mod:`~siprecd.export.layout`: where files live (date and hour partitions);
- :mod:`~siprecd.export.build`: building a day, streamed, atomic, idempotent,
  off the reactor (:func:`build_day`, :class:`Exporter` which records runs);
- :mod:`~siprecd.export.service`: :class:`ExportService`, the daily build
  at ``export.at`` UTC by the lease holder;
- :mod:`~siprecd.export.catalogue`: what the File Exporter API lists and
  serves (:class:`Catalogue`, :class:`InvalidValue` = 400, :class:`NotFound` = 404);
- :mod:`~siprecd.export.signing`: signed, expiring download links;
- :mod:`~siprecd.export.cli`: ``siprecd export`` and ``siprecd export runs``.
"""

from siprecd.export.build import BuildResult, BuildStopped, ExportBusy, Exporter, build_day
from siprecd.export.catalogue import Catalogue, CatalogueError, FeedFile, InvalidValue, NotFound
from siprecd.export.service import ExportService
from siprecd.export.signing import KeyFileError, LinkRefused, Links, load_key, sign, verify

__all__ = [
    "build_day", "Exporter", "BuildResult", "BuildStopped", "ExportBusy", "ExportService",
    "Catalogue", "CatalogueError", "InvalidValue", "NotFound", "FeedFile",
    "sign", "verify", "LinkRefused", "Links", "load_key", "KeyFileError",
]
