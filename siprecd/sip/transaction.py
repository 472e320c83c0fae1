"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state).

Each transaction is a small state machine driven by three kinds of input:
messages from the network, responses/requests from the transaction user,
and timers on an injected ``IReactorTime``. Output goes through callables
given at construction (``send`` to the transport, ``on_*`` to the user), so
the machines are tested with ``twisted.internet.task.Clock`` and lists.

Server INVITE transactions also retransmit their 2xx until the ACK arrives
(RFC 3261 §13.3.1.4 gives that job to the UAS core; keeping it next to the
other INVITE timers is simpler, and the ACK is routed here by the endpoint).
"""

import attrs
from twisted.logger import Logger

__all__ = [
    "ack_for_error",
    "request_in_invite_transaction",
    "Timers",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "server_key",
    "client_key",
]

MAGIC_COOKIE = "z9hG4bK"


@attrs.frozen
class Timers:
    """RFC 3261 timer bases (seconds)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self):  # Timers B, F, H, J, L, M
        return 64 * self.t1


def server_key(request):
    """Key matching a request (or its ACK/CANCEL) to a server transaction.

    RFC 3261 §17.2.3: branch + sent-by + method, ACK matching its INVITE.
    CANCEL is its own transaction and so keeps its method. Branches without
    the magic cookie (RFC 2543 peers) fall back to the dialog identifiers.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port or 0, method)
    cseq_num, _ = request.cseq
    return ("rfc2543", request.call_id, cseq_num, request.from_.tag, str(via), method)


def client_key(branch, method):
    return (branch, "ACK" if method == "ACK" else method)


def request_in_invite_transaction(invite, method, to):
    """A request that belongs to *invite*'s client transaction (ACK for a
    non-2xx answer, RFC 3261 §17.1.1.3; CANCEL, §9.1): same Request-URI,
    top Via (so the same branch), From, Call-ID, CSeq number and Route."""
    from siprecd.sip.message import Headers, Request

    headers = Headers([
        ("Via", invite.headers.get_all("Via")[0]),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("From")),
        ("To", to),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq[0]} {method}"),
    ])
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    return Request(method=method, uri=invite.uri, headers=headers)


def ack_for_error(invite, response):
    """The ACK for a non-2xx final response to *invite* (To from the response)."""
    return request_in_invite_transaction(invite, "ACK", response.headers.get("To"))


class _Base:
    log = Logger()

    def __init__(self, clock, reliable, timers, on_terminated):
        self.clock = clock
        self.reliable = reliable
        self.timers = timers
        self._on_terminated = on_terminated
        self._calls = {}
        self.state = None

    def _after(self, name, delay, fn, *args):
        self._cancel(name)
        self._calls[name] = self.clock.callLater(delay, self._fire, name, fn, *args)

    def _fire(self, name, fn, *args):
        self._calls.pop(name, None)
        fn(*args)

    def _cancel(self, name):
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _terminate(self):
        if self.state == "terminated":
            return
        self.state = "terminated"
        for name in list(self._calls):
            self._cancel(name)
        if self._on_terminated is not None:
            self._on_terminated(self)

    @property
    def terminated(self):
        return self.state == "terminated"


class ServerInviteTransaction(_Base):
    """RFC 3261 §17.2.1 plus RFC 6026 (Accepted state).

    *send(response)* puts a response on the wire; *on_ack_timeout()* is
    told when no ACK came for a final response (the user then ends the
    call); *on_terminated(txn)* lets the endpoint forget the transaction.
    """

    def __init__(self, request, send, clock, *, reliable, timers=Timers(),
                 on_terminated=None, on_ack_timeout=None):
        super().__init__(clock, reliable, timers, on_terminated)
        self.request = request
        self.key = server_key(request)
        self._send = send
        self._on_ack_timeout = on_ack_timeout
        self.last_response = None
        self.state = "proceeding"

    def receive_request(self, request):
        """A retransmitted INVITE or an ACK for this transaction."""
        if request.method == "ACK":
            if self.state == "completed":
                self.state = "confirmed"
                self._cancel("G")
                self._cancel("H")
                self._after("I", 0 if self.reliable else self.timers.t4, self._terminate)
            elif self.state == "accepted":
                self._cancel("2xx")
                self._cancel("L")
                self.state = "acked"
                # Keep absorbing retransmitted INVITEs/ACKs until Timer L.
                self._after("L", self.timers.timeout, self._terminate)
            return
        if self.state in ("proceeding", "completed") and self.last_response is not None:
            self._send(self.last_response)

    def respond(self, response):
        if self.state not in ("proceeding",) and not (
            self.state == "accepted" and 200 <= response.status < 300
        ):
            self.log.warn(
                "response {status} after the transaction was {state}; dropped",
                status=response.status, state=self.state,
            )
            return
        self.last_response = response
        self._send(response)
        if response.status < 200:
            return
        if response.status < 300:
            self.state = "accepted"
            self._retransmit_2xx(self.timers.t1)
            self._after("L", self.timers.timeout, self._no_ack)
        else:
            self.state = "completed"
            if not self.reliable:
                self._after("G", self.timers.t1, self._retransmit_final, self.timers.t1)
            self._after("H", self.timers.timeout, self._no_ack)

    def _retransmit_2xx(self, interval):
        # RFC 3261 §13.3.1.4: 2xx is retransmitted even over reliable
        # transports, since the ACK is end to end.
        def again():
            self._send(self.last_response)
            self._retransmit_2xx(min(2 * interval, self.timers.t2))

        self._after("2xx", interval, again)

    def _retransmit_final(self, interval):
        self._send(self.last_response)
        nxt = min(2 * interval, self.timers.t2)
        self._after("G", nxt, self._retransmit_final, nxt)

    def _no_ack(self):
        if self._on_ack_timeout is not None:
            self._on_ack_timeout()
        self._terminate()


class ServerNonInviteTransaction(_Base):
    """RFC 3261 §17.2.2."""

    def __init__(self, request, send, clock, *, reliable, timers=Timers(), on_terminated=None):
        super().__init__(clock, reliable, timers, on_terminated)
        self.request = request
        self.key = server_key(request)
        self._send = send
        self.last_response = None
        self.state = "trying"

    def receive_request(self, request):
        if self.state in ("proceeding", "completed") and self.last_response is not None:
            self._send(self.last_response)

    def respond(self, response):
        if self.state not in ("trying", "proceeding"):
            return
        self.last_response = response
        self._send(response)
        if response.status < 200:
            self.state = "proceeding"
            return
        self.state = "completed"
        self._after("J", 0 if self.reliable else self.timers.timeout, self._terminate)


class _ClientTransaction(_Base):
    """What both client transactions share: send, retransmit over UDP on
    one timer, give up on another."""

    retransmit_timer = timeout_timer = initial_state = None

    def __init__(self, request, send, clock, *, reliable, on_response, on_timeout,
                 timers=Timers(), on_terminated=None):
        super().__init__(clock, reliable, timers, on_terminated)
        self.request = request
        self.key = client_key(request.top_via.branch, request.method)
        self._send = send
        self._on_response = on_response
        self._on_timeout = on_timeout
        self.state = self.initial_state

    def start(self):
        self._send(self.request)
        if not self.reliable:
            self._after(self.retransmit_timer, self.timers.t1, self._retransmit, self.timers.t1)
        self._after(self.timeout_timer, self.timers.timeout, self._timeout)

    def _timeout(self):
        self._on_timeout()
        self._terminate()


class ClientNonInviteTransaction(_ClientTransaction):
    """RFC 3261 §17.1.2. *on_response(response)* gets every response;
    *on_timeout()* is told when no final response came (Timer F)."""

    retransmit_timer, timeout_timer, initial_state = "E", "F", "trying"

    def _retransmit(self, interval):
        self._send(self.request)
        nxt = self.timers.t2 if self.state == "proceeding" else min(2 * interval, self.timers.t2)
        self._after("E", nxt, self._retransmit, nxt)

    def receive_response(self, response):
        if self.state in ("completed", "terminated"):
            return
        if response.status < 200:
            self.state = "proceeding"
            self._on_response(response)
            return
        self.state = "completed"
        self._cancel("E")
        self._cancel("F")
        self._on_response(response)
        self._after("K", 0 if self.reliable else self.timers.t4, self._terminate)


class ClientInviteTransaction(_ClientTransaction):
    """RFC 3261 §17.1.1 with RFC 6026. *make_ack(response)* builds the ACK
    for a non-2xx final response (same branch); ACK for 2xx is the user's."""

    retransmit_timer, timeout_timer, initial_state = "A", "B", "calling"

    def __init__(self, request, send, clock, *, make_ack, **kwargs):
        super().__init__(request, send, clock, **kwargs)
        self._make_ack = make_ack
        self._ack = None

    def _retransmit(self, interval):
        if self.state != "calling":
            return
        self._send(self.request)
        self._after("A", 2 * interval, self._retransmit, 2 * interval)

    def receive_response(self, response):
        if self.state == "terminated":
            return
        if response.status < 200:
            if self.state in ("calling", "proceeding"):
                self.state = "proceeding"
                self._cancel("A")
                self._on_response(response)
            return
        if response.status < 300:
            if self.state in ("calling", "proceeding"):
                self.state = "accepted"
                self._cancel("A")
                self._cancel("B")
                self._on_response(response)
                self._after("M", self.timers.timeout, self._terminate)
            elif self.state == "accepted":
                self._on_response(response)  # 2xx retransmission: the user re-ACKs
            return
        if self.state in ("calling", "proceeding"):
            self.state = "completed"
            self._cancel("A")
            self._cancel("B")
            self._ack = self._make_ack(response)
            self._send(self._ack)
            self._on_response(response)
            self._after("D", 0 if self.reliable else 32.0, self._terminate)
        elif self.state == "completed" and self._ack is not None:
            self._send(self._ack)
