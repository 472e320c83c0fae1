"""Between recording sessions and RTP: opens, updates and closes the media
streams of each call as the SIP layer reports it.

The SIP layer picks each stream's port number (from the RangePortAllocator)
while it writes the SDP answer; the socket pair is bound here, before the
200 OK goes out, so an answer never names a port nobody listens on. A port
another program holds makes the call fail with 503 (the SBC retries).
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.interfaces import ICallListener, IMediaPortAllocator, IStreamConsumer

__all__ = ["StreamId", "MediaManager", "SocketAwarePorts", "ENDED_TOTALS"]

ENDED_TOTALS = ("packets", "bytes", "lost", "late", "duplicates", "malformed", "out_of_window",
                "refused")


@attrs.frozen
class StreamId:
    """How the layers above know a recorded stream; stable for its life."""

    guid: str
    call_id: str
    label: str | None
    audio_index: int       # position among the audio m-lines (roles map on it)
    mixed: bool


@implementer(IMediaPortAllocator)
class SocketAwarePorts:
    """The SIP layer's port allocator, with one rule added: a port whose
    sockets are still open (or closing) goes back to the range only once
    they are closed, so the next call never gets a port it cannot bind."""

    def __init__(self, ports):
        self.ports = ports
        self.bound = {}        # port -> True while its sockets are open or closing
        self._release_when_closed = set()

    def allocate(self):
        return self.ports.allocate()

    def release(self, port):
        if port in self.bound:
            self._release_when_closed.add(port)
        else:
            self.ports.release(port)

    def opened(self, port):
        self.bound[port] = True

    def closed(self, port):
        self.bound.pop(port, None)
        if port in self._release_when_closed:
            self._release_when_closed.discard(port)
            self.ports.release(port)

    def __getattr__(self, name):
        return getattr(self.ports, name)


@implementer(ICallListener)
class MediaManager:
    log = Logger()

    def __init__(self, transport, consumer, ports=None, hang_up=None):
        self.transport = transport
        self.consumer = consumer
        self.ports = ports           # SocketAwarePorts, told when sockets open and close
        self.hang_up = hang_up       # hang_up(session, reason): ends a call from here
        self.calls = {}              # call_id -> {stream key: (StreamId, MediaStream)}
        # RTP counters of the streams closed so far (siprecd.metrics adds
        # those of the open ones).
        self.ended_totals = dict.fromkeys(ENDED_TOTALS, 0)

    # -- ICallListener ------------------------------------------------------

    def call_offered(self, session):
        self.calls[session.call_id] = {}
        try:
            self._sync(session)
        except Exception:
            self._close_all(session, "refused")
            raise
        return defer.succeed(None)

    def call_updated(self, session):
        if session.call_id in self.calls:
            self._sync(session)

    def call_ended(self, session, reason):
        self._close_all(session, reason)

    # -- streams --------------------------------------------------------------

    def _sync(self, session):
        """Make the open streams match the session's: open new ones, close
        dropped ones, follow hold/resume and moved sources."""
        open_streams = self.calls[session.call_id]
        wanted = {s.key: s for s in session.streams}
        for key in list(open_streams):
            if key not in wanted:
                _, media = open_streams.pop(key)
                self._close(media, "removed")
        for key, stream in wanted.items():
            if key in open_streams:
                _, media = open_streams[key]
                if stream.on_hold:
                    media.hold()
                else:
                    media.resume()
                media.set_remote(stream.remote_host, stream.remote_port)
                media.set_srtp(stream.srtp)  # same key: same context; new key: re-keyed
                self._follow_codec(open_streams[key][0], media, stream)
                continue
            sid = StreamId(session.guid.value, session.call_id, stream.label,
                           stream.audio_index, session.mixed)
            media = self.transport.open_stream(
                sid, _Watch(self, session, self.consumer), stream.codec.name,
                payload_type=stream.codec.payload_type,
                dtmf_payload_type=(stream.telephone_event.payload_type
                                   if stream.telephone_event else None),
                remote_host=stream.remote_host, port=stream.local_port, srtp=stream.srtp,
            )
            if self.ports is not None:
                self.ports.opened(stream.local_port)
            if stream.on_hold:
                media.hold()
            open_streams[key] = (sid, media)
            self.log.info("receiving {rtp} for guid {guid} stream {label} on port {port} ({codec})",
                          guid=sid.guid, call_id=sid.call_id, label=stream.label,
                          port=stream.local_port, codec=stream.codec.name,
                          rtp=f"SRTP ({stream.srtp.suite.name})" if stream.srtp else "RTP")

    def _follow_codec(self, sid, media, stream):
        """A re-INVITE that moved the stream to another codec (or payload
        types) keeps the stream: its receiver switches decoder."""
        receiver = media.receiver
        event = stream.telephone_event.payload_type if stream.telephone_event else -1
        if (receiver.codec, receiver.payload_type) == (stream.codec.name,
                                                        stream.codec.payload_type) \
                and (receiver.dtmf_payload_type or -1) == event:
            return
        self.log.info("guid {guid} stream {label} now {codec} (payload type {pt})",
                      guid=sid.guid, call_id=sid.call_id, label=sid.label,
                      codec=stream.codec.name, pt=stream.codec.payload_type)
        media.renegotiate(stream.codec.name, stream.codec.payload_type, event)

    def _close_all(self, session, reason):
        for _, media in self.calls.pop(session.call_id, {}).values():
            self._close(media, reason)

    def _close(self, media, reason):
        d = defer.maybeDeferred(media.close, reason)
        if self.ports is not None:
            d.addBoth(lambda result: (self.ports.closed(media.port), result)[1])
        d.addErrback(lambda f: self.log.failure("closing media port {port}", f, port=media.port))
        try:
            stats = media.stats()
        except Exception:
            self.log.failure("final statistics of media port {port}", port=media.port)
            return
        for name in ENDED_TOTALS:
            self.ended_totals[name] += stats.get(name, 0)

    def stats(self, call_id):
        """Per-stream RTP statistics of a call, by StreamId."""
        return {sid: media.stats() for sid, media in self.calls.get(call_id, {}).values()}

    def _stream_timed_out(self, session):
        streams = self.calls.get(session.call_id, {})
        if streams and all(m.receiver.ended for _, m in streams.values()):
            self.log.warn("no RTP for guid {guid} on any stream; hanging up",
                          guid=session.guid.value, call_id=session.call_id)
            if self.hang_up is not None:
                self.hang_up(session, "RTP timeout")


@implementer(IStreamConsumer)
class _Watch:
    """Passes everything on to the real consumer, and tells the manager
    when a stream ended by RTP timeout (the call may then be hung up)."""

    def __init__(self, manager, session, consumer):
        self.manager = manager
        self.session = session
        self.consumer = consumer

    def pcm(self, stream, position, samples, rate):
        self.consumer.pcm(stream, position, samples, rate)

    def event(self, stream, kind, position, detail):
        self.consumer.event(stream, kind, position, detail)
        if kind == "end" and detail and detail.get("reason") == "timeout":
            self.manager._stream_timed_out(self.session)
