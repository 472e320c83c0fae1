"""sipp as a real SIP peer against the running daemon, over UDP and TCP."""

import socket
from pathlib import Path

import pytest

from siprecd.testing.daemon import Daemon, write_config
from siprecd.testing.sipp import run_sipp

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
    assert result.max_message_bytes >= 12 * 1024


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

