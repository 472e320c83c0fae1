"""A raw-socket SIPREC client for tests: sends SIP exactly as written.

The call simulator (``siprecd-src``) speaks correct SIP; SBCs in the field
do not always, so tests that reproduce what they send need a peer that
puts any text on the wire, over UDP or TCP, and reads the answers with
siprecd's own parser. :class:`RawSrc` is that peer: blocking sockets, with
bounded waits (no sleeps), retransmitting UDP requests as a SIP client
does. :func:`send_rtp` sends RTP to the ports an answer names, paced in
real time or faster.
"""

import itertools
import secrets
import socket
import struct
import time

from siprecd.sip.message import Response, SipParseError, StreamParser, parse_message
from siprecd.siprec.sdp import parse_sdp

__all__ = ["RawSrc", "Dialog", "send_rtp", "answer_ports"]

_counter = itertools.count(1)


class Dialog:
    """What a test needs to go on in a dialog: the INVITE's answer and ids."""

    def __init__(self, call_id, from_tag, response, request_uri):
        self.call_id = call_id
        self.from_tag = from_tag
        self.response = response
        self.request_uri = request_uri
        self.cseq = 1

    @property
    def to_tag(self):
        return self.response.to.tag

    @property
    def to(self):
        return self.response.headers.get("To")


class RawSrc:
    """One SRC on *transport* ("udp" or "tcp") talking to host:port."""

    def __init__(self, host, port, transport="udp", local_host="127.0.0.1", timeout=10.0):
        self.host, self.port, self.transport = host, port, transport.lower()
        self.timeout = timeout
        self.local_host = local_host
        if self.transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((local_host, 0))
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self._parser = StreamParser()
        self.local_port = self.sock.getsockname()[1]
        self._pending = []          # messages read but not yet asked for
        self.requests_from_srs = []  # BYEs and the like the SRS sent us

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the wire ------------------------------------------------------------------

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.transport == "udp":
            self.sock.sendto(data, (self.host, self.port))
        else:
            self.sock.sendall(data)

    def _read(self, timeout):
        self.sock.settimeout(timeout)
        if self.transport == "udp":
            data, _ = self.sock.recvfrom(65536)
            try:
                return [parse_message(data)]
            except SipParseError:
                return []
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the SRS closed the connection")
        return [m for m in self._parser.feed(data) if not isinstance(m, Exception)
                and hasattr(m, "headers")]

    def wait_response(self, call_id, method, final=True, timeout=None, resend=None):
        """The next response to *method* in *call_id* (a final one, unless
        *final* is False); requests the SRS sends meanwhile are answered 200
        and kept. Over UDP, *resend* (bytes) goes out again T1-doubling."""
        deadline = time.monotonic() + (timeout or self.timeout)
        interval = 0.5
        next_resend = time.monotonic() + interval
        while True:
            for message in self._pending:
                if self._matches(message, call_id, method, final):
                    self._pending.remove(message)
                    return message
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no {'final ' if final else ''}response to {method} "
                                   f"in {call_id}")
            wait = deadline - now
            if resend is not None and self.transport == "udp":
                wait = min(wait, max(0.01, next_resend - now))
            try:
                for message in self._read(wait):
                    if isinstance(message, Response):
                        self._pending.append(message)
                    else:
                        self._answer_request(message)
            except (TimeoutError, socket.timeout):
                if resend is not None and self.transport == "udp" \
                        and time.monotonic() >= next_resend:
                    self.send(resend)
                    interval = min(2 * interval, 4.0)
                    next_resend = time.monotonic() + interval

    @staticmethod
    def _matches(message, call_id, method, final):
        return (message.call_id == call_id and message.cseq[1] == method
                and (message.status >= 200 or not final))

    def _answer_request(self, request):
        self.requests_from_srs.append(request)
        if request.method == "ACK":
            return
        lines = [f"SIP/2.0 200 OK"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in request.headers.get_all(name) if name == "Via" else \
                    [request.headers.get(name)]:
                lines.append(f"{name}: {value}")
        lines.append("Content-Length: 0")
        self.send("\r\n".join(lines) + "\r\n\r\n")

    # -- requests -----------------------------------------------------------------

    def via(self):
        transport = "UDP" if self.transport == "udp" else "TCP"
        return (f"SIP/2.0/{transport} {self.local_host}:{self.local_port};"
                f"branch=z9hG4bK{secrets.token_hex(6)};rport")

    def request_uri(self):
        suffix = "" if self.transport == "udp" else ";transport=tcp"
        return f"sip:srs@{self.host}:{self.port}{suffix}"

    def contact(self):
        return f"<sip:src@{self.local_host}:{self.local_port}>;+sip.src"

    @staticmethod
    def build(start_line, headers, body=b""):
        """A message from a start line, header lines (text, as written) and
        a body; Content-Length is added when no line names it."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        lines = [start_line, *headers]
        if not any(h.lower().startswith(("content-length:", "l:")) for h in headers):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body

    def invite(self, body=b"", content_type=None, *, call_id=None, headers=(), edit=None,
               from_tag=None, timeout=None, repeat=1):
        """Send an INVITE (its header lines passed through *edit* when given;
        *repeat* times, as a retransmission) and wait for its final answer;
        returns a :class:`Dialog`."""
        call_id = call_id or f"raw{next(_counter)}-{secrets.token_hex(6)}@{self.local_host}"
        from_tag = from_tag or secrets.token_hex(4)
        uri = self.request_uri()
        lines = [
            f"Via: {self.via()}",
            "Max-Forwards: 70",
            f"From: <sip:src@{self.local_host}>;tag={from_tag}",
            f"To: <sip:srs@{self.host}>",
            f"Call-ID: {call_id}",
            "CSeq: 1 INVITE",
            f"Contact: {self.contact()}",
            "Require: siprec",
            *headers,
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if edit is not None:
            lines = edit(lines)
        data = self.build(f"INVITE {uri} SIP/2.0", lines, body)
        for _ in range(repeat):
            self.send(data)
        response = self.wait_response(call_id, "INVITE", timeout=timeout, resend=data)
        return Dialog(call_id, from_tag, response, uri)

    def in_dialog(self, dialog, method, *, body=b"", content_type=None, cseq=None,
                  cseq_method=None, to=None, headers=(), edit=None, wait=True):
        """Send *method* in *dialog*; an ACK is not answered, anything else
        is waited for (its final answer returned)."""
        if method != "ACK":
            dialog.cseq = cseq if cseq is not None else dialog.cseq + 1
            number = dialog.cseq
        else:
            number = cseq if cseq is not None else dialog.cseq
        lines = [
            f"Via: {self.via()}",
            "Max-Forwards: 70",
            f"From: <sip:src@{self.local_host}>;tag={dialog.from_tag}",
            f"To: {to if to is not None else dialog.to}",
            f"Call-ID: {dialog.call_id}",
            f"CSeq: {number} {cseq_method or method}",
            f"Contact: {self.contact()}",
            *headers,
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if edit is not None:
            lines = edit(lines)
        data = self.build(f"{method} {dialog.request_uri} SIP/2.0", lines, body)
        self.send(data)
        if method == "ACK" or not wait:
            return None
        return self.wait_response(dialog.call_id, cseq_method or method, resend=data)


def answer_ports(response):
    """[(host, port) or None per m-line] of an SDP answer."""
    sdp = parse_sdp(response.body)
    return [(m.connection, m.port) if m.port else None for m in sdp.media]


def send_rtp(destinations, payloads, *, payload_type=0, samples_per_packet=160, speed=None,
             clock=8000, ssrc_base=0x5EED0000, source=("127.0.0.1", 0), sources=None):
    """Send ``payloads[i]`` (a list of packet payloads) to
    ``destinations[i]`` (host, port), packet by packet in step, every 20 ms
    of call time (``speed``: that much faster than real time; None: as
    fast as possible). One socket per stream, bound to ``sources[i]`` when
    given (to go on sending from the address a stream latched to), else to
    *source* (port 0: any)."""
    socks = []
    try:
        for i, _ in enumerate(destinations):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(sources[i] if sources is not None else source)
            socks.append(s)
        started = time.monotonic()
        longest = max((len(p) for p in payloads), default=0)
        for n in range(longest):
            if speed:
                due = started + n * samples_per_packet / clock / speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)   # pacing the sender, not synchronising a test
            for i, (dest, stream) in enumerate(zip(destinations, payloads)):
                if dest is None or n >= len(stream):
                    continue
                header = struct.pack("!BBHII", 0x80, payload_type, n & 0xFFFF,
                                     (n * samples_per_packet) & 0xFFFFFFFF, ssrc_base + i)
                socks[i].sendto(header + stream[n], dest)
    finally:
        for s in socks:
            s.close()
