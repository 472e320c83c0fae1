"""sipp as a real SIP peer against the running daemon, over UDP and TCP."""

import socket
from pathlib import Path

import pytest
import pytest_twisted

from harness.daemon import Daemon, write_config
from harness.sipp import run_sipp

SCENARIOS = Path(__file__).parent / "sipp"



@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sipp")
    path, cfg = write_config(tmp, sip={"max_call_duration": "2s"})
    d = Daemon(path).start()
    d.wait_ready()
    d.sip_port = cfg["sip"]["udp"]["port"]
    yield d
    code, _ = d.terminate()
    assert code == 0
    assert not [line for line in d.lines if "Traceback" in line or "Unhandled" in line]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("scenario", ["siprec_call", "options", "bye_from_srs"])
def test_scenario(daemon, transport, scenario, tmp_path):
    result = run_sipp(SCENARIOS / f"{scenario}.xml", "127.0.0.1", daemon.sip_port,
                      transport=transport, workdir=tmp_path)
    assert result.returncode == 0, result.report
    assert result.successful == 1


def test_metadata_and_guid_reach_the_log(daemon, tmp_path):
    result = run_sipp(SCENARIOS / "siprec_call.xml", "127.0.0.1", daemon.sip_port,
                      transport="tcp", workdir=tmp_path)
    assert result.returncode == 0, result.report
    daemon.wait_for(r"recording session offered: guid 00002542391662063156 .*\(2 stream\(s\)\)")
    daemon.wait_for(r"recording session ended: guid 00002542391662063156 \(bye from SRC\)")


def test_twelve_kilobyte_invite_over_tcp(daemon, tmp_path):
    scenario = (SCENARIOS / "siprec_call.xml").read_text()
    padding = "".join(
        f'        <participant participant_id="pad{i:04d}"><nameID aor="sip:party{i:04d}@example.com">'
        f"<name>Conference party number {i:04d}</name></nameID></participant>\n"
        for i in range(80)
    )
    big = scenario.replace("        <stream stream_id=", padding + "        <stream stream_id=", 1)
    path = tmp_path / "big.xml"
    path.write_text(big)
    result = run_sipp(path, "127.0.0.1", daemon.sip_port, transport="tcp", workdir=tmp_path)
    assert result.returncode == 0, result.report
    assert result.max_message_bytes >= 12 * 1024, result.max_message_bytes
    print(f"largest INVITE sent over TCP: {result.max_message_bytes} bytes")


def test_garbage_datagrams_and_stream_bytes_then_options(daemon, tmp_path):
    import random

    rnd = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for _ in range(200):
            u.sendto(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 1400))),
                     ("127.0.0.1", daemon.sip_port))
        u.sendto(b"INVITE sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n", ("127.0.0.1", daemon.sip_port))
    with socket.create_connection(("127.0.0.1", daemon.sip_port), timeout=5) as t:
        t.sendall(bytes(rnd.randrange(256) for _ in range(70000)))
    result = run_sipp(SCENARIOS / "options.xml", "127.0.0.1", daemon.sip_port,
                      transport="udp", workdir=tmp_path)
    assert result.returncode == 0, result.report



@pytest_twisted.inlineCallbacks
def test_cancel_before_answer_over_real_sockets(tmp_path):
    """sipp CANCELs an INVITE that the daemon holds unanswered.

    The daemon runs in this process on real loopback sockets, with a test
    double for the layer above SIP (HeldCallListener) standing in for the
    real registry, which answers at once and so leaves no window to CANCEL.
    """
    from twisted.internet import defer, reactor, threads

    from harness.inprocess import start_service_tree
    from siprecd.testing.doubles import HeldCallListener

    root, cfg = yield defer.ensureDeferred(start_service_tree(tmp_path, reactor))
    held = HeldCallListener()
    root.node.sip_server.listener = held
    try:
        result = yield threads.deferToThread(
            run_sipp, SCENARIOS / "cancel.xml", "127.0.0.1", cfg["sip"]["udp"]["port"],
            transport="udp", workdir=tmp_path,
        )
        assert result.returncode == 0, result.report
        assert len(held.held) == 1 and root.node.sip_server.pending == {}
        assert root.node.sip_server.calls == {} and held.ended == 1
    finally:
        yield root.stopService()


def test_sigterm_hangs_up_running_calls_with_bye(tmp_path):
    """Drain: calls still up when the grace period ends get a BYE from us."""
    import concurrent.futures

    path, cfg = write_config(tmp_path, node={"shutdown_grace": "1s"})
    with Daemon(path) as daemon:
        daemon.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(run_sipp, SCENARIOS / "bye_from_srs.xml", "127.0.0.1",
                                 cfg["sip"]["udp"]["port"], transport="udp", workdir=tmp_path)
            daemon.wait_for(r"recording session offered")
            code, seconds = daemon.terminate()
            result = future.result(timeout=60)
    assert result.returncode == 0, result.report
    assert code == 0 and seconds < 5
    assert any("hanging up" in line and "shutdown" in line for line in daemon.lines)


def test_options_over_tls(tmp_path):
    import ssl

    from harness.daemon import free_port
    from siprecd.sip.message import parse_message
    from siprecd.tls import make_self_signed

    cert, key = make_self_signed("siprecd.test", ("127.0.0.1",))
    (tmp_path / "sip.crt").write_bytes(cert)
    (tmp_path / "sip.key").write_bytes(key)
    port = free_port()
    path, _ = write_config(tmp_path, sip={"tls": {
        "enabled": True, "host": "127.0.0.1", "port": port,
        "certificate": str(tmp_path / "sip.crt"), "private_key": str(tmp_path / "sip.key")}})
    with Daemon(path) as daemon:
        daemon.wait_for(rf"listening for SIP/TLS on 127\.0\.0\.1:{port}$")
        daemon.wait_ready()
        context = ssl.create_default_context(cafile=str(tmp_path / "sip.crt"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(
                b"OPTIONS sip:srs@127.0.0.1 SIP/2.0\r\n"
                b"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls1;rport\r\n"
                b"From: <sips:probe@127.0.0.1>;tag=t1\r\nTo: <sips:srs@127.0.0.1>\r\n"
                b"Call-ID: tls1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(4096)
        response = parse_message(data)
        assert response.status == 200 and "siprec" in response.headers.get_all("Supported")
        assert daemon.terminate()[0] == 0
