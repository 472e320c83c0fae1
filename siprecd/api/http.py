"""The HTTPS site: requests with a body size limit, and JSON answers.

Twisted's Request buffers the whole body before the resource sees it, so
the limit is enforced as soon as it is known to be passed, by the
connection itself (:class:`LimitedChannel`), before the request reaches
any route:

- a declared ``Content-Length`` over ``max_body_size`` is answered 413-01
  at once, from the headers alone; with ``Expect: 100-continue`` no
  ``100 Continue`` is sent, so the client never sends the body, and the
  connection is closed after the answer;
- a body without a declared length (chunked) is counted as it arrives
  and answered 413-01 the moment it passes the limit.

Either way the 413 is written before anything is closed. What the client
still sends of the body is read and dropped (nothing is kept in memory)
until the body ends, so that it reads the answer rather than a reset;
one that keeps sending far past the limit, or for longer than
``LINGER`` seconds, is disconnected.
"""

import functools
import io
import json

from twisted.web import http, server

from siprecd.api import errors

__all__ = ["LimitedRequest", "LimitedChannel", "make_site", "write_json"]

# Past this many times the limit, stop reading and drop the connection.
_DISCONNECT_FACTOR = 16
# Seconds a refused body may take to end before the connection is closed.
LINGER = 10.0
# A refused body with a declared length is read (and dropped) to its end
# up to this size, so that clients that send before they read see the 413.
_MAX_DRAINED = 64 * 1024 * 1024


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
            return
        if self._body_bytes > self.max_body_size:
            self._refuse_body()
            refuse = getattr(self.channel, "refuse_body", None)
            if refuse is not None:
                refuse(self)
            return
        super().handleContentChunk(data)

    def _refuse_body(self):
        self.body_too_large = True
        content, self.content = self.content, io.BytesIO()
        if content is not None:
            content.close()


class LimitedChannel(http.HTTPChannel):
    """An HTTP/1.1 connection that answers an oversized body with 413-01
    as soon as it is known (see the module docstring)."""

    _refused = False
    _discarded = 0
    _linger_call = None

    def _send100Continue(self):
        request = self.requests[-1] if self.requests else None
        if request is not None and getattr(request, "body_too_large", False):
            return  # the body is not wanted: it is answered 413 instead
        super()._send100Continue()

    def allHeadersReceived(self):
        super().allHeadersReceived()
        request = self.requests[-1]
        if getattr(request, "body_too_large", False):
            expect = request.requestHeaders.getRawHeaders(b"expect") or [b""]
            self.refuse_body(request, waiting=expect[0].lower() == b"100-continue")

    def refuse_body(self, request, waiting=False):
        """Write the 413 now. *waiting*: the client waits for 100 Continue
        and sends no body, so the connection is closed at once."""
        if self._refused:
            return
        self._refused = True
        _, _, body = errors.envelope(errors.PayloadTooLarge(
            f"the request body is larger than {request.max_body_size} bytes"))
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"content-type: application/json\r\ncache-control: no-store\r\n"
            b"connection: close\r\ncontent-length: " + str(len(payload)).encode()
            + b"\r\n\r\n" + payload)
        self.persistent = False
        if waiting:
            self._close()
            return
        # A declared body is read to its end (so the client gets to read the
        # answer) if it is not huge; anything else up to a multiple of the limit.
        declared = self.length if isinstance(self.length, int) else 0
        self._limit = max(_DISCONNECT_FACTOR * request.max_body_size,
                          min(declared, _MAX_DRAINED))
        self._linger_call = self.callLater(LINGER, self._close, True)

    def _close(self, abort=False):
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        self.setTimeout(None)
        if abort:
            self.transport.abortConnection()
        else:
            self.loseConnection()

    def dataReceived(self, data):
        if self._refused and (self.transport.disconnecting or self._linger_call is None):
            return
        super().dataReceived(data)

    def rawDataReceived(self, data):
        if self._refused and self._drop(data):
            return
        super().rawDataReceived(data)

    def _drop(self, data):
        """Count bytes of a refused body; True when they must not even be
        parsed (the connection is closed or being closed)."""
        if self.transport.disconnecting or self._linger_call is None:
            return True
        self._discarded += len(data)
        if self._discarded > self._limit:
            self._close(abort=True)
            return True
        return False  # parsed (and dropped), so the body's end is seen

    def allContentReceived(self):
        if self._refused:
            self._close()
            return
        super().allContentReceived()

    def connectionLost(self, reason):
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        super().connectionLost(reason)


class LimitedSite(server.Site):
    protocol = LimitedChannel


def make_site(resource, max_body_size, timeout=60):
    factory = functools.partial(LimitedRequest, max_body_size=max_body_size)
    site = LimitedSite(resource, requestFactory=factory, timeout=timeout)
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
