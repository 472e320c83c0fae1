"""SIP over TCP under hostile peers (``sip.connections``): connections are
capped per source and in all, a message that does not complete in time
and a connection idle with no dialog are closed, and running out of
descriptors is answered 503, never 500.

First the transport on task.Clock with in-memory connections, then the
real daemon on loopback: a slowloris of half-sent INVITE bodies, and a
flood of idle connections against a daemon with a small file limit.
"""

import errno
import os
import select
import socket
import sys
import time
import uuid

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from harness.daemon import Daemon, write_config
from siprecd import config, resources, tls
from siprecd.media.ports import RangePortAllocator
from siprecd.interfaces import PortsExhausted
from siprecd.sip.endpoint import Source
from siprecd.sip.limits import ConnectionLimits
from siprecd.sip.message import parse_message
from siprecd.sip.transport import SipStreamFactory, Transports
from siprecd.simulator.samples import sample_invite
from test_siprec_server import Harness

OPTIONS = (
    "OPTIONS sip:srs@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{n}\r\n"
    "From: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:srs@127.0.0.1>\r\n"
    "Call-ID: probe{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


class Recorded:
    """TEST DOUBLE of the endpoint: what the transport hands up."""

    def __init__(self):
        self.items = []

    def stream_items(self, items, source):
        self.items.extend(items)


class Connection:
    """One in-memory stream connection from *host* to a factory."""

    def __init__(self, factory, host, port=40000):
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 5070),
            peerAddress=IPv4Address("TCP", host, port))
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    @property
    def open(self):
        return self.protocol.connected and not self.transport.disconnecting \
            and not getattr(self.transport, "disconnected", False)

    def lose(self):
        self.protocol.connectionLost(None)


def make_factory(clock, limits=None, **kw):
    transports = Transports(clock)
    return SipStreamFactory(Recorded(), transports, "TCP", 65536, clock=clock, limits=limits,
                            **kw)


# -- on task.Clock ---------------------------------------------------------------------


def test_a_message_that_does_not_complete_in_time_closes_its_connection():
    clock = Clock()
    limits = ConnectionLimits(clock, max_connections=100, per_source=10)
    factory = make_factory(clock, limits, message_timeout=10.0)
    invite = sample_invite()
    head = (f"INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1\r\n"
            f"Call-ID: {invite.call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 50000\r\n\r\n")
    c = Connection(factory, "198.51.100.1")
    c.protocol.dataReceived(head.encode() + b"x" * 1000)
    # A trickle of bytes does not push the deadline back.
    for _ in range(9):
        clock.advance(1.0)
        c.protocol.dataReceived(b"x" * 10)
        assert c.open
    clock.advance(1.0)
    assert not c.open
    assert limits.counters["message_timeouts"] == 1


def test_complete_messages_stop_the_message_deadline():
    clock = Clock()
    factory = make_factory(clock, ConnectionLimits(clock, max_connections=10),
                           message_timeout=5.0)
    c = Connection(factory, "198.51.100.1")
    message = OPTIONS.format(n=1).encode()
    c.protocol.dataReceived(message[:40])
    clock.advance(4.0)
    c.protocol.dataReceived(message[40:])
    assert len(factory.endpoint.items) == 1
    clock.advance(60.0)
    assert c.open


def test_an_idle_connection_with_no_dialog_is_closed_and_one_with_a_dialog_is_kept():
    clock = Clock()
    limits = ConnectionLimits(clock, max_connections=10)
    busy = set()
    factory = make_factory(clock, limits, idle_timeout=120.0,
                           in_use=lambda connection: connection in busy)
    idle, talking, dialog = (Connection(factory, f"198.51.100.{i}") for i in (1, 2, 3))
    busy.add(dialog.protocol)
    for _ in range(3):
        clock.advance(60.0)
        talking.protocol.dataReceived(b"\r\n\r\n")  # keep-alive pings are traffic
    assert not idle.open
    assert talking.open and dialog.open
    assert limits.counters["idle_timeouts"] == 1
    busy.clear()
    clock.advance(121.0)
    assert not dialog.open


def test_trusted_sources_are_not_closed_for_idleness():
    clock = Clock()
    limits = ConnectionLimits(clock, max_connections=10, trusted=["192.0.2.0/24"])
    factory = make_factory(clock, limits, idle_timeout=30.0)
    sbc = Connection(factory, "192.0.2.5")
    clock.advance(3600.0)
    assert sbc.open


def test_connections_are_capped_per_source_and_in_all_trusted_sources_exempt():
    clock = Clock()
    limits = ConnectionLimits(clock, max_connections=20, per_source=3,
                              trusted=["192.0.2.5"])
    factory = make_factory(clock, limits)
    same = [Connection(factory, "198.51.100.1", 40000 + i) for i in range(5)]
    assert [c.open for c in same] == [True] * 3 + [False] * 2
    assert limits.counters["connections_refused_per_source"] == 2
    # Untrusted sources stop at 18 (a tenth is kept for the SBCs)...
    others = [Connection(factory, f"198.51.100.{10 + i}") for i in range(20)]
    assert sum(c.open for c in others) == 15 and limits.open == 18
    # ...trusted ones get the rest, past any per-source cap.
    sbc = [Connection(factory, "192.0.2.5", 41000 + i) for i in range(3)]
    assert [c.open for c in sbc] == [True, True, False]
    assert limits.open == 20
    same[0].lose()
    assert limits.open == 19 and limits.by_source("198.51.100.1") == 2
    assert Connection(factory, "198.51.100.1", 42000).open is False  # still over 18 untrusted


def test_refused_connections_are_logged_once_per_burst():
    clock = Clock()
    events = []
    log = Logger(observer=events.append)
    limits = ConnectionLimits(clock, max_connections=100, per_source=1, quiet=5.0)
    limits.log = log
    for burst in limits._logs.values():
        burst.log = log
    factory = make_factory(clock, limits)
    for i in range(50):
        Connection(factory, "198.51.100.1", 40000 + i)
    clock.advance(6.0)
    texts = [e["log_format"] for e in events]
    assert len(texts) == 2, texts
    assert events[1]["count"] == 49


def test_the_connection_cap_stays_below_the_file_limit():
    assert resources.connection_cap(None, 20000, 1000) == (20000 - 2000 - 256, 17744)
    assert resources.connection_cap(500, 20000, 1000) == (500, 17744)
    assert resources.connection_cap(50000, 20000, 1000) == (17744, 17744)
    # However tight the budget, some connections are possible.
    assert resources.connection_cap(None, 1024, 1000)[0] == resources.MIN_CONNECTIONS


def test_config_keys_and_defaults():
    c = config.from_dict({}).sip.connections
    assert (c.max, c.per_source, c.message_timeout, c.idle_timeout) == (None, 32, 10.0, 120.0)
    c = config.from_dict({"sip": {"connections": {"max": 100, "per_source": None,
                                                  "message_timeout": "2s",
                                                  "idle_timeout": None}}}).sip.connections
    assert (c.max, c.per_source, c.message_timeout, c.idle_timeout) == (100, None, 2.0, None)


def test_running_out_of_descriptors_answers_503_never_500(monkeypatch):
    """The INVITE of a SIP listener on 0.0.0.0 needs a socket to find the
    media address (its probe of the route): without descriptors, 503."""
    h = Harness()
    monkeypatch.setattr("test_siprec_server.SRC",
                        Source("UDP", "192.0.2.10", 5060, None, "0.0.0.0", 5070))

    def exhausted(host):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("siprecd.siprec.server.local_address_towards", exhausted)
    responses = h.invite()[1]
    final = responses[-1]
    assert final.status == 503, final
    assert int(final.headers.get("Retry-After")) >= 1
    assert h.endpoint.counters["errors"] == 0 and h.endpoint.counters["exhausted"] == 1
    # The same in-dialog: a re-INVITE that needs a socket.
    monkeypatch.setattr("siprecd.siprec.server.local_address_towards", lambda host: "192.0.2.1")
    sample, ok = h.established(call_key="later")
    monkeypatch.setattr("siprecd.siprec.server.local_address_towards", exhausted)
    again = h.request("INVITE", call_id=sample.call_id, cseq=2, to_tag=ok.to.tag,
                      body=sample.sdp, content_type="application/sdp")
    assert again[-1].status == 503


def test_port_probes_that_cannot_make_a_socket_quarantine_nothing(monkeypatch):
    clock = Clock()
    ports = RangePortAllocator(clock, 30000, 30011, 5.0, probe_host="127.0.0.1")

    def no_socket(*args, **kw):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("siprecd.media.ports.socket.socket", no_socket)
    with pytest.raises(PortsExhausted):
        ports.allocate()
    monkeypatch.undo()
    assert ports.allocate() == 30000


def test_is_exhaustion_sees_through_twisted_errors():
    from twisted.internet.error import CannotListenError

    assert resources.is_exhaustion(OSError(errno.ENFILE, "x"))
    assert resources.is_exhaustion(CannotListenError("", 1, OSError(errno.EMFILE, "x")))
    assert not resources.is_exhaustion(OSError(errno.EADDRINUSE, "x"))
    assert not resources.is_exhaustion(ValueError("x"))


# -- the real daemon ---------------------------------------------------------------------


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _closed_by_peer(sock, deadline):
    """Wait (bounded) until the daemon closes *sock*; True if it did."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, socket.timeout, BlockingIOError):
        return False


def _closed_at_once(socks, wait=2.0):
    """How many of *socks* the peer has closed (waiting up to *wait* s for
    the last of them)."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        events = poller.poll(200)
        if not events:
            break
        for fd, _ in events:
            poller.unregister(fd)
            try:
                by_fd[fd].setblocking(False)
                if by_fd[fd].recv(1) == b"":
                    closed.add(fd)
            except OSError:
                closed.add(fd)
    return len(closed)


def _udp_invite(port, call_key):
    """One SIPREC INVITE over UDP; the status of its final answer."""
    sample = sample_invite(call_key=call_key, host="127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:10]
        headers = "".join(f"{k}: {v}\r\n" for k, v in sample.headers)
        data = (f"INVITE sip:srs@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
                f"From: <sip:src@127.0.0.1>;tag=f{call_key}\r\nTo: <sip:srs@127.0.0.1>\r\n"
                f"Call-ID: {sample.call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:src@127.0.0.1:{local}>;+sip.src\r\nRequire: siprec\r\n"
                f"{headers}Content-Type: {sample.content_type}\r\n"
                f"Content-Length: {len(sample.body)}\r\n\r\n").encode() + sample.body
        s.sendto(data, ("127.0.0.1", port))
        s.settimeout(10)
        while True:
            response = parse_message(s.recvfrom(65536)[0])
            if response.status >= 200:
                bye = None
                if response.status == 200:
                    # Hang up again so the call does not linger.
                    ack = (f"ACK sip:srs@127.0.0.1:{port} SIP/2.0\r\n"
                           f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch}a;rport\r\n"
                           f"From: <sip:src@127.0.0.1>;tag=f{call_key}\r\n"
                           f"To: <sip:srs@127.0.0.1>;tag={response.to.tag}\r\n"
                           f"Call-ID: {sample.call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
                           "Content-Length: 0\r\n\r\n")
                    s.sendto(ack.encode(), ("127.0.0.1", port))
                    bye = ack.replace("ACK", "BYE").replace("CSeq: 1 BYE", "CSeq: 2 BYE") \
                        .replace(f"branch={branch}a", f"branch={branch}b")
                    s.sendto(bye.encode(), ("127.0.0.1", port))
                return response.status


def test_daemon_closes_half_sent_invites_slowloris(tmp_path):
    """200 connections from 10 addresses each send an INVITE head announcing
    50,000 bytes and part of the body, then nothing more: every one is
    closed within sip.connections.message_timeout (3 s here) plus a
    margin, and the daemon goes on answering."""
    timeout = 3.0
    path, cfg = write_config(tmp_path, sip={"connections": {"message_timeout": f"{timeout}s"}})
    port = cfg["sip"]["tcp"]["port"]
    daemon = Daemon(path).start()
    socks = []
    try:
        daemon.wait_ready(60)
        pid = daemon.proc.pid
        fds_before, rss_before = _fds(pid), _rss_kib(pid)
        head = ("INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK{n}"
                "\r\nFrom: <sip:a@127.0.0.1>;tag=x\r\nTo: <sip:srs@127.0.0.1>\r\n"
                "Call-ID: slow{n}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
                "Content-Length: 50000\r\n\r\n")
        started = time.monotonic()
        for n in range(200):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + n % 10}", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(head.format(n=n).encode() + b"v=0\r\n" * 2000)
            socks.append(s)
        held = _fds(pid) - fds_before
        deadline = started + timeout + 10.0
        closed = [_closed_by_peer(s, deadline) for s in socks]
        took = time.monotonic() - started
        fds_after, rss_after = _fds(pid), _rss_kib(pid)
        status = _udp_invite(cfg["sip"]["udp"]["port"], "after-slowloris")
        print(f"\nslowloris: {len(socks)} connections, {held} held by the daemon at most; "
              f"{sum(closed)} closed by the daemon within {took:.1f}s; descriptors "
              f"{fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB; "
              f"a new UDP INVITE then got {status}")
        assert all(closed), f"{closed.count(False)} of {len(socks)} half-sent INVITEs still open"
        assert took < timeout + 10.0
        assert fds_after <= fds_before + 5
        assert status == 200
        assert daemon.wait_for(r"not completed within 3s", 5)
    finally:
        for s in socks:
            s.close()
        daemon.kill()


def test_daemon_survives_a_flood_of_idle_connections(tmp_path):
    """A daemon started with a file limit of 1024 (soft and hard) meets
    1,500 idle TCP connections from 50 addresses: it keeps its
    descriptors below the limit (the cap derived from it), refuses the
    rest at once, and a new UDP call, TCP OPTIONS from a trusted source and
    the API still work; nothing is answered 500."""
    path, cfg = write_config(tmp_path, media={"max_streams": 100},
                             sip={"trusted_sources": ["127.0.0.1"]})
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    args = ["prlimit", "--nofile=1024:1024", twistd, "-n", "--pidfile=", "siprecd", "-c",
            str(path)]
    daemon = Daemon(path, args=args).start()
    socks = []
    try:
        daemon.wait_ready(60)
        pid = daemon.proc.pid
        limit_line = daemon.wait_for(r"SIP connections: at most \d+ open", 5)
        fds_before, rss_before = _fds(pid), _rss_kib(pid)
        started = time.monotonic()
        refused = 0
        for n in range(1500):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.bind((f"127.0.0.{2 + n % 50}", 0))
            try:
                s.connect(("127.0.0.1", cfg["sip"]["tcp"]["port"]))
            except OSError:
                refused += 1
                s.close()
                continue
            socks.append(s)
        flood_seconds = time.monotonic() - started
        # Those the daemon refused are closed by it at once: readable, at EOF.
        dropped = _closed_at_once(socks)
        fds_peak, rss_after = _fds(pid), _rss_kib(pid)
        udp_status = _udp_invite(cfg["sip"]["udp"]["port"], "after-flood")
        with socket.create_connection(("127.0.0.1", cfg["sip"]["tcp"]["port"]), timeout=10) as s:
            s.sendall(OPTIONS.format(n=uuid.uuid4().hex[:8]).encode())
            tcp_status = parse_message(s.recv(65536)).status
        print(f"\nidle flood: 1500 connections in {flood_seconds:.1f}s, {len(socks) - dropped} "
              f"held, {dropped + refused} closed at once; daemon descriptors {fds_before} -> "
              f"{fds_peak} of 1024; RSS {rss_before} -> {rss_after} KiB; a new UDP INVITE got "
              f"{udp_status}, TCP OPTIONS from a trusted source {tcp_status}; {limit_line}")
        assert fds_peak < 1000
        assert udp_status == 200 and tcp_status == 200
        assert not [line for line in daemon.lines if "Too many open files" in line
                    or "CRITICAL" in line.upper() and "Traceback" in line]
    finally:
        for s in socks:
            s.close()
        daemon.kill()


# -- connections we open ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_request_to_a_peer_with_no_open_connection_opens_one_over_tls(tmp_path):
    """A BYE to an SBC whose connection is gone (after a restart) opens a new
    SIP/TLS connection, the SBC's certificate verified against
    sip.tls.client_ca; an SBC whose certificate does not verify gets nothing."""
    from twisted.internet import defer, protocol, reactor

    from harness.pki import Authority

    ca = Authority("sip outgoing tls CA", tmp_path / "pki")
    stranger_ca = Authority("another CA", tmp_path / "pki-other")
    ours = ca.issue_server(("127.0.0.1",), name="srs")
    sip_tls = config.from_dict({"sip": {"tls": {
        "enabled": True, "certificate": str(ours.certificate_path),
        "private_key": str(ours.key_path), "client_ca": str(ca.certificate_path)}}}).sip.tls
    transports = Transports(reactor, tls_client_options=tls.sip_client_options(sip_tls))
    transports.stream_factories["TLS"] = SipStreamFactory(Recorded(), transports, "TLS",
                                                         clock=reactor)
    listening, peers = [], []

    def sbc(authority, name):
        received = defer.Deferred()

        class Sbc(protocol.Protocol):
            def connectionMade(self):
                peers.append(self)

            def dataReceived(self, data):
                if not received.called:
                    received.callback(data)

            def connectionLost(self, reason):
                if not received.called:
                    received.callback(None)

        cert = authority.issue_server(("127.0.0.1",), name=name)
        port = reactor.listenSSL(0, protocol.Factory.forProtocol(Sbc),
                                 tls.server_options(cert.certificate_path, cert.key_path,
                                                    where="test"), interface="127.0.0.1")
        listening.append(port)
        return port.getHost().port, received

    try:
        message = OPTIONS.format(n="tls").encode()
        good_port, good = sbc(ca, "sbc")
        transports.send("TLS", "127.0.0.1", good_port, message)
        assert (yield good.addTimeout(10, reactor)) == message
        bad_port, bad = sbc(stranger_ca, "impostor")
        transports.send("TLS", "127.0.0.1", bad_port, message)
        assert (yield bad.addTimeout(10, reactor)) is None
    finally:
        for peer in peers:
            peer.transport.loseConnection()
        for port in listening:
            yield port.stopListening()


def test_the_soft_file_limit_is_raised_to_the_hard_one_and_logged():
    """In a process of its own (the limit is per process): soft 512, hard
    as it is; makeService's step raises it and logs both."""
    import subprocess

    script = (
        "import resource, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))\n"
        "from twisted.logger import globalLogPublisher, formatEvent\n"
        "globalLogPublisher.addObserver(lambda e: print(formatEvent(e)))\n"
        "from siprecd import tap\n"
        "tap._raise_file_limit()\n"
        "print('now', resource.getrlimit(resource.RLIMIT_NOFILE)[0], 'hard', hard)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    now, hard = lines[-1].split()[1], lines[-1].split()[3]
    assert now == hard or int(hard) > 1 << 20
    assert any(f"file limit raised from 512 to {now} open files (hard limit" in line
               for line in lines), lines
