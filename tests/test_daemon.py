"""The daemon as a user runs it: a real twistd subprocess on real sockets."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.api import ApiClient, create_app
from harness.daemon import Daemon, free_port, write_config
from siprecd.config import EXIT_CONFIG

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_starts_logs_listeners_serves_https_and_stops_on_sigterm(tmp_path):
    path, cfg = write_config(tmp_path)
    with Daemon(path) as daemon:
        daemon.wait_ready()
        sip_port, api_port = cfg["sip"]["udp"]["port"], cfg["api"]["port"]
        daemon.wait_for(rf"listening for SIP/UDP on 127\.0\.0\.1:{sip_port}$")
        daemon.wait_for(rf"listening for SIP/TCP on 127\.0\.0\.1:{sip_port}$")
        daemon.wait_for(rf"listening for HTTPS API on 127\.0\.0\.1:{api_port}$")
        daemon.wait_for(r"made a self-signed development certificate")

        cert = tmp_path / "state" / "tls" / "api-selfsigned.crt"
        key = tmp_path / "state" / "tls" / "api-selfsigned.key"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
        api = ApiClient(api_port, cert, *create_app(path))
        answer = api.get("/v1/health")
        assert answer.status == 200
        assert answer.body["healthCheck"] == "SUCCESS" and answer.body["ready"] is True

        # Plain HTTP is not served: the socket speaks TLS only.
        with socket.create_connection(("127.0.0.1", api_port), timeout=10) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = s.recv(4096)
        assert not reply.startswith(b"HTTP/")

        code, seconds = daemon.terminate()
    assert code == 0
    assert seconds < 5
    assert any("stopping: refusing new work" in line for line in daemon.lines)
    assert not any("Traceback" in line for line in daemon.lines)


def test_second_start_reuses_the_development_certificate(tmp_path):
    path, _ = write_config(tmp_path)
    for run in range(2):
        with Daemon(path) as daemon:
            daemon.wait_ready()
            made = any("made a self-signed" in line for line in daemon.lines)
            assert made == (run == 0)
            assert daemon.terminate()[0] == 0


def test_json_log_lines(tmp_path):
    path, cfg = write_config(tmp_path, logging={"format": "json"})
    with Daemon(path) as daemon:
        daemon.wait_ready()
        assert daemon.terminate()[0] == 0
    records = [json.loads(line) for line in daemon.lines if line.strip()]
    listening = [r for r in records if r["text"].startswith("listening for")]
    assert {r["label"] for r in listening} == {"SIP/UDP", "SIP/TCP", "HTTPS API"}
    for r in listening:
        assert r["level"] == "info" and r["namespace"] == "siprecd.service.ListeningPort"
        assert r["time"].endswith("Z")
    assert f"127.0.0.1:{cfg['api']['port']}" in {r["address"] for r in listening}


def test_a_busy_port_stops_start_up_with_one_line(tmp_path):
    path, cfg = write_config(tmp_path)
    port = cfg["sip"]["tcp"]["port"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = subprocess.run(
            [BIN / "twistd", "-n", "--pidfile=", "siprecd", "-c", str(path)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert proc.returncode != 0
    # twistd sends stderr to the log once logging has begun: the last line.
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.endswith(
        f"siprecd: sip.tcp: cannot listen for SIP/TCP on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in proc.stderr + proc.stdout


def test_siprecd_run_has_the_plugin_preloaded(tmp_path):
    path, _ = write_config(tmp_path)
    with Daemon(path, args=[str(BIN / "siprecd"), "run", "-c", str(path)]) as daemon:
        daemon.wait_ready()
        code, seconds = daemon.terminate()
    assert code == 0 and seconds < 5
    assert not (tmp_path / "twistd.pid").exists()


def test_siprecd_run_reports_config_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("api: {port: -1}\n")
    proc = subprocess.run([BIN / "siprecd", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr == "siprecd: api.port: expected an integer 1-65535, got -1\n"


def test_the_shipped_config_runs_as_the_readme_says(tmp_path):
    """`make run`: `siprecd run -c etc/siprecd.yaml` on the default ports,
    with SIPRECD_STATE_DIR=./var, on a machine that cannot reach Vosk's
    model host (an https proxy that refuses connections makes this machine
    offline however it is connected)."""
    (tmp_path / "etc").mkdir()
    shutil.copy(REPO / "etc" / "siprecd.yaml", tmp_path / "etc" / "siprecd.yaml")
    for port, kind in ((5070, socket.SOCK_STREAM), (5070, socket.SOCK_DGRAM), (8443, socket.SOCK_STREAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                pytest.fail(f"port {port} is taken on this machine; the default config needs it")
    state = tmp_path / "var"
    env = {"SIPRECD_STATE_DIR": str(state), "https_proxy": f"http://127.0.0.1:{free_port()}",
           "no_proxy": "", "NO_PROXY": ""}
    args = [str(BIN / "siprecd"), "run", "-c", "etc/siprecd.yaml"]
    with Daemon(tmp_path / "etc" / "siprecd.yaml", args=args, cwd=tmp_path, env=env) as daemon:
        for label, port in (("SIP/UDP", 5070), ("SIP/TCP", 5070), ("HTTPS API", 8443)):
            daemon.wait_for(rf"listening for {label} on 0\.0\.0\.0:{port}$")
        assert (state / "tls" / "api-selfsigned.crt").exists()
        # The English model is fetched at first start; offline, one line
        # says what to place where, and the daemon stays up, not ready.
        attempt = daemon.wait_for(r"asr: fetching the Vosk model")
        assert attempt.endswith(
            "asr: fetching the Vosk model vosk-model-small-en-us-0.15 for en-us from "
            f"https://alphacephei.com/vosk/models/ into {state / 'models'} (asr.download)")
        line = daemon.wait_for(r"asr: the vosk backend could not start")
        reason = line.split("asr: the vosk backend could not start: ", 1)[1].split(" -- ")[0]
        assert reason.startswith(
            f"asr.models.en-us: no Vosk model at {state / 'models'}/vosk-model-small-en-us-0.15 "
            "and fetching it failed: cannot read "
            "https://alphacephei.com/vosk/models/model-list.json: ")
        assert reason.endswith(
            "place the unpacked model folder there (from https://alphacephei.com/vosk/models/"
            "vosk-model-small-en-us-0.15.zip), then restart siprecd")
        config = tmp_path / "etc" / "siprecd.yaml"
        api = ApiClient(8443, state / "tls" / "api-selfsigned.crt",
                        *create_app(config, env=env))
        answer = api.get("/v1/health")
        assert answer.status == 503 and answer.code == "503-01"
        assert answer.body["healthCheck"] == "FAILURE"
        assert answer.body["pending"] == {"asr": f"speech recognition unavailable: {reason}"}
        assert answer.body["languages"]["en-us"] == {"state": "unavailable", "detail": reason}
        code, seconds = daemon.terminate()
    assert code == 0 and seconds < 5
    assert sum("place the unpacked model folder" in x for x in daemon.lines) == 1
