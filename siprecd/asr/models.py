"""Vosk model folders: what a complete one holds, and fetching one by name.

Vosk publishes each model as ``<base><name>.zip`` next to
``<base>model-list.json``, a list of ``{"name", "lang", "size", "md5",
...}``, where ``<base>`` is ``vosk.MODEL_PRE_URL``
(https://alphacephei.com/vosk/models/). Vosk's own downloader
(``vosk.Model(model_name=...)``) reads that list, fetches the zip from
that base and unpacks it beside the target. siprecd fetches the same
files from the same place, in the same layout, with these differences a
daemon needs, which Vosk's downloader has no setting for:

- the base URL is ``asr.download_url`` when set (a mirror inside a
  closed network), else Vosk's ``MODEL_PRE_URL``; Vosk reads it only
  from a module constant;
- progress goes to a callback (the daemon logs it) instead of a
  terminal progress bar;
- the zip is checked against the size and MD5 sum the model list gives
  (Vosk's downloader checks neither), and every member's CRC as it is
  unpacked;
- it unpacks into a hidden staging folder and renames the model into
  place only when it is complete, so an interrupted fetch never leaves a
  half model where the daemon would try to load it; a model name not in
  the list is an error, where Vosk's downloader exits the process;
- a fetch can be cancelled between chunks (the daemon stopping).

Everything here blocks: call it on a thread, never on the reactor.
"""

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

import attrs

__all__ = [
    "FetchError", "FetchCancelled", "ListedModel", "missing_files", "looks_like_model",
    "default_base_url", "model_list_url", "model_zip_url", "lookup", "fetch_model",
    "MODEL_LIST_PAGE",
]

#: Where people browse the models (for messages).
MODEL_LIST_PAGE = "https://alphacephei.com/vosk/models"
# Read limits on what comes from the network.
MAX_LIST_BYTES = 8 * 1024 * 1024
MAX_ZIP_BYTES = 16 * 1024 ** 3
MAX_UNPACKED_BYTES = 32 * 1024 ** 3
CHUNK = 1024 * 1024
TIMEOUT = 30.0

# What Vosk needs in a model folder: the acoustic model, its feature
# configuration, and a decoding graph (one static HCLG, or the HCLr + Gr
# pair of the small models).
_REQUIRED = ("am/final.mdl", "conf/mfcc.conf", "conf/model.conf")
_GRAPHS = (("graph/HCLG.fst",), ("graph/HCLr.fst", "graph/Gr.fst"))


class FetchError(Exception):
    """A model could not be fetched; ``str()`` is one line saying why."""


class FetchCancelled(FetchError):
    """The fetch was cancelled (the daemon is stopping)."""


@attrs.frozen
class ListedModel:
    """A model as Vosk's model list describes it."""

    name: str
    url: str                  # where its zip is fetched from
    size: object = None       # bytes of the zip, when the list says
    md5: object = None        # hex MD5 of the zip, when the list says


def missing_files(folder):
    """What a Vosk model folder lacks (paths relative to it); empty when
    it has everything Vosk needs to load it. A folder that does not exist
    lacks everything."""
    folder = Path(folder)
    missing = [name for name in _REQUIRED if not (folder / name).is_file()]
    if not any(all((folder / name).is_file() for name in graph) for graph in _GRAPHS):
        missing.append("graph/HCLG.fst (or graph/HCLr.fst and graph/Gr.fst)")
    return missing


def looks_like_model(folder):
    return Path(folder).is_dir() and not missing_files(folder)


def default_base_url():
    """Vosk's own base URL for models (``vosk.MODEL_PRE_URL``)."""
    import vosk

    return vosk.MODEL_PRE_URL


def _base(base_url):
    base = base_url or default_base_url()
    return base if base.endswith("/") else base + "/"


def model_list_url(base_url=None):
    return _base(base_url) + "model-list.json"


def model_zip_url(name, base_url=None):
    return _base(base_url) + f"{name}.zip"


def _reason(error):
    """A short reason for a failed request."""
    if isinstance(error, HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, URLError):
        reason = error.reason
        return getattr(reason, "strerror", None) or str(reason)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def lookup(name, base_url=None, timeout=TIMEOUT):
    """The model list's entry for *name* (a :class:`ListedModel`); raises
    FetchError when the list cannot be read or has no such model."""
    url = model_list_url(base_url)
    try:
        with urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only, from config)
            data = response.read(MAX_LIST_BYTES + 1)
    except (OSError, ValueError) as e:
        raise FetchError(f"cannot read {url}: {_reason(e)}") from None
    if len(data) > MAX_LIST_BYTES:
        raise FetchError(f"{url} is larger than {MAX_LIST_BYTES} bytes; not a model list")
    try:
        entries = json.loads(data)
        listed = [e for e in entries if isinstance(e, dict) and e.get("name") == name]
    except (ValueError, TypeError):
        raise FetchError(f"{url} is not a Vosk model list (JSON list of models)") from None
    if not listed:
        raise FetchError(f"the model list {url} has no model named {name!r} "
                         f"(see {MODEL_LIST_PAGE})")
    entry = listed[0]
    size = entry.get("size")
    md5 = entry.get("md5")
    return ListedModel(
        name, model_zip_url(name, base_url),
        int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None,
        md5.lower() if isinstance(md5, str) and len(md5) == 32 else None)


def _download(listed, part, progress, cancelled, timeout):
    """The zip into the file *part*, checked against the list's size and MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with urlopen(listed.url, timeout=timeout) as response, open(part, "wb") as out:  # noqa: S310
            total = listed.size or int(response.headers.get("content-length") or 0) or None
            limit = min(MAX_ZIP_BYTES, listed.size or MAX_ZIP_BYTES)
            progress(0, total)
            while chunk := response.read(CHUNK):
                if cancelled():
                    raise FetchCancelled(f"fetching {listed.name} was cancelled")
                received += len(chunk)
                if received > limit:
                    raise FetchError(f"{listed.url} is larger than the {limit} bytes expected")
                digest.update(chunk)
                out.write(chunk)
                progress(received, total)
    except FetchError:
        raise
    except (OSError, ValueError) as e:
        raise FetchError(f"cannot fetch {listed.url}: {_reason(e)}") from None
    if listed.size is not None and received != listed.size:
        raise FetchError(f"{listed.url} gave {received} bytes, the model list says {listed.size}")
    if listed.md5 is not None and digest.hexdigest() != listed.md5:
        raise FetchError(f"{listed.url} has MD5 {digest.hexdigest()}, the model list says "
                         f"{listed.md5}: the file is damaged or not the one listed")
    return received


def _unpack(part, name, staging):
    """Unpack the zip *part* into *staging*; the model folder in it."""
    try:
        with zipfile.ZipFile(part) as archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise FetchError(f"{name}.zip would unpack to more than {MAX_UNPACKED_BYTES} bytes")
            for member in members:
                path = PurePosixPath(member.filename)
                if path.is_absolute() or ".." in path.parts:
                    raise FetchError(f"{name}.zip holds a path outside its folder: "
                                     f"{member.filename!r}")
            # extractall checks each member's CRC as it goes.
            archive.extractall(staging)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise FetchError(f"{name}.zip is not a usable zip file: {e}") from None
    # Vosk's zips hold one folder named after the model; one with the
    # files at its top is taken too.
    folder = staging / name if (staging / name).is_dir() else staging
    missing = missing_files(folder)
    if missing:
        raise FetchError(f"{name}.zip holds no complete Vosk model (no {', '.join(missing)})")
    return folder


def fetch_model(name, models_dir, *, base_url=None, progress=None, cancelled=None,
                timeout=TIMEOUT):
    """Fetch the model *name* into ``models_dir/name``; returns that path.

    *progress(bytes received, total bytes or None)* is called as the zip
    arrives (on this thread); *cancelled()* is asked between chunks.
    Raises FetchError (FetchCancelled when cancelled) with one line.
    """
    progress = progress or (lambda received, total: None)
    cancelled = cancelled or (lambda: False)
    models_dir = Path(models_dir)
    target = models_dir / name
    try:
        models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise FetchError(f"cannot create {models_dir}: {e.strerror or e}") from None
    listed = lookup(name, base_url, timeout)
    if listed.size is not None:
        free = shutil.disk_usage(models_dir).free
        # The zip and what it unpacks to sit side by side for a moment.
        if free < 3 * listed.size:
            raise FetchError(f"{models_dir} has {free // 2**20} MiB free; {name} needs about "
                             f"{3 * listed.size // 2**20} MiB to fetch and unpack")
    part = models_dir / f".{name}.zip.part"
    staging = models_dir / f".{name}.unpacking"
    try:
        _download(listed, part, progress, cancelled, timeout)
        if cancelled():
            raise FetchCancelled(f"fetching {name} was cancelled")
        shutil.rmtree(staging, ignore_errors=True)
        folder = _unpack(part, name, staging)
        if not target.exists():
            os.replace(folder, target)
    except OSError as e:
        raise FetchError(f"cannot write {name} into {models_dir}: {e.strerror or e}") from None
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target
