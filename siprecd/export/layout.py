"""Where feed files live under the export directory (one place, so the
builder that writes them and the catalogue that serves them agree)::

    <export dir>/<feed>/version=<v>/format=<fmt>/dt=<YYYY-MM-DD>/hr=<HH>/part-<NNNN>.<fmt>

With ``api.app_isolation`` each app also has its own tree, holding only
the conversations it started, laid out the same way under
``<export dir>/apps/<app>/``; an app's File Exporter listings and links
see that tree only.

``hr`` is the UTC hour of the rows' creation time. Each hour has one part
today (``part-0000``); the number leaves room to split very large hours
later without a new layout. Names starting with ``.`` are the builder's
work in progress (staging directories) and are never served.
"""

import hashlib
import re

__all__ = [
    "APPS_DIR", "APP_DIR", "app_dir_name", "format_dir", "day_dir", "hour_dir", "part_name", "staging_prefix",
    "DATE_DIR", "HOUR_DIR", "PART_FILE",
]

# The names the builder writes; anything else in the tree is left alone
# and never listed. [0-9], not \d: \d also matches other scripts' digits.
DATE_DIR = re.compile(r"dt=([0-9]{4}-[0-9]{2}-[0-9]{2})")
HOUR_DIR = re.compile(r"hr=(0[0-9]|1[0-9]|2[0-3])")
PART_FILE = re.compile(r"part-([0-9]{4})\.([a-z0-9]{1,16})")


APPS_DIR = "apps"
# An app's directory: its api id when that is a safe file name, else a hash of it.
APP_DIR = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def app_dir_name(app_id):
    """The directory name of an app's tree (under ``apps/``)."""
    if APP_DIR.fullmatch(app_id) and app_id not in (".", ".."):
        return app_id
    return "h-" + hashlib.sha256(app_id.encode("utf-8")).hexdigest()[:40]


def format_dir(root, feed, version, fmt):
    return root / feed / f"version={version}" / f"format={fmt}"


def day_dir(root, feed, version, fmt, day):
    return format_dir(root, feed, version, fmt) / f"dt={day}"


def hour_dir(root, feed, version, fmt, day, hour):
    return day_dir(root, feed, version, fmt, day) / f"hr={hour:02d}"


def part_name(number, fmt):
    return f"part-{number:04d}.{fmt}"


def staging_prefix(day):
    """Prefix of the staging directories of builds of *day* (in the
    format directory: same file system as the final files, so the
    rename that publishes a file is atomic)."""
    return f".staging-dt={day}-"
