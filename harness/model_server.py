"""A local Vosk model host: what ``https://alphacephei.com/vosk/models/``
serves, on loopback, for tests of model fetching.

It serves a folder holding ``model-list.json`` and ``<name>.zip`` files
laid out the way Vosk publishes them (:func:`publish` writes them from a
model folder), over HTTP or, with a :class:`harness.pki.Authority`, over
HTTPS. It runs in a thread of its own (the standard library's threading
HTTP server), so a test may block on a daemon subprocess while the
daemon fetches from it. Every request's path is recorded in ``requests``.
"""

import hashlib
import http.server
import json
import os
import ssl
import threading
import zipfile
from functools import partial
from pathlib import Path

__all__ = ["publish", "list_zip", "ModelHost"]


def publish(model_folder, name, directory, lang="ko", md5=None, size=None):
    """Zip *model_folder* as ``<directory>/<name>.zip`` (one folder named
    *name* inside, as Vosk's zips are) and list it (:func:`list_zip`).
    Returns the zip's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / f"{name}.zip"
    model_folder = Path(model_folder)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        # Symbolic links (to files and folders) are followed.
        for root, _, files in sorted(os.walk(model_folder, followlinks=True)):
            for file in sorted(files):
                path = Path(root) / file
                out.write(path, f"{name}/{path.relative_to(model_folder)}")
    list_zip(directory, name, lang, md5, size)
    return archive


def list_zip(directory, name, lang="ko", md5=None, size=None):
    """List ``<directory>/<name>.zip`` in ``<directory>/model-list.json``
    with its size and MD5, unless *md5* or *size* say otherwise (to serve
    a file that is not the one listed)."""
    directory = Path(directory)
    data = (directory / f"{name}.zip").read_bytes()
    listing = directory / "model-list.json"
    entries = json.loads(listing.read_text()) if listing.exists() else []
    entries = [e for e in entries if e["name"] != name]
    entries.append({
        "lang": lang, "lang_text": lang, "name": name, "type": "small", "obsolete": "false",
        "version": "test", "url": f"https://alphacephei.com/vosk/models/{name}.zip",
        "size": len(data) if size is None else size,
        "size_text": f"{len(data) / 2**20:.1f}MiB",
        "md5": hashlib.md5(data).hexdigest() if md5 is None else md5,
    })
    listing.write_text(json.dumps(entries))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, requests, **kwargs):
        self._requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self._requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class ModelHost:
    """Serves *directory* on 127.0.0.1; ``url`` is its base URL (ending in /)."""

    def __init__(self, directory, authority=None):
        self.directory = Path(directory)
        self.requests = []
        handler = partial(_Quiet, directory=str(self.directory), requests=self.requests)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        scheme = "http"
        if authority is not None:
            issued = authority.issue_server(("127.0.0.1", "localhost"), name="model-host")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(issued.certificate_path, issued.key_path)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
