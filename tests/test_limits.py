"""Resource limits that shed load (siprecd.sip.limits): per-source rate,
max_calls, max_streams; answered 503 with Retry-After, calls in progress
unaffected, logged once per burst. Sans sockets on task.Clock first, then
a burst of real INVITEs at the running daemon."""

import re
import socket
import statistics
import threading
import time
import uuid

import pytest
from test_siprec_server import Harness
from twisted.internet.task import Clock
from twisted.logger import Logger

from harness.daemon import Daemon, write_config
from siprecd.simulator.samples import sample_invite, sample_sdp
from siprecd.sip.endpoint import Source
from siprecd.sip.limits import Admission, BurstLog, SourceRateLimiter

OTHER = Source("UDP", "198.51.100.7", 5060, None, "192.0.2.1", 5070)


def from_source(h, source, method, **kw):
    """Harness.request, from another address."""
    real = h.endpoint.datagram_received

    def receive(data, _src):
        real(data, source)

    h.endpoint.datagram_received = receive
    try:
        return h.request(method, **kw)
    finally:
        h.endpoint.datagram_received = real


def refused(response, reason):
    assert response.status == 503, response
    assert response.reason == reason
    assert int(response.headers.get("Retry-After")) >= 1
    assert response.headers.get("Warning").startswith('399 siprecd "')
    assert response.to.tag  # a final answer to a dialog-creating request


# -- max_calls and max_streams --------------------------------------------------------


def test_max_calls_refuses_new_invites_statelessly_and_calls_go_on():
    h = Harness(sip={"max_calls": 2})
    calls = [h.established(call_key=f"mc{i}") for i in range(2)]
    responses = h.invite(call_key="mc-extra")[1]
    # No 100 Trying, no transaction: one stateless 503.
    assert len(responses) == 1
    refused(responses[0], "Too Many Calls")
    assert "2 calls" in responses[0].headers.get("Warning")
    assert not [t for t in h.endpoint.server_txns.values()
                if t.request.call_id == sample_invite(call_key="mc-extra").call_id]
    # Calls in progress: OPTIONS in dialog, re-INVITE and BYE all answered.
    sample, ok = calls[0]
    assert h.request("OPTIONS", call_id=sample.call_id, to_tag=ok.to.tag, cseq=2)[-1].status == 200
    reinvite = h.request("INVITE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=3,
                         body=sample.body, content_type=sample.content_type)
    assert reinvite[-1].status == 200
    assert h.request("BYE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=4)[-1].status == 200
    # Out-of-dialog OPTIONS still 200 at the limit (the node is alive).
    assert h.request("OPTIONS")[-1].status == 200
    # One call ended: room for one more.
    assert h.invite(call_key="mc-after")[1][-1].status == 200
    assert h.server.stats()["max_calls"] == 1
    assert h.endpoint.counters["refused"] == 1


def test_max_streams_counts_the_offer():
    h = Harness(media={"port_min": 30000, "port_max": 30031, "max_streams": 3})
    assert h.invite(call_key="ms1")[1][-1].status == 200           # 2 streams
    responses = h.invite(call_key="ms2")[1]                         # 2 + 2 > 3
    refused(responses[-1], "Too Many Streams")
    assert [r.status for r in responses] == [100, 503]             # known once the SDP is read
    plain = h.request("INVITE", call_id="one-stream", body=sample_sdp(("1",)),
                      content_type="application/sdp")
    assert plain[-1].status == 200                                 # 2 + 1 = 3
    # At the limit: refused before the body is even looked at.
    responses = h.invite(call_key="ms3")[1]
    assert len(responses) == 1
    refused(responses[0], "Too Many Streams")
    assert h.server.stats()["streams"] == 3
    assert h.server.stats()["max_streams"] == 2


# -- per-source rate ---------------------------------------------------------------------


def test_rate_limit_per_source_for_new_invites_and_options_only():
    h = Harness(sip={"rate_limit": {"requests_per_second": 1, "burst": 3}})
    sample, ok = h.established(call_key="rl")             # token 1
    assert h.request("OPTIONS")[-1].status == 200          # token 2
    assert h.request("OPTIONS")[-1].status == 200          # token 3
    over = h.request("OPTIONS")
    assert len(over) == 1
    refused(over[0], "Rate Limited")
    assert over[0].headers.get("Retry-After") == "1"
    invite = h.invite(call_key="rl2")[1]
    refused(invite[-1], "Rate Limited")
    # Inside the dialog nothing is limited: OPTIONS, re-INVITE, ACK, BYE.
    for cseq in range(2, 7):
        assert h.request("OPTIONS", call_id=sample.call_id, to_tag=ok.to.tag,
                         cseq=cseq)[-1].status == 200
    assert h.request("INVITE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=7,
                     body=sample.body, content_type=sample.content_type)[-1].status == 200
    assert h.request("ACK", call_id=sample.call_id, to_tag=ok.to.tag, cseq=7) == []
    assert h.request("BYE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=8)[-1].status == 200
    # Another source has its own bucket.
    assert from_source(h, OTHER, "OPTIONS")[-1].status == 200
    # Tokens come back with time.
    h.clock.advance(1.0)
    assert h.request("OPTIONS")[-1].status == 200
    assert h.request("OPTIONS")[-1].status == 503
    assert h.server.stats()["rate_limited"] == 3


def test_unknown_in_dialog_requests_are_not_limited_either():
    h = Harness(sip={"rate_limit": {"requests_per_second": 0.1, "burst": 1}})
    assert h.request("OPTIONS")[-1].status == 200
    assert h.request("OPTIONS")[-1].status == 503
    # A BYE for a dialog we do not know: 481 as always, not 503.
    assert h.request("BYE", to_tag="nope", cseq=9)[-1].status == 481
    assert h.request("BYE")[-1].status == 481


def test_trusted_sources_bypass_the_rate_limit_but_not_max_calls():
    h = Harness(sip={"rate_limit": {"requests_per_second": 0.1, "burst": 1},
                     "trusted_sources": ["192.0.2.0/24", "2001:db8::/32"], "max_calls": 1})
    for _ in range(20):
        assert h.request("OPTIONS")[-1].status == 200
    assert from_source(h, OTHER, "OPTIONS")[-1].status == 200
    assert from_source(h, OTHER, "OPTIONS")[-1].status == 503
    assert h.invite(call_key="t1")[1][-1].status == 200
    refused(h.invite(call_key="t2")[1][-1], "Too Many Calls")
    assert h.server.admission.is_trusted("2001:db8::5")
    assert not h.server.admission.is_trusted("203.0.113.1")


def test_rate_limit_off():
    h = Harness(sip={"rate_limit": None})
    assert all(h.request("OPTIONS")[-1].status == 200 for _ in range(500))


def test_the_source_table_stays_bounded_under_a_spoofed_flood():
    clock = Clock()
    limiter = SourceRateLimiter(clock, 1.0, 5, max_keys=1000)
    for i in range(20000):
        limiter.take(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(limiter._buckets) <= 1001


# -- logged once per burst ---------------------------------------------------------------


def test_refusals_are_logged_once_per_burst_with_a_summary():
    events = []
    clock = Clock()
    log = Logger(observer=events.append)
    burst = BurstLog(clock, log, "sip.max_calls 2", quiet=10.0)
    for i in range(1000):
        burst.refused(f"192.0.2.{i % 3}")
        clock.advance(0.005)
    assert len(events) == 1 and "refusing" in events[0]["log_format"]
    clock.advance(9.0)
    assert len(events) == 1          # not quiet for 10 s yet
    clock.advance(20.0)
    assert len(events) == 2
    summary = events[1]
    assert summary["count"] == 1000 and "3 source(s)" in summary["sources"]
    burst.refused("192.0.2.9")       # a new burst: logged again
    assert len(events) == 3


def test_admission_logs_through_its_logger(monkeypatch):
    events = []
    monkeypatch.setattr(Admission, "log", Logger(observer=events.append))
    h = Harness(sip={"max_calls": 1})
    h.established(call_key="lg")
    for i in range(50):
        h.invite(call_key=f"lg{i}")
    warnings = [e for e in events if "overload" in e["log_format"]]
    assert len(warnings) == 1
    h.clock.advance(60)
    warnings = [e for e in events if "overload" in e["log_format"]]
    assert len(warnings) == 2 and warnings[1]["count"] == 50


# -- the running daemon under a burst -----------------------------------------------------


def _loopback_aliases_work():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


class UdpPeer:
    """A raw SIP peer on one loopback address: sends requests, retransmits
    them like an SBC (RFC 3261 Timer A/E: from 0.5 s, doubling up to 4 s)
    until a final answer, and collects final answers by (Call-ID, method)."""

    def __init__(self, host, target):
        self.host = host
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.final = {}          # (call id, method) -> (status, response head, seconds)
        self.sent_at = {}
        self.pending = {}        # (call id, method) -> (data, next resend, interval)

    def request(self, method, call_id, body=b"", content_type=None, headers=(), to_tag=None,
                cseq=1, branch=None):
        branch = branch or f"z9hG4bK{uuid.uuid4().hex}"
        to = "<sip:srs@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} sip:srs@{self.target[0]}:{self.target[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport",
            f"From: <sip:src@{self.host}>;tag=src-{call_id[-8:]}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:src@{self.host}:{self.port}>;+sip.src",
            "Max-Forwards: 70",
            *[f"{k}: {v}" for k, v in headers],
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def send(self, key, data, retransmit=True):
        now = time.monotonic()
        self.sent_at[key] = now
        if retransmit:
            self.pending[key] = (data, now + 0.5, 0.5)
        self.sock.sendto(data, self.target)

    def _resend_due(self):
        now = time.monotonic()
        for key, (data, at, interval) in list(self.pending.items()):
            if at <= now:
                interval = min(interval * 2, 4.0)
                self.pending[key] = (data, now + interval, interval)
                self.sock.sendto(data, self.target)

    def receive_for(self, seconds, on_final=None, until=None):
        end = time.monotonic() + seconds
        self.sock.settimeout(0.02)
        while time.monotonic() < end and not (until and until()):
            self._resend_due()
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            if not head.startswith("SIP/2.0 "):
                continue
            status = int(head[8:11])
            if status < 200:
                continue
            key = (_header(head, "Call-ID"), _header(head, "CSeq").split()[-1])
            self.pending.pop(key, None)
            if key in self.final:
                continue          # a 2xx again before our ACK got there
            self.final[key] = (status, head, time.monotonic() - self.sent_at.get(key, 0))
            if on_final is not None:
                on_final(key[0], status, head)

    def close(self):
        self.sock.close()


def _header(head, name):
    m = re.search(rf"(?im)^{name}:[ \t]*(.+)$", head)
    return m.group(1).strip() if m else ""


def _to_tag(head):
    m = re.search(r";tag=([^;>\s]+)", _header(head, "To"))
    return m.group(1) if m else None


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _clean(lines):
    return not [line for line in lines if "Traceback" in line or "Unhandled" in line]


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overload")
    path, cfg = write_config(
        tmp,
        sip={"max_calls": 20, "trusted_sources": ["127.0.0.1/32"],
             "rate_limit": {"requests_per_second": 50, "burst": 100}},
        media={"port_min": 40000, "port_max": 40999},
        api={"enabled": False},
    )
    d = Daemon(path).start()
    d.wait_ready()
    d.sip = ("127.0.0.1", cfg["sip"]["udp"]["port"])
    yield d
    code, _ = d.terminate()
    assert code == 0
    assert _clean(d.lines)


class Pinger(threading.Thread):
    """OPTIONS every 50 ms (20/s, under the rate limit) from *host*, each
    retransmitted until answered; keeps the answers and their latency."""

    def __init__(self, host, target):
        super().__init__()
        self.peer = UdpPeer(host, target)
        self.stop = threading.Event()
        self.sent = 0

    def run(self):
        try:
            while not self.stop.is_set():
                key = (f"ping-{uuid.uuid4().hex}", "OPTIONS")
                self.peer.send(key, self.peer.request("OPTIONS", key[0]))
                self.sent += 1
                self.peer.receive_for(0.05)
            self.peer.receive_for(10.0, until=lambda: not self.peer.pending)
        finally:
            self.peer.close()

    def report(self):
        answers = [status for status, _, _ in self.peer.final.values()]
        latency = sorted(seconds for _, _, seconds in self.peer.final.values())
        return answers, latency


def test_a_burst_of_2000_invites_is_shed_and_options_keep_being_answered(overloaded):
    """2,000 INVITEs as fast as one socket sends them, from a trusted SBC
    (so max_calls, not the rate limit, sheds them), while an untrusted peer
    sends OPTIONS: every INVITE is answered 200 or 503, OPTIONS keep
    getting 200 during and after, memory stays bounded."""
    d = overloaded
    sbc = UdpPeer("127.0.0.1", d.sip)
    invites = {}
    for i in range(2000):
        sample = sample_invite(call_key=f"burst{i}")
        call_id = f"burst-{i}-{uuid.uuid4().hex[:8]}"
        invites[call_id] = sbc.request(
            "INVITE", call_id, body=sample.body, content_type=sample.content_type,
            headers=[("Require", "siprec"), *sample.headers])
    taken = []

    def ack(call_id, status, head):
        # A well-behaved SBC ACKs every final answer to its INVITE (for a
        # non-2xx, with the INVITE's branch).
        if _header(head, "CSeq").split()[-1] != "INVITE":
            return
        branch = re.search(r"branch=([^;\s]+)", _header(head, "Via")).group(1)
        sbc.sock.sendto(sbc.request("ACK", call_id, to_tag=_to_tag(head),
                                    branch=branch if status >= 300 else None), d.sip)
        if status == 200:
            taken.append((call_id, _to_tag(head)))

    pinger = Pinger("127.0.0.2" if _loopback_aliases_work() else "127.0.0.1", d.sip)
    rss_before = _rss_kib(d.proc.pid)
    pinger.start()
    time.sleep(0.3)
    started = time.monotonic()
    try:
        for call_id, data in invites.items():
            sbc.send((call_id, "INVITE"), data)
        sent_in = time.monotonic() - started
        sbc.receive_for(60.0, ack, until=lambda: len(sbc.final) >= len(invites))
        answered_in = time.monotonic() - started
        rss_peak = _rss_kib(d.proc.pid)
        # The calls that were taken end with a BYE each.
        for call_id, to_tag in taken:
            sbc.send((call_id, "BYE"), sbc.request("BYE", call_id, to_tag=to_tag, cseq=2))
        sbc.receive_for(10.0, until=lambda: not sbc.pending)
        time.sleep(0.5)       # OPTIONS after the burst, too
    finally:
        pinger.stop.set()
        pinger.join(timeout=30)
        sbc.close()
    finals = [sbc.final[(c, "INVITE")][0] for c in invites if (c, "INVITE") in sbc.final]
    byes = [sbc.final.get((c, "BYE"), (None,))[0] for c, _ in taken]
    ok, unavailable = finals.count(200), finals.count(503)
    answers, latency = pinger.report()
    print(f"\nINVITE burst: 2000 sent in {sent_in:.2f}s, answered in {answered_in:.2f}s "
          f"({2000 / answered_in:.0f}/s): {ok} x 200, {unavailable} x 503, "
          f"{2000 - len(finals)} unanswered")
    print(f"OPTIONS from another source meanwhile: {pinger.sent} sent, {answers.count(200)} x 200,"
          f" median {statistics.median(latency) * 1000:.1f} ms, "
          f"max {latency[-1] * 1000:.1f} ms")
    print(f"daemon RSS: {rss_before / 1024:.1f} MiB before, {rss_peak / 1024:.1f} MiB after")
    assert len(finals) == 2000
    assert (ok, unavailable) == (20, 1980)
    assert byes == [200] * 20
    assert len(answers) == pinger.sent and set(answers) == {200}
    assert rss_peak - rss_before < 100 * 1024
    # Logged once for the burst, not per INVITE.
    refusals = [line for line in d.lines if "overload: refusing" in line]
    d.wait_for(r"overload: refusing new SIP requests with 503 \(sip.max_calls 20")
    refusals = [line for line in d.lines if "overload: refusing" in line]
    assert len(refusals) == 1, refusals
    assert _clean(d.lines)


@pytest.mark.skipif(not _loopback_aliases_work(), reason="needs 127.0.0.2 and 127.0.0.3")
def test_a_flood_from_one_source_does_not_starve_another(overloaded):
    """20,000 OPTIONS datagrams from 127.0.0.3 as fast as it can send them
    (rate-limited: 503), while 127.0.0.2 keeps asking: it keeps getting 200."""
    d = overloaded
    flooder = UdpPeer("127.0.0.3", d.sip)
    flood = [flooder.request("OPTIONS", f"flood-{i}") for i in range(20000)]
    pinger = Pinger("127.0.0.2", d.sip)
    pinger.start()
    time.sleep(0.3)
    started = time.monotonic()
    for data in flood:
        flooder.sock.sendto(data, d.sip)
    sent_in = time.monotonic() - started
    flooder.receive_for(3.0)
    took = time.monotonic() - started
    pinger.stop.set()
    pinger.join(timeout=30)
    flooder.close()
    answers, latency = pinger.report()
    flood_answers = [status for status, _, _ in flooder.final.values()]
    print(f"\nflood: 20000 OPTIONS from one source sent in {sent_in:.2f}s: "
          f"{flood_answers.count(200)} x 200, {flood_answers.count(503)} x 503, "
          f"{20000 - len(flood_answers)} lost (socket buffer) or unanswered; other source: "
          f"{len(answers)}/{pinger.sent} answered ({answers.count(200)} x 200), median "
          f"{statistics.median(latency) * 1000:.1f} ms, max {latency[-1] * 1000:.1f} ms")
    assert len(answers) == pinger.sent and set(answers) == {200}
    assert flood_answers.count(200) <= 100 + 50 * took + 1
    assert flood_answers.count(503) > 1000
    assert _clean(d.lines)
