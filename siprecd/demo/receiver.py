"""The demo's webhook receiver: HTTPS on loopback, prints each utterance.

It takes the real-time webhook body siprecd sends (docs/api.rst, "The
real-time webhook"), checks the shared token header the demo's webhook
target carries, prints one line per utterance as it arrives, and keeps
the bodies so the demo can wait for them.
"""

import json
import secrets
import time

from twisted.internet import defer
from twisted.web import resource, server

__all__ = ["PrintingReceiver", "TOKEN_HEADER"]

TOKEN_HEADER = "X-Demo-Token"
MAX_BODY = 1024 * 1024


class PrintingReceiver(resource.Resource):
    isLeaf = True

    def __init__(self, write=print, clock=time.monotonic):
        super().__init__()
        self.token = secrets.token_urlsafe(24)
        self.received = []
        self.started = clock()
        self._clock = clock
        self._write = write
        self._waiting = []

    def render_POST(self, request):
        if request.getHeader(TOKEN_HEADER) != self.token:
            request.setResponseCode(401)
            return b'{"error": "wrong token"}'
        body = request.content.read(MAX_BODY + 1)
        try:
            message = json.loads(body)
            said = message["autotranscribeResponse"]
            text = " ".join(u.get("text", "") for u in said["utterance"])
            role = message["sender"]["role"]
        except (ValueError, KeyError, TypeError):
            request.setResponseCode(400)
            return b'{"error": "not a transcript webhook"}'
        self._write(f"  webhook {self._clock() - self.started:5.1f}s  {role:8} "
                    f"[{said['start'] / 1000:5.2f}-{said['end'] / 1000:5.2f}s]  {text}")
        self.received.append(message)
        self._tell()
        request.setHeader(b"content-type", b"application/json")
        return b'{"ok": true}'

    def _tell(self):
        keep = []
        for count, d in self._waiting:
            if d.called:  # given up on
                continue
            if len(self.received) >= count:
                d.callback(self.received)
            else:
                keep.append((count, d))
        self._waiting = keep

    def wait_for(self, count):
        """A Deferred firing once *count* webhooks have arrived."""
        d = defer.Deferred()
        self._waiting.append((count, d))
        self._tell()
        return d

    def site(self):
        site = server.Site(self)
        site.noisy = False
        return site
