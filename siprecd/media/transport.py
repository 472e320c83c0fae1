"""The Twisted side of RTP reception: a socket pair per recorded stream.

Each stream gets its own RTP socket (an even port) and RTCP socket (the
next port), bound on ``media.host`` with a receive buffer of
``media.receive_buffer`` bytes, so the kernel sorts packets into streams
and no Python code has to. The RTP socket's protocol hands datagrams
straight to the stream's :class:`~siprecd.media.receiver.StreamReceiver`:
its ``datagram_received`` is installed as the protocol's
``datagramReceived``, so the reactor calls the receiver's fast path with
no call in between. One :class:`~twisted.internet.task.LoopingCall` per
process (``tick`` seconds) decodes all batched audio, releases gaps whose
wait is over and ends streams idle for ``media.rtp_timeout`` while not on
hold.

Where a stream's packets may come from (``media.latch``, on by default):
a stream latches to the source (address and port) of its first valid
packet -- RTP version 2 with one of the stream's payload types, and with
SRTP one that authenticates -- and from then on takes packets only from
there. Everything else is dropped and counted (``refused``, also under
its older names ``foreign_packets`` and ``source_rejected``).

The SDP's connection address is a hint: a first valid packet from that
host latches at once. One from another host (a NAT, an SBC that sends
from another interface) latches only when nothing valid came from the
SDP's host for ``media.latch_wait`` after it; until then it is dropped.
With ``media.check_source`` the hint is a rule: only the SDP's host is
ever taken. A c= of 0.0.0.0, or none, gives no hint.

A legitimate source moves by re-INVITE or UPDATE: an offer naming another
address or port opens the latch again. With ``media.relatch_after`` (off
by default), a stream whose latched source has been silent that long
while another source sends may latch to the newcomer; an attacker who
can reach the port can use that silence (hold, silence suppression), so
it is off unless chosen.

``media.strict_source`` is the older name for latch plus check_source.
``media.latch: false`` takes anyone (the old default; not safe).

An SRTP stream (SDES keys in the offer, see ``siprecd.media.srtp``) has
its datagrams unprotected between the source check and the receiver; what
fails authentication or replays is counted and dropped, never fed.
"""

import ipaddress
import socket
import sys

from twisted.application import service
from twisted.internet import defer, error, task
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from siprecd.media.receiver import ReceiverGroup, StreamReceiver
from siprecd.media.rtp import looks_like_rtcp
from siprecd.media.srtp import SrtpReceiver

__all__ = ["MediaTransport", "MediaStream", "RtpProtocol", "RtcpProtocol", "set_receive_buffer"]

# Linux: set the buffer beyond net.core.rmem_max (needs CAP_NET_ADMIN).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
DEFAULT_TICK = 0.02  # media.tick
BIND_ATTEMPTS = 8

log = Logger()


def set_receive_buffer(sock, size):
    """Ask for *size* bytes of receive buffer; return what the kernel gave.

    Linux reports twice the size asked for (it counts its own bookkeeping),
    so the value returned is halved there to compare with *size*.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return got // 2 if sys.platform.startswith("linux") else got


def _normal_host(host):
    """*host* as the socket layer spells it, or None for "anyone"."""
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name in c=: compared as written
    if address.is_unspecified:
        return None
    return str(address)


# RTP payload types 72-76 are RTCP packet types 200-204 (RFC 5761 §4).
_RTCP_TYPES = frozenset(range(72, 77))


class _SourceCheck:
    """Where a stream's packets may come from; see the module docstring.

    ``host`` is the SDP's host (None: no hint), ``require_host`` makes it
    a rule, ``latch`` latches to the first valid source (``latched``,
    the address tuple as datagrams carry it). *clock* is an IReactorTime;
    ``payload_types`` the types a valid packet may have."""

    def __init__(self, clock, host=None, latch=True, require_host=False, wait=1.0,
                 relatch_after=None, payload_types=()):
        self.clock = clock
        self.host = host
        self.latch = latch
        self.require_host = require_host
        self.wait = wait
        self.relatch_after = relatch_after
        self.payload_types = frozenset(payload_types)
        self.latched = None
        self.rejected = 0
        self.accepted = 0
        self.latches = 0
        self._candidate = None      # (address, since): another host, waiting out `wait`
        self._quiet_since = None    # (time, accepted then): for relatch_after

    @property
    def active(self):
        return self.latch or (self.require_host and self.host is not None)

    def reopen(self):
        """The SDP moved the source: latch again from the next valid packet."""
        self.latched = None
        self._candidate = None
        self._quiet_since = None

    def valid(self, data):
        """Whether *data* (plain RTP) may latch a stream."""
        if len(data) < 12 or data[0] >> 6 != 2:
            return False
        payload_type = data[1] & 0x7F
        if payload_type in _RTCP_TYPES:
            return False
        return not self.payload_types or payload_type in self.payload_types

    def admit(self, data, addr):
        """Whether the plain packet *data* from *addr* is taken, latching
        when it should; counted when refused."""
        latched = self.latched
        if latched is not None:
            if addr == latched:
                self.accepted += 1
                return True
            if self.relatch_after is not None and self._may_relatch(data, addr):
                return True
            self.rejected += 1
            return False
        host = self.host
        if host is not None and addr[0] != host and self.require_host:
            self.rejected += 1
            return False
        if not self.latch:
            return True
        if not self.valid(data):
            # Never latches; the receiver counts it as malformed or
            # not ours (and takes nothing from it).
            return True
        if host is not None and addr[0] != host:
            if not self._waited(addr):
                self.rejected += 1
                return False
        self._latch(addr)
        return True

    def _waited(self, addr):
        """A valid packet from another host than the SDP's: may it latch?"""
        now = self.clock.seconds()
        candidate = self._candidate
        if candidate is None:
            self._candidate = (addr, now)
            return self.wait <= 0
        return candidate[0] == addr and now - candidate[1] >= self.wait

    def _latch(self, addr):
        self.latched = addr
        self.latches += 1
        self.accepted += 1
        self._candidate = None
        self._quiet_since = None

    def _may_relatch(self, data, addr):
        if not self.valid(data):
            return False
        if self.require_host and self.host is not None and addr[0] != self.host:
            return False
        now = self.clock.seconds()
        quiet = self._quiet_since
        if quiet is None or quiet[1] != self.accepted:
            self._quiet_since = (now, self.accepted)
            return False
        if now - quiet[0] < self.relatch_after:
            return False
        log.info("media source moved from {old} to {new} after {seconds:.1f}s of silence "
                 "(media.relatch_after)", old=_address(self.latched), new=_address(addr),
                 seconds=now - quiet[0])
        self._latch(addr)
        return True

    def accepts_rtcp(self, addr):
        """RTCP comes from the RTP source's host (its port is its own)."""
        host = self.latched[0] if self.latched is not None else None
        if host is None and self.require_host:
            host = self.host
        return host is None or addr[0] == host


def _address(addr):
    return f"{addr[0]}:{addr[1]}" if addr else "?"


class RtpProtocol(DatagramProtocol):
    """A stream's RTP socket; datagrams go to the receiver's fast path."""

    noisy = False

    def __init__(self, receiver, source=None, srtp=None):
        self.receiver = receiver
        self.source = source
        self.srtp = srtp
        self.update_source()

    def update_source(self):
        """Pick the datagram handler for the current source check and SRTP."""
        source = self.source
        if self.srtp is None and (source is None or not source.active):
            # No indirection: the reactor calls the receiver itself.
            self.datagramReceived = self.receiver.datagram_received
        elif self.srtp is None and source.latch and source.relatch_after is None:
            self.datagramReceived = self._latched_path(source, self.receiver.datagram_received)
        else:
            self.datagramReceived = self._checked

    @staticmethod
    def _latched_path(source, deliver):
        # The common case, kept to one comparison and one call per packet:
        # a plain stream, latched (its sender's address compared as the
        # tuple the socket layer gives).
        def latched(data, addr):
            if addr == source.latched or source.admit(data, addr):
                deliver(data, addr)

        return latched

    def _checked(self, data, addr):
        source = self.source
        srtp = self.srtp
        if srtp is not None:
            if source is not None and source.latched is not None and addr != source.latched \
                    and source.relatch_after is None:
                source.rejected += 1   # not even worth a decryption
                return
            if looks_like_rtcp(data):  # RTCP multiplexed on the RTP port
                if source is None or source.accepts_rtcp(addr):
                    plain = srtp.unprotect_rtcp(data)
                    if plain is not None:
                        self.receiver.receive_rtcp(plain, addr)
                else:
                    source.rejected += 1
                return
            data = srtp.unprotect(data)
            if data is None:
                return      # counted by the SRTP context; never latches
        if source is None or not source.active or source.admit(data, addr):
            self.receiver.datagram_received(data, addr)


class RtcpProtocol(DatagramProtocol):
    """A stream's RTCP socket: reports go into the receiver's stats."""

    noisy = False

    def __init__(self, receiver, source=None, srtp=None):
        self.receiver = receiver
        self.source = source
        self.srtp = srtp

    def datagramReceived(self, data, addr):
        source = self.source
        if source is not None and not source.accepts_rtcp(addr):
            source.rejected += 1
            return
        if self.srtp is not None:
            data = self.srtp.unprotect_rtcp(data)
            if data is None:
                return
        self.receiver.receive_rtcp(data, addr)


class MediaStream:
    """One recorded stream: its two sockets and its receiver.

    ``port`` is the RTP port to put in the SDP answer (RTCP is ``port + 1``);
    ``rtp_listener`` and ``rtcp_listener`` are the listening ports.
    """

    def __init__(self, transport, receiver, port, rtp_port, rtcp_port, source, allocated):
        self.transport = transport
        self.receiver = receiver
        self.port = port
        self.rtp_listener = rtp_port
        self.rtcp_listener = rtcp_port
        self._source = source
        self._allocated = allocated
        self._closed = None
        self.remote = (None, None)
        self._named = None        # the last usable address the SDP named
        self.srtp = None          # SrtpReceiver while the stream is SRTP
        self._srtp_stats = None   # its counters, kept if the stream turns plain
        receiver.on_end = self._receiver_ended

    @property
    def stream(self):
        return self.receiver.stream

    def hold(self):
        """The session put this stream on hold (SIP re-INVITE or UPDATE)."""
        self.receiver.hold()

    def resume(self):
        """The session took this stream off hold."""
        self.receiver.resume()

    def set_remote(self, host, port=None):
        """Where the SDP says the stream comes from (again on every
        re-INVITE or UPDATE): the hint for latching (with
        ``media.check_source``, the only host taken). An offer that names
        another address, or another port, opens the latch again; the same
        one (a refresh) keeps it. A host of None or an unspecified address
        (hold by ``c=0.0.0.0``) is no move: the latch and the last address
        named stay, so a hold is no opening for anyone else."""
        old_port = self.remote[1]
        named = _normal_host(host)
        moved = ((named is not None and self._named is not None and named != self._named)
                 or (port is not None and old_port is not None and port != old_port))
        self.remote = (host, port)
        if named is not None:
            self._named = named
        if self._source is not None:
            self._source.host = self._named
            if moved:
                self._source.reopen()
            self.rtp_listener.protocol.update_source()

    def set_srtp(self, choice):
        """The stream's SRTP from the latest offer (an ``srtp.SrtpChoice``,
        or None for plain RTP): the context is kept while the SRC's key is
        unchanged and replaced when it changes."""
        attribute = choice.remote if choice is not None else None
        if attribute is None:
            if self.srtp is not None:
                self._srtp_stats = self.srtp.counters
            self.srtp = None
        elif self.srtp is None:
            self.srtp = SrtpReceiver(attribute)
            if self._srtp_stats is not None:
                self.srtp.counters = self._srtp_stats
                self.srtp.counters["srtp_rekeys"] += 1
        else:
            self.srtp.rekey(attribute)
        for listener in (self.rtp_listener, self.rtcp_listener):
            listener.protocol.srtp = self.srtp
        self.rtp_listener.protocol.update_source()

    def renegotiate(self, codec=None, payload_type=None, dtmf_payload_type=None):
        """A re-INVITE changed the stream's codec or payload types."""
        self.receiver.renegotiate(codec, payload_type, dtmf_payload_type)
        if self._source is not None:
            receiver = self.receiver
            types = {receiver.payload_type, receiver.cn_payload_type}
            if receiver.dtmf_payload_type is not None:
                types.add(receiver.dtmf_payload_type)
            self._source.payload_types = frozenset(types)

    def stats(self):
        out = self.receiver.stats()
        source = self._source
        rejected = source.rejected if source is not None else 0
        out["refused"] = rejected
        # The same count under the names it had before latching was the default.
        out["source_rejected"] = rejected
        out["foreign_packets"] = rejected
        out["latched"] = _address(source.latched) if source and source.latched else None
        out["srtp"] = self.srtp is not None
        if self.srtp is not None:
            out.update(self.srtp.stats())
        elif self._srtp_stats is not None:
            out.update(self._srtp_stats)
        out["port"] = self.port
        return out

    def close(self, reason="ended"):
        """End the stream (an "end" event if it had not ended yet) and free
        its sockets and port; the Deferred fires when both are closed."""
        if self._closed is None:
            self.receiver.end(reason)  # calls _receiver_ended...
            if self._closed is None:
                # ...unless it had ended already and we are inside that call.
                self._receiver_ended(self.receiver)
        d = defer.Deferred()
        self._closed.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    def _receiver_ended(self, receiver):
        if self._closed is not None:
            return
        self.transport._forget(self)
        self._closed = defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in (self.rtp_listener, self.rtcp_listener)],
            consumeErrors=True,
        )
        if self._allocated and self.transport.allocator is not None:
            allocator = self.transport.allocator
            self._closed.addBoth(lambda result: (allocator.release(self.port), result)[1])


class MediaTransport(service.Service):
    """Opens and serves the RTP streams of one process.

    *media* is the ``media`` config section (``siprecd.config.Media``):
    host, receive_buffer, jitter_window, latch, latch_wait, relatch_after,
    check_source, strict_source and rtp_timeout are used here. *allocator* (an IMediaPortAllocator) hands out ports when
    :meth:`open_stream` is not given one. *tick* is the period of the shared
    timer: PCM comes out at least that often, and the longer it is, the
    larger the batches and the cheaper each packet.
    """

    def __init__(self, reactor, media, allocator=None, tick=DEFAULT_TICK):
        self.reactor = reactor
        self.media = media
        self.allocator = allocator
        self.tick = tick
        self.group = ReceiverGroup(reactor, rtp_timeout=media.rtp_timeout)
        self.streams = {}  # MediaStream -> None, in opening order
        self._loop = None
        self._warned_buffer = False

    # -- service -----------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.group.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.tick, now=False).addErrback(
            lambda f: log.failure("media tick stopped", f)
        )

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return defer.gatherResults(
            [s.close("shutdown") for s in list(self.streams)], consumeErrors=True
        )

    # -- streams ---------------------------------------------------------

    def open_stream(self, stream, consumer, codec, payload_type=None, dtmf_payload_type=None,
                    remote_host=None, port=None, srtp=None):
        """Bind a stream's RTP and RTCP sockets and start receiving.

        *stream* is handed to *consumer* (an IStreamConsumer) with every
        call. Without *port*, one comes from the allocator (raising
        PortsExhausted when the range is used up; a port that cannot be
        bound is skipped). *srtp* (an ``srtp.SrtpChoice``) makes it an
        SRTP stream. Returns a :class:`MediaStream`.
        """
        receiver = StreamReceiver(
            stream, consumer, self.reactor, codec=codec, payload_type=payload_type,
            dtmf_payload_type=dtmf_payload_type, jitter_window=self.media.jitter_window,
        )
        source = self._source_check(receiver)
        if port is not None:
            rtp_port, rtcp_port = self._bind_pair(port, receiver, source)
            allocated = False
        else:
            if self.allocator is None:
                raise ValueError("open_stream needs a port when there is no allocator")
            for attempt in range(BIND_ATTEMPTS):
                port = self.allocator.allocate()
                try:
                    rtp_port, rtcp_port = self._bind_pair(port, receiver, source)
                except error.CannotListenError as e:
                    log.warn("cannot bind media port {port}: {error}", port=port, error=str(e))
                    self.allocator.release(port)
                    if attempt == BIND_ATTEMPTS - 1:
                        raise
                else:
                    break
            allocated = True
        media_stream = MediaStream(self, receiver, port, rtp_port, rtcp_port, source, allocated)
        if remote_host is not None:
            media_stream.set_remote(remote_host)
        if srtp is not None:
            media_stream.set_srtp(srtp)
        self.streams[media_stream] = None
        self.group.add(receiver)
        return media_stream

    def _source_check(self, receiver):
        media = self.media
        strict = getattr(media, "strict_source", False)
        latch = getattr(media, "latch", True) or strict
        require_host = media.check_source or strict
        if not latch and not require_host:
            return None
        types = {receiver.payload_type, receiver.cn_payload_type}
        if receiver.dtmf_payload_type is not None:
            types.add(receiver.dtmf_payload_type)
        return _SourceCheck(
            self.reactor, latch=latch, require_host=require_host,
            wait=getattr(media, "latch_wait", 1.0),
            relatch_after=getattr(media, "relatch_after", None), payload_types=types)

    def _bind_pair(self, port, receiver, source):
        host = self.media.host
        rtp = self.reactor.listenUDP(port, RtpProtocol(receiver, source), interface=host)
        try:
            rtcp = self.reactor.listenUDP(port + 1, RtcpProtocol(receiver, source), interface=host)
        except error.CannotListenError:
            rtp.stopListening()
            raise
        size = self.media.receive_buffer
        for p in (rtp, rtcp):
            got = set_receive_buffer(p.socket, size)
            if got < size and not self._warned_buffer:
                self._warned_buffer = True
                log.warn(
                    "media sockets get {got} bytes of receive buffer, not the {size} configured:"
                    " raise net.core.rmem_max", got=got, size=size,
                )
        return rtp, rtcp

    def _forget(self, media_stream):
        self.streams.pop(media_stream, None)
        self.group.discard(media_stream.receiver)
