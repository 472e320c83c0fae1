"""The SIP endpoint: between the transports and the transaction user.

It parses what the transports hand it, matches requests and responses to
transactions (making new server transactions for new requests), marks the
top Via with ``received``/``rport`` (RFC 3261 §18.2.1, RFC 3581), and sends
responses back the way RFC 3261 §18.2.2 says: on the connection the request
came in on while it is open, else to ``received``:``rport`` or the sent-by
address. Malformed input gets a 400 when a response can be formed and is
otherwise dropped and logged; no exception escapes to the reactor. A
request whose handling ran out of descriptors or buffers (EMFILE,
ENFILE...) is answered 503 with Retry-After, never 500, and logged once
per burst.

The transaction user (``ua``, bound with :meth:`SipEndpoint.bind`)
provides :class:`ITransactionUser`: ``admit`` asked before a new request
gets a transaction (a response to send statelessly instead, on overload),
``handle_request`` for each new request (not ACK or CANCEL),
``handle_ack``, ``handle_ack_timeout``, ``handle_cancel`` when a CANCEL
matched a pending INVITE, and ``handle_stray_response``.
"""

import ipaddress

import attrs
from twisted.logger import Logger
from zope.interface import Interface
from zope.interface.verify import verifyObject

from siprecd.resources import is_exhaustion
from siprecd.sip.limits import BurstLog
from siprecd.sip.message import (
    KeepAlive,
    SipParseError,
    make_response,
    new_branch,
    parse_message,
)
from siprecd.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Timers,
    ack_for_error,
    client_key,
    server_key,
)

__all__ = ["Source", "SipEndpoint", "DEFAULT_PORTS"]

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
# Seconds an SBC is asked to wait when the process is out of descriptors.
EXHAUSTED_RETRY_AFTER = 10


@attrs.frozen
class Source:
    """Where a message came from (and where its responses go back)."""

    transport: str            # "UDP", "TCP" or "TLS"
    host: str
    port: int
    connection: object = attrs.field(default=None, eq=False, repr=False)
    local_host: str | None = None
    local_port: int | None = None

    @property
    def reliable(self):
        return self.transport != "UDP"


def _is_ip(host):
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class ITransactionUser(Interface):
    """What the endpoint hands requests and transaction events to (the
    recording server), bound with :meth:`SipEndpoint.bind`."""

    def admit(request, source):
        """Asked before a new request gets a transaction: None to go on, or
        a response to send statelessly instead (overload)."""

    def handle_request(request, txn, source):
        """A new request (not ACK or CANCEL) in its server transaction."""

    def handle_ack(request, source):
        """An ACK (for a 2xx: matched by Call-ID and CSeq number)."""

    def handle_ack_timeout(request):
        """No ACK came for the 2xx to *request* (RFC 6026 Timer L)."""

    def handle_cancel(invite_txn):
        """A CANCEL matched the pending INVITE transaction *invite_txn*."""

    def handle_stray_response(response, source):
        """A response that matched no client transaction."""


class SipEndpoint:
    log = Logger()

    def __init__(self, clock, transports, *, max_message_size=65536, timers=Timers()):
        self.clock = clock
        self.transports = transports
        self.max_message_size = max_message_size
        self.timers = timers
        self.ua = None           # the ITransactionUser, once bound
        self.server_txns = {}
        self.client_txns = {}
        # (Call-ID, CSeq number) of INVITEs answered 2xx and not yet ACKed:
        # the ACK for a 2xx has a branch of its own, so it is matched here.
        self._accepted = {}
        self.counters = {"received": 0, "malformed": 0, "errors": 0, "refused": 0,
                         "exhausted": 0, "tolerated": 0}
        self._exhausted = BurstLog(clock, self.log, "out of file descriptors or buffers")

    def bind(self, ua):
        """Hand requests to *ua* (an ITransactionUser) from now on."""
        verifyObject(ITransactionUser, ua)
        self.ua = ua

    # -- input from transports ---------------------------------------------

    def datagram_received(self, data, source):
        if not data.strip(b"\r\n \t"):
            return  # keep-alive
        try:
            message = parse_message(data, self.max_message_size)
        except SipParseError as e:
            self._malformed(e, source)
            return
        self.receive(message, source)

    def stream_items(self, items, source):
        """Items from a StreamParser: messages, parse errors, keep-alives."""
        for item in items:
            if isinstance(item, KeepAlive):
                source.connection.send(b"\r\n")
            elif isinstance(item, SipParseError):
                self._malformed(item, source)
            else:
                self.receive(item, source)

    def receive(self, message, source):
        self.counters["received"] += 1
        try:
            if hasattr(message, "method"):
                self._receive_request(message, source)
            else:
                self._receive_response(message, source)
        except SipParseError as e:
            # A header that is only read when it is used (Contact, Route...)
            # was malformed: the request is bad, not the server.
            self._malformed(SipParseError(e.reason, request=getattr(message, "method", None)
                                          and message), source)
        except Exception as e:
            if is_exhaustion(e):
                self._out_of_resources(message, source, e)
                return
            self.counters["errors"] += 1
            self.log.failure(
                "error handling a SIP message from {address}",
                address=f"{source.host}:{source.port}", call_id=_safe_call_id(message),
            )
            if hasattr(message, "method") and message.method != "ACK":
                try:
                    self._send_response(make_response(message, 500), source)
                except Exception:
                    self.log.failure("could not send 500")

    def _out_of_resources(self, message, source, error):
        self.counters["exhausted"] += 1
        self._exhausted.refused(source.host, str(error))
        if not hasattr(message, "method") or message.method == "ACK":
            return
        response = make_response(message, 503, "Out of Resources", headers=[
            ("Retry-After", str(EXHAUSTED_RETRY_AFTER))])
        txn = self.server_txns.get(server_key(message))
        try:
            if txn is not None and txn.state in ("trying", "proceeding"):
                txn.respond(response)
            elif txn is None:
                self._send_response(response, source)
        except Exception:
            self.log.info("could not answer 503 for want of resources; dropped")

    def _malformed(self, error, source):
        self.counters["malformed"] += 1
        self.log.info(
            "malformed SIP message from {address}: {reason}",
            address=f"{source.host}:{source.port}", reason=error.reason,
        )
        request = error.request
        if request is None or getattr(request, "method", "ACK") == "ACK":
            return
        try:
            self._mark_via(request, source)  # answer to where it came from, no DNS
            response = make_response(request, getattr(error, "status", 400) or 400, error.reason)
            txn = self.server_txns.get(server_key(request))
            if txn is None:
                self._send_response(response, source)
            elif txn.state in ("trying", "proceeding"):
                txn.respond(response)
            # else: a mangled retransmission of an answered request; absorbed.
        except Exception:
            self.log.info("could not answer the malformed message; dropped")

    # -- requests -----------------------------------------------------------

    def _mark_via(self, request, source):
        via = request.top_via
        changes = {}
        if via.host.strip("[]") != source.host or not _is_ip(via.host):
            changes["received"] = source.host
        if "rport" in via.params:
            changes["rport"] = str(source.port)
            changes["received"] = source.host
        if changes:
            vias = request.headers.get_all("Via")
            request.headers.remove("Via")
            request.headers.add("Via", str(via.with_params(**changes)))
            for other in vias[1:]:
                request.headers.add("Via", other)

    def _receive_request(self, request, source):
        self._mark_via(request, source)
        if request.tolerated:
            self.counters["tolerated"] += 1
            self.log.info("tolerated from {address} in {method} {call_id}: {what}",
                          address=f"{source.host}:{source.port}", method=request.method,
                          call_id=request.call_id, what="; ".join(request.tolerated))
        key = server_key(request)
        txn = self.server_txns.get(key)
        if request.method == "ACK":
            if txn is None:
                txn = self._accepted.pop((request.call_id, request.cseq[0]), None)
            if txn is not None:
                txn.receive_request(request)
            if self.ua is not None:
                self.ua.handle_ack(request, source)
            return
        if txn is not None:
            txn.receive_request(request)  # a retransmission
            return
        if request.method == "CANCEL":
            self._cancel(request, source)
            return
        refusal = self.ua.admit(request, source) if self.ua is not None else None
        if refusal is not None:
            # Over a limit (siprecd.sip.limits): answered without a
            # transaction (RFC 3261 §8.2.7), so a flood costs no memory and
            # no retransmissions; a retransmission is simply answered again.
            self.counters["refused"] += 1
            self._send_response(refusal, source)
            return
        txn = self._new_server_txn(request, source)
        if request.method == "INVITE":
            # Answer at once so the SBC stops retransmitting while the
            # offer is worked out (RFC 3261 §17.2.1).
            txn.respond(make_response(request, 100))
        if self.ua is None:
            txn.respond(make_response(request, 503, headers=[("Retry-After", "5")]))
            return
        self.ua.handle_request(request, txn, source)

    def _new_server_txn(self, request, source):
        send = lambda response: self._send_response(response, source)  # noqa: E731
        if request.method == "INVITE":
            txn = ServerInviteTransaction(
                request, self._track_2xx(send, request), self.clock,
                reliable=source.reliable, timers=self.timers,
                on_terminated=self._forget_server,
                on_ack_timeout=lambda: self._no_ack(request),
            )
        else:
            txn = ServerNonInviteTransaction(
                request, send, self.clock, reliable=source.reliable, timers=self.timers,
                on_terminated=self._forget_server,
            )
        txn.source = source
        self.server_txns[txn.key] = txn
        return txn

    def _track_2xx(self, send, request):
        def send_and_track(response):
            if 200 <= response.status < 300:
                self._accepted[(request.call_id, request.cseq[0])] = self.server_txns.get(
                    server_key(request)
                )
            send(response)

        return send_and_track

    def _no_ack(self, request):
        self._accepted.pop((request.call_id, request.cseq[0]), None)
        if self.ua is not None:
            self.ua.handle_ack_timeout(request)

    def _forget_server(self, txn):
        self.server_txns.pop(txn.key, None)
        req = txn.request
        if self._accepted.get((req.call_id, req.cseq[0])) is txn:
            del self._accepted[(req.call_id, req.cseq[0])]

    def _cancel(self, request, source):
        invite_key = server_key(request)[:-1] + ("INVITE",)
        invite = self.server_txns.get(invite_key)
        txn = self._new_server_txn(request, source)
        if invite is None or invite.state != "proceeding":
            txn.respond(make_response(request, 481))
            return
        txn.respond(make_response(request, 200))
        if self.ua is not None:
            self.ua.handle_cancel(invite)

    def respond(self, txn, response):
        txn.respond(response)

    # -- responses ----------------------------------------------------------

    def _receive_response(self, response, source):
        vias = response.via
        if not vias:
            return
        cseq_method = response.cseq[1]
        txn = self.client_txns.get(client_key(vias[0].branch, cseq_method))
        if txn is None:
            if self.ua is not None:
                self.ua.handle_stray_response(response, source)
            return
        txn.receive_response(response)

    def _send_response(self, response, source):
        data = response.to_bytes()
        connection = source.connection
        if connection is not None and getattr(connection, "connected", False):
            connection.send(data)
            return
        via = response.top_via
        host = via.received or via.host
        port = int(via.rport) if via.rport else (via.port or DEFAULT_PORTS.get(via.transport, 5060))
        self.transports.send(source.transport, host, port, data)

    # -- our own requests ---------------------------------------------------

    def via_for(self, transport, local_host, local_port):
        return f"SIP/2.0/{transport} {_host_for_header(local_host)}:{local_port};branch={new_branch()};rport"

    def send_request(self, request, destination, *, on_response, on_timeout):
        """Send a request of ours (BYE, re-INVITE, OPTIONS) through a client
        transaction; *destination* is a Source naming where it goes."""
        data_send = lambda req: self.transports.send(  # noqa: E731
            destination.transport, destination.host, destination.port, req.to_bytes(),
            connection=destination.connection,
        )
        common = dict(
            reliable=destination.reliable, on_response=on_response, on_timeout=on_timeout,
            timers=self.timers, on_terminated=lambda t: self.client_txns.pop(t.key, None),
        )
        if request.method == "INVITE":
            txn = ClientInviteTransaction(
                request, data_send, self.clock, make_ack=lambda r: ack_for_error(request, r), **common
            )
        else:
            txn = ClientNonInviteTransaction(request, data_send, self.clock, **common)
        self.client_txns[txn.key] = txn
        txn.start()
        return txn


def _host_for_header(host):
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _safe_call_id(message):
    try:
        return message.call_id
    except Exception:
        return None
