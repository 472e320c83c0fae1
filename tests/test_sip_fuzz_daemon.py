"""10,000 fuzzed SIP messages at the running daemon: no unhandled error, and
it still answers OPTIONS afterwards."""

import re
import socket

from harness.daemon import Daemon, write_config
from harness.fuzz import fuzz_messages
from siprecd.sip.message import parse_message

OPTIONS = (
    "OPTIONS sip:srs@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKprobe{n};rport\r\n"
    "From: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:srs@127.0.0.1>\r\n"
    "Call-ID: probe{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def probe(sock, target, n, deadline=32.0):
    """OPTIONS until its answer comes back, retransmitted as a SIP client
    does over UDP (T1 doubling to T2): the flood may have filled the
    daemon's socket buffer, and UDP drops what does not fit."""
    message = OPTIONS.format(port=sock.getsockname()[1], n=n).encode()
    interval, waited = 0.5, 0.0
    while waited < deadline:
        sock.sendto(message, target)
        sock.settimeout(interval)
        try:
            while True:
                data, _ = sock.recvfrom(65536)
                if f"probe{n}@".encode() in data:
                    return parse_message(data)
        except TimeoutError:
            waited += interval
            interval = min(2 * interval, 4.0)
    raise AssertionError(f"no answer to OPTIONS probe {n} within {deadline}s")


def test_ten_thousand_fuzzed_messages(tmp_path):
    path, cfg = write_config(tmp_path)
    target = ("127.0.0.1", cfg["sip"]["udp"]["port"])
    with Daemon(path) as daemon:
        daemon.wait_ready()
        # Answers to the fuzz go to one socket (never read, so they may be
        # dropped when its buffer fills); probes use their own socket.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
            u.bind(("127.0.0.1", 0))
            p.bind(("127.0.0.1", 0))
            assert probe(p, target, 0).status == 200
            sent = 0
            for n, message in enumerate(fuzz_messages(10_000, seed=3166)):
                if n % 4 == 3:
                    # Stream framing too: one connection per message.
                    with socket.create_connection(target, timeout=5) as t:
                        t.sendall(message)
                else:
                    u.sendto(message[:65000], target)
                sent += 1
                if n % 500 == 499:
                    # A pacing point: the daemon has worked through what came before.
                    assert probe(p, target, n).status in (200, 503)
            assert sent == 10_000
            final = probe(p, target, "final")
            assert final.status == 200
        code, _ = daemon.terminate()
    assert code == 0
    bad = [line for line in daemon.lines
           if re.search(r"Traceback|Unhandled|#critical\]|#error\]", line)]
    assert bad == []
