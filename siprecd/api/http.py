"""The HTTPS site: requests with a body size limit, and JSON answers.

Twisted's Request buffers the whole body before the resource sees it, so
the limit is enforced while the body arrives: past ``max_body_size`` the
bytes are counted and dropped (nothing more is kept in memory), the
request is marked, and the API answers 413-01 and closes the connection.
A client that keeps sending far past the limit is disconnected.
"""

import functools
import io
import json

from twisted.web import server

__all__ = ["LimitedRequest", "make_site", "write_json"]

# Past this many times the limit, stop reading and drop the connection.
_DISCONNECT_FACTOR = 16


class LimitedRequest(server.Request):
    max_body_size = 64 * 1024

    def __init__(self, *args, max_body_size=None, **kwargs):
        super().__init__(*args, **kwargs)
        if max_body_size is not None:
            self.max_body_size = max_body_size
        self.body_too_large = False
        self._body_bytes = 0

    def gotLength(self, length):
        super().gotLength(length)
        if length is not None and length > self.max_body_size:
            self._refuse_body()

    def handleContentChunk(self, data):
        self._body_bytes += len(data)
        if self.body_too_large:
            if self._body_bytes > _DISCONNECT_FACTOR * self.max_body_size:
                self.channel.loseConnection()
            return
        if self._body_bytes > self.max_body_size:
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def _refuse_body(self):
        self.body_too_large = True
        content, self.content = self.content, io.BytesIO()
        if content is not None:
            content.close()


def make_site(resource, max_body_size, timeout=60):
    factory = functools.partial(LimitedRequest, max_body_size=max_body_size)
    site = server.Site(resource, requestFactory=factory, timeout=timeout)
    site.noisy = False
    site.displayTracebacks = False
    return site


def write_json(request, status, body, headers=None):
    """Set status and headers and return the encoded body (for Klein)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("latin-1"), str(value).encode("latin-1"))
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
