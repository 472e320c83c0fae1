"""The simulated SRC's SIP side: one transport to the SRS, and the calls on it.

:class:`SipClient` owns the socket (a UDP port, or one TCP/TLS connection
shared by every call, as SBCs keep one), runs the RFC 3261 transactions
from :mod:`siprecd.sip.transaction` and routes what arrives to its call.
:class:`SiprecCall` is one recording session as an SRC runs it: INVITE
(retransmitted over UDP), ACK for the 2xx with a new branch and the
SRS's To-tag, media, hold and resume by re-INVITE, BYE; a BYE from the
SRS is answered 200 and ends the call.

Deliberately small: no authentication, no forking (the first 2xx wins),
no session timers of our own (we never ask for them), in-dialog requests
over UDP go to the next hop (the first Record-Route, else the SRS's
Contact) and over TCP/TLS along the one connection.
"""

import os
import random
import secrets
import socket

import attrs

from twisted.internet import defer, endpoints, error, protocol, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from siprecd import __version__
from siprecd.media import srtp as srtpmod
from siprecd.simulator import invite as invitemod
from siprecd.simulator import rtp
from siprecd.simulator.results import CallResult, StreamResult, explain_status
from siprecd.sip.message import (
    Headers,
    KeepAlive,
    Request,
    Response,
    SipParseError,
    StreamParser,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    parse_name_addr,
    parse_uri,
)
from siprecd.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Timers,
    ack_for_error,
    client_key,
    request_in_invite_transaction,
    server_key,
)
from siprecd.siprec.multipart import BodyError, find_siprec_parts, split_body
from siprecd.siprec.sdp import TELEPHONE_EVENT, SdpError, parse_sdp

__all__ = ["SipClient", "SiprecCall", "UacTimers", "ConnectError", "resolve", "USER_AGENT"]

USER_AGENT = f"siprecd-src/{__version__}"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"
DEFAULT_PORTS = {"UDP": 5070, "TCP": 5070, "TLS": 5071}   # siprecd's defaults
RTCP_INTERVAL = 5.0  # seconds of call time between sender reports


@attrs.frozen
class UacTimers(Timers):
    """RFC 3261 timers whose transaction timeout (Timers B and F, 64*T1 =
    32 s by default) is the simulator's ``--timeout`` instead, so a user
    need not wait half a minute to learn that nothing answers."""

    answer_timeout: float = 32.0

    @property
    def timeout(self):
        return self.answer_timeout


class ConnectError(Exception):
    """The transport to the SRS could not be set up; the message says why."""


def resolve(reactor, host):
    """An IP address for *host* (a Deferred); literals are returned as they are."""
    host = host.strip("[]")
    if isIPAddress(host) or isIPv6Address(host):
        return defer.succeed(host)
    return reactor.resolve(host)


def _local_address_towards(ip):
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((ip, 9))
            return s.getsockname()[0]
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def _host_in_uri(host):
    return f"[{host}]" if ":" in host else host


def _reason_text(failure_or_exc):
    value = getattr(failure_or_exc, "value", failure_or_exc)
    text = str(value).strip() or type(value).__name__
    return text.replace("\n", " ")


# -- transport -------------------------------------------------------------------


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, client):
        self.client = client

    def datagramReceived(self, data, addr):
        if not data.strip(b"\r\n"):
            return  # keep-alive
        try:
            message = parse_message(data)
        except SipParseError as e:
            self.client.log.debug("unparseable datagram from {addr}: {e}", addr=addr, e=e.reason)
            return
        self.client.received(message, addr)


@implementer(IHandshakeListener)
class _Stream(protocol.Protocol):
    """One TCP or TLS connection; ``ready`` fires once it can carry SIP
    (after the TLS handshake, for TLS), or fails with why it cannot."""

    def __init__(self, client, tls):
        self.client = client
        self.tls = tls
        self.parser = StreamParser()
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self.lost = False

    def connectionMade(self):
        if not self.tls:
            self.ready.callback(self)

    def handshakeCompleted(self):
        if not self.ready.called:
            self.ready.callback(self)

    def dataReceived(self, data):
        for item in self.parser.feed(data):
            if isinstance(item, KeepAlive):
                self.transport.write(b"\r\n")
            elif isinstance(item, SipParseError):
                self.client.log.info("malformed message from the SRS: {e}", e=item.reason)
            else:
                self.client.received(item, None)
        if self.parser.broken:
            self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        self.lost = True
        self.closed.callback(None)
        if not self.ready.called:
            self.ready.errback(reason)
        else:
            self.client.connection_lost(reason)


class _MediaSocket(protocol.DatagramProtocol):
    """Our RTP or RTCP socket; the SRS sends nothing on RTP (recvonly), at
    most RTCP receiver reports, which are counted and dropped."""

    def __init__(self):
        self.received = 0

    def datagramReceived(self, data, addr):
        self.received += 1


class SipClient:
    """The simulator's SIP transport and transaction layer, shared by all calls."""

    log = Logger()

    def __init__(self, reactor, target, *, local_host=None, answer_timeout=32.0):
        self.reactor = reactor
        self.target = target
        self.transport = target.transport.upper()
        self.reliable = self.transport != "UDP"
        self.port = target.port or DEFAULT_PORTS[self.transport]
        self.timers = UacTimers(answer_timeout=answer_timeout)
        self.local_host = local_host
        self.local_port = None
        self.remote = None        # (ip, port) of the SRS
        self.calls = {}           # Call-ID -> SiprecCall
        self.client_txns = {}
        self.server_txns = {}
        self._udp = None
        self._stream = None
        self.closed = False

    @property
    def description(self):
        return f"{self.target.host}:{self.port} over {self.transport}"

    @defer.inlineCallbacks
    def connect(self):
        """Resolve the SRS and open the transport; fails with ConnectError."""
        try:
            ip = yield resolve(self.reactor, self.target.host)
        except Exception as e:
            raise ConnectError(f"cannot resolve {self.target.host}: {_reason_text(e)}") from None
        self.remote = (ip, self.port)
        if self.local_host is None:
            self.local_host = _local_address_towards(ip)
        if self.transport == "UDP":
            try:
                self._udp = self.reactor.listenUDP(0, _Datagrams(self), interface=self.local_host)
            except error.CannotListenError as e:
                raise ConnectError(f"cannot open a UDP socket on {self.local_host}: {e.socketError}") from None
            self.local_port = self._udp.getHost().port
            return self
        kind = endpoints.TCP6ClientEndpoint if ":" in ip else endpoints.TCP4ClientEndpoint
        endpoint = kind(self.reactor, ip, self.port, timeout=self.timers.timeout,
                        bindAddress=(self.local_host, 0))
        tls = self.transport == "TLS"
        if tls:
            endpoint = endpoints.wrapClientTLS(self._tls_options(), endpoint)
        stream = _Stream(self, tls)
        try:
            yield endpoints.connectProtocol(endpoint, stream)
            yield stream.ready
        except Exception as e:
            what = "TLS" if tls else "TCP"
            raise ConnectError(f"cannot connect to {self.target.host}:{self.port} over {what}: "
                               f"{_reason_text(e)}") from None
        self._stream = stream
        self.local_port = stream.transport.getHost().port
        return self

    def _tls_options(self):
        target = self.target
        if target.insecure:
            # Encrypted but unauthenticated: for a first test against a
            # self-signed certificate, never for production.
            return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        if target.ca_file:
            try:
                pem = open(target.ca_file, "rb").read()
                trust = ssl.trustRootFromCertificates(_certificates(pem))
            except (OSError, ValueError) as e:
                raise ConnectError(f"cannot read CA file {target.ca_file}: {_reason_text(e)}") from None
        else:
            trust = ssl.platformTrust()
        name = target.server_name or target.host
        return ssl.optionsForClientTLS(name, trustRoot=trust)

    def close(self):
        """Close the transport once what is queued has been sent (a Deferred)."""
        self.closed = True
        if self._udp is not None:
            return defer.maybeDeferred(self._udp.stopListening)
        stream = self._stream
        if stream is None or stream.lost:
            return defer.succeed(None)
        stream.transport.loseConnection()
        return stream.closed

    # -- sending --------------------------------------------------------------

    def via(self):
        return (f"SIP/2.0/{self.transport} {_host_in_uri(self.local_host)}:{self.local_port}"
                f";branch={new_branch()};rport")

    def contact(self, user="src"):
        scheme = "sips" if self.transport == "TLS" else "sip"
        param = "" if self.transport in ("UDP", "TLS") else f";transport={self.transport.lower()}"
        return f"<{scheme}:{user}@{_host_in_uri(self.local_host)}:{self.local_port}{param}>;+sip.src"

    def request_uri(self, user="srs"):
        scheme = "sips" if self.transport == "TLS" else "sip"
        param = ";transport=tcp" if self.transport == "TCP" else ""
        return f"{scheme}:{user}@{_host_in_uri(self.target.host)}:{self.port}{param}"

    def send(self, message, dest=None):
        if self.closed:
            return
        data = message.to_bytes()
        if self._udp is not None:
            self._udp.write(data, dest or self.remote)
        elif self._stream is not None and not self._stream.lost:
            self._stream.transport.write(data)

    def send_request(self, request, *, on_response, on_timeout, dest=None):
        """Start a client transaction for *request* and return it."""
        send = lambda r: self.send(r, dest)  # noqa: E731
        common = dict(reliable=self.reliable, on_response=on_response, on_timeout=on_timeout,
                      timers=self.timers, on_terminated=self._forget_client)
        if request.method == "INVITE":
            txn = ClientInviteTransaction(request, send, self.reactor,
                                          make_ack=lambda r: ack_for_error(request, r), **common)
        else:
            txn = ClientNonInviteTransaction(request, send, self.reactor, **common)
        self.client_txns[txn.key] = txn
        txn.start()
        return txn

    def _forget_client(self, txn):
        if self.client_txns.get(txn.key) is txn:
            del self.client_txns[txn.key]

    def _forget_server(self, txn):
        if self.server_txns.get(txn.key) is txn:
            del self.server_txns[txn.key]

    # -- receiving --------------------------------------------------------------

    def received(self, message, addr):
        try:
            if isinstance(message, Response):
                self._response(message)
            else:
                self._request(message, addr)
        except SipParseError as e:
            self.log.info("unusable message from the SRS: {e}", e=e.reason)

    def _response(self, response):
        number, method = response.cseq
        txn = self.client_txns.get(client_key(response.top_via.branch, method))
        if txn is not None:
            txn.receive_response(response)
            return
        call = self.calls.get(response.call_id)
        if call is not None and method == "INVITE" and response.status >= 200:
            call.stray_invite_response(response)

    def _request(self, request, addr):
        call = self.calls.get(request.call_id)
        if request.method == "ACK":
            if call is not None:
                call.handle_ack(request)
            return
        key = server_key(request)
        txn = self.server_txns.get(key)
        if txn is not None:
            txn.receive_request(request)
            return
        reply = lambda r: self.send(r, addr)  # noqa: E731
        kind = ServerInviteTransaction if request.method == "INVITE" else ServerNonInviteTransaction
        txn = kind(request, reply, self.reactor, reliable=self.reliable,
                   on_terminated=self._forget_server)
        self.server_txns[txn.key] = txn
        if call is None:
            txn.respond(make_response(request, 481))
        else:
            call.handle_request(request, txn)

    def connection_lost(self, reason):
        if self.closed:
            return
        for call in list(self.calls.values()):
            call.transport_failed(f"the {self.transport} connection to the SRS was lost: "
                                  f"{_reason_text(reason)}")


def _certificates(pem):
    blocks = []
    marker = b"-----END CERTIFICATE-----"
    for chunk in pem.split(marker)[:-1]:
        start = chunk.find(b"-----BEGIN CERTIFICATE-----")
        if start != -1:
            blocks.append(ssl.Certificate.loadPEM(chunk[start:] + marker + b"\n"))
    if not blocks:
        raise ValueError("no PEM certificate in it")
    return blocks


# -- one call ----------------------------------------------------------------------


class _CallStream:
    """One RTP stream of a call: its sockets, plan and counters."""

    def __init__(self, index, label, role, codec):
        self.index = index
        self.result = StreamResult(label=label, role=role, codec=codec)
        self.rtp = None        # listening port objects
        self.rtcp = None
        self.dest = None       # (ip, port)
        self.rtcp_dest = None
        self.ssrc = secrets.randbits(32)
        self.first_seq = secrets.randbits(16)
        self.first_ts = secrets.randbits(32)
        self.cname = f"src-{secrets.token_hex(4)}"
        self.event_pt = None
        self.srtp_key = None   # our SDES master key || salt, when offering SRTP
        self.srtp = None       # the libsrtp session protecting what we send


class SiprecCall:
    """One simulated recording session, from INVITE to BYE.

    *prepared* holds the encoded 20 ms frames of each stream
    (``prepared.frames[i]``) and the plan derived from the spec (hold
    slots, DTMF). ``run()`` returns a Deferred that fires with the
    :class:`CallResult`; it never fails.
    """

    log = Logger()

    def __init__(self, client, number, spec, prepared, *, speed, seed, guid_order,
                 media_host=None, rtp_ports=(40000, 49999), on_answered=None):
        self.client = client
        self.reactor = client.reactor
        self.number = number
        self.spec = spec
        self.prepared = prepared
        self.speed = speed
        self.seed = seed
        self.guid_order = guid_order
        self.media_host = media_host or client.local_host
        self.rtp_ports = rtp_ports
        self.on_answered = on_answered
        self.result = CallResult(number=number, flavour=spec.flavour, guid_style=spec.guid_style,
                                 codec=spec.codec.upper())
        self.streams = [_CallStream(i, label, role, spec.codec.upper())
                        for i, (label, role) in enumerate(zip(invitemod.LABELS, invitemod.ROLES))]
        if spec.srtp:
            suite = srtpmod.SUITES[spec.srtp_suite]
            for stream in self.streams:
                stream.srtp_key = os.urandom(suite.material_length)
        self.done = defer.Deferred()
        self.finished = False
        self.invite = None
        self.local_tag = new_tag()
        self.remote_tag = None
        self.remote_target = None
        self.route_set = []
        self.local_seq = 1
        self.dest = None                # where in-dialog requests go (UDP)
        self.sdp_version = 1
        self.sdp_session = str(secrets.randbelow(10**9) + 1)
        self.current_sdp = b""
        self.pacer = None
        self._acks = {}                 # CSeq number -> our ACK for that INVITE's 2xx
        self._incoming_invite = None    # server txn of an INVITE from the SRS
        self._queue = defer.succeed(None)
        self._invite_sent_at = None
        self._provisional = False

    # -- start ------------------------------------------------------------------

    def run(self):
        try:
            self._start()
        except Exception:
            self._crashed(Failure())
        return self.done

    def _start(self):
        try:
            self._open_media()
        except error.CannotListenError as e:
            self._fail(f"cannot open RTP sockets on {self.media_host}: {e.socketError}")
            return
        identity = invitemod.new_identity(self.client.local_host, self.reactor.seconds(), self.number)
        self.result.call_id = identity.call_id
        self.current_sdp = self._sdp("sendonly")
        content = invitemod.build_invite(self.spec.flavour, self.spec.guid_style, identity,
                                         self.current_sdp, self.guid_order)
        self.result.guid, self.result.guid_source = content.guid, content.guid_source
        self.invite = self._build_invite(identity, content)
        self.client.calls[identity.call_id] = self
        self._invite_sent_at = self.reactor.seconds()
        self.client.send_request(self.invite, on_response=self._invite_response,
                                 on_timeout=self._invite_timeout)

    def _open_media(self):
        pick = random.SystemRandom()
        low, high = self.rtp_ports
        evens = range(low + low % 2, high, 2)
        for stream in self.streams:
            for attempt in range(100):
                port = pick.choice(evens)
                try:
                    rtp_port = self.reactor.listenUDP(port, _MediaSocket(), interface=self.media_host)
                except error.CannotListenError:
                    if attempt == 99:
                        raise
                    continue
                rtcp_port = None
                if self.spec.rtcp:  # otherwise RTP+1 is left alone: one socket less per stream
                    try:
                        rtcp_port = self.reactor.listenUDP(port + 1, _MediaSocket(),
                                                           interface=self.media_host)
                    except error.CannotListenError:
                        rtp_port.stopListening()
                        if attempt == 99:
                            raise
                        continue
                stream.rtp, stream.rtcp = rtp_port, rtcp_port
                stream.result.local_port = port
                break

    def _sdp(self, direction):
        crypto = None
        if self.spec.srtp:
            # Tag 1, the same key in every offer of the call (re-INVITEs too).
            suite = srtpmod.SUITES[self.spec.srtp_suite]
            crypto = [srtpmod.format_crypto(1, suite, s.srtp_key) for s in self.streams]
        return invitemod.offer_sdp(
            self.media_host, [s.result.local_port for s in self.streams], self.spec.codec,
            direction=direction, session_id=self.sdp_session, version=self.sdp_version,
            crypto=crypto,
        )

    def _check_srtp(self, stream, media):
        """Whether the SRS's answer to our SRTP m-line takes our keying: an
        RTP/SAVP m-line with one a=crypto of our tag and suite and a key
        of the suite's length. Problems are reported."""
        label = stream.result.label
        if media.proto.upper() not in srtpmod.SDES_PROTOS:
            self.result.problems.append(
                f"the SRS answered {media.proto} to our SRTP offer on label {label}")
            return False
        if len(media.crypto) != 1:
            self.result.problems.append(
                f"the SRS answered {len(media.crypto)} a=crypto lines on label {label}, not 1")
            return False
        try:
            answered = srtpmod.parse_crypto(media.crypto[0])
        except srtpmod.CryptoRefused as e:
            self.result.problems.append(f"unusable a=crypto in the answer on label {label}: {e}")
            return False
        if answered.tag != 1 or answered.suite.name != self.spec.srtp_suite:
            self.result.problems.append(
                f"the SRS answered a=crypto tag {answered.tag} {answered.suite.name} on label "
                f"{label}; we offered tag 1 {self.spec.srtp_suite}")
            return False
        stream.result.srtp_suite = answered.suite.name
        return True

    def _build_invite(self, identity, content):
        c = self.client
        headers = Headers([
            ("Via", c.via()),
            ("Max-Forwards", "70"),
            ("From", f"<sip:src@{_host_in_uri(c.local_host)}>;tag={self.local_tag}"),
            ("To", f"<{c.request_uri()}>"),
            ("Call-ID", identity.call_id),
            ("CSeq", f"{self.local_seq} INVITE"),
            ("Contact", c.contact()),
            ("Require", "siprec"),
            ("Allow", ALLOW),
            ("User-Agent", USER_AGENT),
        ])
        for name, value in content.headers:
            headers.add(name, value)
        headers.add("Content-Type", content.content_type)
        return Request("INVITE", c.request_uri(), headers, content.body)

    # -- the INVITE's answer ------------------------------------------------------

    def _invite_response(self, response):
        if self.finished:
            if 200 <= response.status < 300:
                self.stray_invite_response(response)
            return
        if response.status < 200:
            self._provisional = True
            return
        if response.status < 300:
            if self.remote_tag is None:
                self._answered(response)
            else:
                self._resend_ack(response)
            return
        self.result.status, self.result.reason = response.status, response.reason
        details = [f"{name}: {response.headers.get(name)}"
                   for name in ("Warning", "Retry-After", "Unsupported", "Min-SE")
                   if response.headers.get(name)]
        self.result.detail = "; ".join(details)
        hint = explain_status(response.status)
        offered = f" (offered {self.spec.codec.upper()})" if response.status == 488 else ""
        self.result.problems.append(
            f"the SRS refused the call: {response.status} {response.reason}{offered}"
            + (f" -- {hint}" if hint else ""))
        self._finish()

    def _invite_timeout(self):
        if self.finished or self.remote_tag is not None:
            return
        self.result.timed_out = True
        self.result.problems.append(
            f"no final answer to the INVITE within {self.client.timers.timeout:g} s from "
            f"{self.client.description}: is an SRS listening there, and does the firewall let "
            f"SIP through?")
        if self._provisional:  # RFC 3261 §9.1: no CANCEL before a provisional answer
            self._cancel_invite()
        self._finish()

    def _cancel_invite(self):
        invite = self.invite
        cancel = request_in_invite_transaction(invite, "CANCEL", invite.headers.get("To"))
        self.client.send_request(cancel, on_response=lambda r: None, on_timeout=lambda: None)

    def _answered(self, response):
        self.result.answered = True
        self.result.status, self.result.reason = response.status, response.reason
        self.result.setup_ms = (self.reactor.seconds() - self._invite_sent_at) * 1000.0
        self.remote_tag = response.to.tag
        contact = response.headers.get("Contact")
        try:
            self.remote_target = parse_name_addr(contact).uri if contact else self.invite.uri
            parse_uri(self.remote_target)
        except SipParseError:
            self.result.problems.append(f"unusable Contact in the 2xx: {contact!r}")
            self.remote_target = self.invite.uri
        self.route_set = list(reversed(response.headers.get_all("Record-Route")))
        d = self._find_next_hop()
        d.addCallback(lambda _: self._ack(response))
        d.addCallback(lambda _: self._start_media(response))
        d.addCallback(lambda _: self._tell_answered())
        d.addErrback(self._crashed)

    def _tell_answered(self):
        if self.on_answered is not None:
            try:
                self.on_answered(self.result)
            except Exception:
                self.log.failure("on_call_answered failed")

    def _find_next_hop(self):
        if not self.client.reliable:
            uri = parse_uri(parse_name_addr(self.route_set[0]).uri if self.route_set
                            else self.remote_target)
            port = uri.port or DEFAULT_PORTS["UDP"]
            d = resolve(self.reactor, uri.host)
            d.addCallback(lambda ip: setattr(self, "dest", (ip, port)))
            d.addErrback(lambda f: setattr(self, "dest", self.client.remote))
            return d
        return defer.succeed(None)

    def _dialog_request(self, method, body=b"", content_type=None, cseq=None):
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        headers = Headers([
            ("Via", self.client.via()),
            ("Max-Forwards", "70"),
            ("From", self.invite.headers.get("From")),
            ("To", f"{self.invite.headers.get('To')};tag={self.remote_tag}"),
            ("Call-ID", self.invite.call_id),
            ("CSeq", f"{cseq} {method}"),
        ])
        for route in self.route_set:
            headers.add("Route", route)
        if method == "INVITE":
            headers.add("Contact", self.client.contact())
        if method != "ACK":
            headers.add("User-Agent", USER_AGENT)
        if body:
            headers.add("Content-Type", content_type or "application/sdp")
        return Request(method, self.remote_target, headers, body)

    def _ack(self, response):
        number = response.cseq[0]
        ack = self._dialog_request("ACK", cseq=number)  # ACK keeps its INVITE's CSeq
        self._acks[number] = ack
        self.client.send(ack, self.dest)

    def _resend_ack(self, response):
        ack = self._acks.get(response.cseq[0])
        if ack is not None:
            self.client.send(ack, self.dest)

    def stray_invite_response(self, response):
        """A final answer to an INVITE whose transaction has ended: a
        retransmitted 2xx (ACK it again), or one that came after we gave up
        (ACK it and hang up at once)."""
        number = response.cseq[0]
        if response.status >= 300:
            if number == 1:
                self.client.send(ack_for_error(self.invite, response))
            return
        if number in self._acks:
            self._resend_ack(response)
            return
        if number == 1 and self.remote_tag is None:
            # Answered after our timeout: take the dialog only to end it.
            self.remote_tag = response.to.tag
            contact = response.headers.get("Contact")
            self.remote_target = parse_name_addr(contact).uri if contact else self.invite.uri
            self.route_set = list(reversed(response.headers.get_all("Record-Route")))
            self.dest = self.client.remote
            self._ack(response)
            bye = self._dialog_request("BYE")
            self.client.send_request(bye, on_response=lambda r: None, on_timeout=lambda: None,
                                     dest=self.dest)

    # -- media --------------------------------------------------------------------------

    def _start_media(self, response):
        if self.finished:
            return
        answer = self._answer_sdp(response)
        if answer is None:
            self._hang_up()
            return
        entries = []
        accepted = False
        pt = invitemod.PAYLOAD_TYPES[self.spec.codec.upper()]
        for stream, frames in zip(self.streams, self.prepared.frames):
            media = answer.media[stream.index] if stream.index < len(answer.media) else None
            if media is None or media.port == 0:
                stream.result.refused = True
                self.result.problems.append(
                    f"the SRS refused the stream with label {stream.result.label} "
                    f"({stream.result.role}): port 0 in its answer")
                continue
            if not media.connection:
                self.result.problems.append(f"no connection address for label {stream.result.label}")
                continue
            if media.codecs and media.codecs[0].payload_type != pt:
                self.result.problems.append(
                    f"the SRS answered payload type {media.codecs[0].payload_type} on label "
                    f"{stream.result.label}, not the {pt} offered")
            host = media.connection
            if not (isIPAddress(host) or isIPv6Address(host)):
                self.result.problems.append(f"the SRS's media address {host!r} is not an IP address")
                continue
            if self.spec.srtp:
                if not self._check_srtp(stream, media):
                    continue
                stream.srtp = rtp.srtp_sender(self.spec.srtp_suite, stream.srtp_key)
            stream.dest = (host, media.port)
            rtcp_port = media.rtcp[0] if media.rtcp else media.port + 1
            rtcp_host = media.rtcp[1] if media.rtcp and media.rtcp[1] else host
            stream.rtcp_dest = (rtcp_host, rtcp_port)
            stream.result.destination = f"{_host_in_uri(host)}:{media.port}"
            event = next((c for c in media.codecs if c.name == TELEPHONE_EVENT), None)
            stream.event_pt = event.payload_type if event else None
            dtmf = self.prepared.dtmf if stream.index == self.prepared.dtmf_stream else ()
            if dtmf and stream.event_pt is None:
                self.result.problems.append(
                    f"the SRS did not accept telephone-event on label {stream.result.label}: "
                    "DTMF not sent")
                dtmf = ()
            stream.result.dtmf_digits = "".join(d.digit for d in dtmf)
            plan = rtp.plan_stream(
                frames, payload_type=pt, ssrc=stream.ssrc, first_seq=stream.first_seq,
                first_timestamp=stream.first_ts, hold=self.prepared.hold, dtmf=dtmf,
                event_payload_type=stream.event_pt or invitemod.TELEPHONE_EVENT_PT,
                ticks_per_slot=self._clock_rate() // 50,
            )
            rng = random.Random(f"{self.seed}/{self.number}/{stream.index}")
            schedule, counts = rtp.impair(plan, self.spec.impairments, rng)
            stream.result.impairments = counts
            entries += [(t, self._send_rtp, (stream, packet)) for t, packet in schedule]
            if self.spec.rtcp:
                end = self.prepared.slots * rtp.FRAME_SECONDS
                t = RTCP_INTERVAL
                while t < end:
                    entries.append((t, self._send_rtcp, (stream, False)))
                    t += RTCP_INTERVAL
            accepted = True
        if not accepted:
            self._hang_up()
            return
        if self.prepared.hold:
            start, slots = self.prepared.hold
            entries.append((start * rtp.FRAME_SECONDS, self._hold, "inactive"))
            entries.append(((start + slots) * rtp.FRAME_SECONDS, self._hold, "sendonly"))
        self.pacer = rtp.Pacer(self.reactor, entries, self.speed, done=self._media_done)
        self.pacer.start()

    def _clock_rate(self):
        return invitemod.CLOCK_RATES[self.spec.codec.upper()]

    def _answer_sdp(self, response):
        try:
            parts = split_body(response.headers.get("Content-Type"), response.body)
            sdp_bytes, _ = find_siprec_parts(parts)
            if sdp_bytes is None:
                raise SdpError("no SDP in it")
            answer = parse_sdp(sdp_bytes)
        except (BodyError, SdpError) as e:
            self.result.problems.append(f"the 2xx carries no usable SDP answer: {e}")
            return None
        if len(answer.media) < len(self.streams):
            self.result.problems.append(
                f"the SDP answer has {len(answer.media)} m-line(s) for the {len(self.streams)} offered")
        return answer

    def _send_rtp(self, item):
        stream, packet = item
        data = packet.data if stream.srtp is None else stream.srtp.protect(packet.data)
        stream.rtp.write(data, stream.dest)
        r = stream.result
        r.packets += 1
        r.bytes += len(data)
        r.payload_bytes += packet.payload_size
        if packet.kind == "dtmf":
            r.dtmf_packets += 1
        else:
            r.audio_packets += 1

    def _send_rtcp(self, item):
        stream, last = item
        now = self.pacer.now() if self.pacer is not None else 0.0
        make = rtp.rtcp_bye if last else rtp.rtcp_sender_report
        data = make(stream.ssrc, self.reactor.seconds(),
                    stream.first_ts + int(now * self._clock_rate()), stream.result.packets,
                    stream.result.payload_bytes, stream.cname)
        if stream.srtp is not None:
            data = stream.srtp.protect_rtcp(data)
        stream.rtcp.write(data, stream.rtcp_dest)
        stream.result.rtcp_packets += 1

    def _media_done(self):
        self.result.call_seconds = self.pacer.now()
        if self.spec.rtcp:
            for stream in self.streams:
                if stream.dest is not None:
                    self._send_rtcp((stream, True))
        self._hang_up()

    # -- in-dialog requests of ours --------------------------------------------------------

    def _in_dialog(self, method, body=b""):
        """Send *method* in the dialog once the previous one is done; a
        Deferred firing with the final status (408 on timeout)."""
        done = defer.Deferred()

        def send(_):
            if self.finished:
                done.callback(None)
                return None
            request = self._dialog_request(method, body)
            answered = defer.Deferred()

            def on_response(response):
                if response.status < 200:
                    return
                if method == "INVITE" and response.status < 300:
                    if response.cseq[0] in self._acks:
                        self._resend_ack(response)
                        return
                    self._ack(response)
                if not answered.called:
                    answered.callback(response.status)

            def on_timeout():
                if not answered.called:
                    answered.callback(408)

            self.client.send_request(request, on_response=on_response, on_timeout=on_timeout,
                                     dest=self.dest)
            answered.addCallback(done.callback)
            return answered

        self._queue.addCallback(send)
        self._queue.addErrback(self._crashed)
        return done

    def _hold(self, direction):
        what = "hold" if direction == "inactive" else "resume"
        self.sdp_version += 1
        self.current_sdp = self._sdp(direction)
        d = self._in_dialog("INVITE", self.current_sdp)

        def answered(status):
            if status is None:
                return
            self.result.hold.append((what, status))
            if not 200 <= status < 300:
                self.result.problems.append(f"the {what} re-INVITE was answered {status}")

        d.addCallback(answered)

    def _hang_up(self):
        if self.finished or self.result.ended_by is not None:
            return
        self.result.ended_by = "src"
        d = self._in_dialog("BYE")

        def answered(status):
            if status is None:
                return
            self.result.bye_status = status
            if not 200 <= status < 300:
                self.result.problems.append(
                    "no answer to our BYE" if status == 408 else f"our BYE was answered {status}")
            self._finish()

        d.addCallback(answered)

    # -- requests from the SRS ------------------------------------------------------------

    def handle_request(self, request, txn):
        ours = request.to.tag == self.local_tag and request.from_.tag == self.remote_tag
        if not ours or self.finished:
            txn.respond(make_response(request, 481))
            return
        method = request.method
        if method == "BYE":
            txn.respond(make_response(request, 200))
            if self.result.ended_by is None:
                self.result.ended_by = "srs"
                if self.pacer is not None:
                    self.result.call_seconds = self.pacer.now()
                self.result.problems.append(
                    f"the SRS ended the call with a BYE after {self.result.call_seconds:.2f} s "
                    "of call time (its max_call_duration, a shutdown, or no RTP received?)")
                self._finish()
        elif method == "INVITE":
            # An SRS refreshing the session: answer with what we send now.
            self._incoming_invite = txn
            txn.respond(make_response(request, 200, to_tag=self.local_tag,
                                      headers=[("Contact", self.client.contact())],
                                      body=self.current_sdp, content_type="application/sdp"))
        elif method in ("OPTIONS", "UPDATE", "INFO"):
            txn.respond(make_response(request, 200, headers=[("Allow", ALLOW)]))
        elif method == "CANCEL":
            txn.respond(make_response(request, 200))
        else:
            txn.respond(make_response(request, 501, headers=[("Allow", ALLOW)]))

    def handle_ack(self, request):
        txn = self._incoming_invite
        if txn is not None and txn.request.cseq[0] == request.cseq[0]:
            txn.receive_request(request)
            self._incoming_invite = None

    def transport_failed(self, reason):
        if not self.finished:
            self.result.problems.append(reason)
            self._finish()

    # -- the end ----------------------------------------------------------------------

    def _fail(self, problem):
        self.result.problems.append(problem)
        self._finish()

    def _crashed(self, failure):
        self.log.failure("simulated call {n} failed", failure, n=self.number)
        if not self.finished:
            self._fail(f"internal error: {_reason_text(failure)}")

    def _finish(self):
        if self.finished:
            return
        self.finished = True
        if self.pacer is not None:
            if not self.pacer.stopped:
                self.result.call_seconds = self.pacer.now()
            self.pacer.stop()
        for stream in self.streams:
            for port in (stream.rtp, stream.rtcp):
                if port is not None:
                    port.stopListening()
            self.result.streams.append(stream.result)
        # Stay routable for a moment: a retransmitted BYE or 2xx still
        # finds the call and is answered.
        self.reactor.callLater(self.client.timers.t4, self._forget)
        self.done.callback(self.result)

    def _forget(self):
        if self.client.calls.get(self.result.call_id) is self:
            del self.client.calls[self.result.call_id]
