"""Prometheus metrics (siprecd.metrics) scraped over real sockets.

The daemon's service tree runs in this process with its metrics listener
attached as tap.makeService attaches it; a real SIPREC call from the
simulator (Korean speech, the real Korean Vosk model) is transcribed
through real HTTPS API calls, and its utterances are delivered to a real
HTTPS webhook receiver that refuses the first POST. /metrics is read with
urllib on a thread (the server is in this reactor) and parsed with
prometheus_client's own parser. Waits are on real events, bounded.
"""

import socket
import ssl
import urllib.error
import urllib.request

import numpy as np
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, threads

from harness.api import ApiClient, create_app
from harness.daemon import free_port
from harness.inprocess import CallWatcher, start_service_tree
from harness.pki import Authority
from harness.receiver import Reply, WebhookReceiver
from siprecd import config as configmod
from siprecd.metrics import MetricsService, ScrapeSources
from siprecd.service import SiprecdService
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech


def scrape(port, scheme="http", cafile=None):
    """(content type, {(name, labels): value}) of one scrape, off the reactor."""

    def get():
        context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
        url = f"{scheme}://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=30, context=context) as answer:
            return answer.headers["content-type"], answer.read().decode("utf-8")

    return threads.deferToThread(get).addCallback(lambda got: (got[0], parse(got[1])))


def parse(text):
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def metrics_service(root):
    """The tree's /metrics listener, which tap.makeService made (metrics.enabled)."""
    return root.getServiceNamed("metrics")


def first():
    """A Deferred for the first call of a hook, and the hook to install."""
    d = defer.Deferred()

    def hook(*args):
        if not d.called:
            d.callback(args)

    return d, hook


async def offered_or_failed(watcher, placed, timeout=30):
    """The session of the placed call once siprecd has it; fails at once
    with the simulator's summary if the call ends without being offered."""
    offered = watcher.offered.get()
    ended = defer.Deferred()
    placed.addBoth(lambda result: (ended.called or ended.callback(result), result)[1])
    result, index = await defer.DeferredList(
        [offered, ended], fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True,
    ).addTimeout(timeout, reactor)
    if index == 1:
        pytest.fail(f"the call ended without being offered to siprecd: {result!r}")
    return result


@pytest_twisted.ensureDeferred
async def test_a_call_shows_in_the_metrics(tmp_path):
    ca = Authority("metrics test CA", tmp_path / "pki")
    receiver = WebhookReceiver(reactor, ca).start()
    receiver.script.append(Reply(status=503))      # one failed delivery, then a retry
    port = free_port()
    root, written = await start_service_tree(
        tmp_path, reactor,
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        # Admission with a configured figure: 0.1 of a processor per stream.
        asr={"capacity": {"enabled": True, "cpus": 1, "target_load": 0.8, "cost": 0.1}},
        webhooks={"backoff_initial": "50ms", "backoff_max": "200ms", "targets": {"crm": {
            "url": receiver.url("/transcripts"), "ca_bundle": str(ca.certificate_path)}}})
    watcher = CallWatcher(root)
    placed = None
    try:
        metrics = metrics_service(root)
        assert metrics.address.port == port
        path = tmp_path / "siprecd.yaml"
        cert = tmp_path / "state" / "tls" / "api-selfsigned.crt"
        app = ApiClient(written["api"]["port"], cert,
                        *await threads.deferToThread(create_app, path, "crm"))
        anonymous = ApiClient(written["api"]["port"], cert)

        content_type, idle = await scrape(port)
        assert content_type.startswith("text/plain")
        assert value(idle, "siprecd_ready") == 1
        assert value(idle, "siprecd_active_calls") == 0
        assert value(idle, "siprecd_active_streams") == 0
        assert value(idle, "siprecd_asr_capacity_streams", language="ko") == 8
        # Room now: new streams, which count double during their first
        # ten seconds (siprecd.transcribe.admission).
        assert value(idle, "siprecd_asr_headroom_streams", language="ko") == 4
        assert value(idle, "siprecd_asr_cost", language="ko") == pytest.approx(0.1)
        assert value(idle, "siprecd_asr_lag_seconds") == 0

        said = korean_speech("안녕하세요 카드 번호를 알려 주세요", tmp_path / "ko.wav")
        # A pause after the sentence, so utterances end (the audio loops).
        speech = np.concatenate([said, np.zeros(12000, dtype=np.int16)])
        placed = place_calls(
            reactor, Target("127.0.0.1", written["sip"]["udp"]["port"]),
            [CallSpec(customer=speech, duration=40)],
            media_host="127.0.0.1", local_host="127.0.0.1")
        session = await offered_or_failed(watcher, placed)
        guid = session.guid.value

        stored, on_stored = first()
        root.node.transcription.on_stored.add(lambda m, now: on_stored(m))
        delivered, on_outcome = first()
        root.node.webhooks.on_outcome.add(
            lambda item, outcome: outcome is not None and outcome.kind == "delivered"
            and on_outcome(item))

        refused = await threads.deferToThread(anonymous.get, "/v1/health")
        assert refused.status == 401
        started = await threads.deferToThread(
            app.start, guid, autotranscribeParams={"language": KO_LANGUAGE})
        assert started.status == 200, started.body

        _, calling = await scrape(port)
        assert value(calling, "siprecd_active_calls") == 1
        assert value(calling, "siprecd_active_streams") == 2
        assert value(calling, "siprecd_transcribed_streams") == 2
        # Two streams taken (what they cost is being learnt meanwhile).
        assert value(calling, "siprecd_asr_headroom_streams", language="ko") <= 6
        assert value(calling, "siprecd_asr_lag_seconds") >= 0
        assert value(calling, "siprecd_asr_streams_behind") >= 0
        assert value(calling, "siprecd_asr_refused_starts_total", reason="capacity") == 0

        await stored.addTimeout(90, reactor)
        await delivered.addTimeout(60, reactor)
        _, talking = await scrape(port)
        assert value(talking, "siprecd_active_calls") == 1
        assert value(talking, "siprecd_active_streams") == 2
        assert value(talking, "siprecd_rtp_packets_total") > 0
        assert value(talking, "siprecd_rtp_packets_total") >= value(calling,
                                                                     "siprecd_rtp_packets_total")
        assert value(talking, "siprecd_rtp_payload_bytes_total") > 0
        for name in ("siprecd_rtp_lost_packets_total", "siprecd_rtp_late_packets_total",
                     "siprecd_rtp_duplicate_packets_total", "siprecd_rtp_jitter_max_seconds",
                     "siprecd_asr_queue_seconds"):
            assert value(talking, name) >= 0, name
        assert value(talking, "siprecd_asr_audio_seconds_total") > 0
        assert value(talking, "siprecd_asr_busy_seconds_total") > 0
        assert value(talking, "siprecd_asr_errors_total") == 0
        latency_count = value(talking, "siprecd_utterance_latency_seconds_count")
        assert latency_count >= 1
        assert value(talking, "siprecd_utterance_latency_seconds_sum") > 0
        assert value(talking, "siprecd_utterance_latency_seconds_bucket", le="+Inf") \
            == latency_count
        assert value(talking, "siprecd_utterance_latency_seconds_bucket", le="60.0") \
            == latency_count
        assert value(talking, "siprecd_api_requests_total", route="start_streaming",
                     code="200") == 1
        assert value(talking, "siprecd_api_requests_total", route="health", code="401") == 1
        assert value(talking, "siprecd_api_request_duration_seconds_count",
                     route="start_streaming") == 1
        assert value(talking, "siprecd_webhook_failures_total", target="crm",
                     outcome="retry") == 1
        assert value(talking, "siprecd_webhook_deliveries_total", target="crm") >= 1
        assert value(talking, "siprecd_webhook_retries_total") == 1
        assert value(talking, "siprecd_webhook_attempt_duration_seconds_count", target="crm") \
            >= 2
        assert value(talking, "siprecd_webhook_delivery_lag_seconds_count", target="crm") >= 1

        root.node.sip_server.hang_up(session, "test over")
        await watcher.ended.get()
        summary = await placed.addTimeout(60, reactor)
        placed = None
        assert summary.calls[0].answered
        await root.node.transcription.drain()
        _, after = await scrape(port)
        assert value(after, "siprecd_active_calls") == 0
        assert value(after, "siprecd_active_streams") == 0
        assert value(after, "siprecd_transcribed_streams") == 0
        assert value(after, "siprecd_asr_queue_seconds") == 0
        # Streams that ended still count: the counters never go down.
        assert value(after, "siprecd_rtp_packets_total") >= value(talking,
                                                                   "siprecd_rtp_packets_total")
        assert value(after, "siprecd_asr_audio_seconds_total") >= value(
            talking, "siprecd_asr_audio_seconds_total")
    finally:
        if placed is not None:
            for s in list(root.node.sip_server.calls.values()):
                root.node.sip_server.hang_up(s, "test over")
        await root.stopService()
        if placed is not None:
            await placed
        await receiver.stop()


def bare_root(tmp_path, **metrics):
    cfg = configmod.from_dict({"state_dir": str(tmp_path), "node": {"id": "metrics-node"},
                               "metrics": dict({"enabled": True, "host": "127.0.0.1"},
                                               **metrics)})
    root = SiprecdService(cfg, reactor)
    service = MetricsService.from_config(cfg, reactor, ScrapeSources(readiness=root.readiness))
    service.setServiceParent(root)
    return root, service


@pytest_twisted.ensureDeferred
async def test_the_listener_serves_before_any_stage_has_started(tmp_path):
    port = free_port()
    root, service = bare_root(tmp_path, port=port)
    # Bound in privilegedStartService, as twistd does before dropping
    # privileges; no stage has started (the ASR model would still load).
    root.privilegedStartService()
    try:
        assert service.address.port == port
        _, samples = await scrape(port)
        assert value(samples, "siprecd_ready") == 0
        assert value(samples, "siprecd_active_calls") == 0
        assert value(samples, "siprecd_info", node="metrics-node",
                     version=service.metrics.version) == 1
        assert value(samples, "process_resident_memory_bytes") > 0

        def other_path():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
            except urllib.error.HTTPError as e:
                return e.code
            return 200

        assert await threads.deferToThread(other_path) == 404
    finally:
        await service.stopService()


def test_a_busy_port_stops_start_up_with_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        root, _ = bare_root(tmp_path, port=port)
        with pytest.raises(SystemExit) as e:
            root.privilegedStartService()
    assert str(e.value) == (
        f"siprecd: metrics: cannot listen for Prometheus metrics on 127.0.0.1:{port}: "
        "Address already in use"
    )


@pytest_twisted.ensureDeferred
async def test_tls_when_a_certificate_is_configured(tmp_path):
    ca = Authority("metrics test CA", tmp_path / "pki")
    issued = ca.issue_server(("127.0.0.1",), name="metrics")
    port = free_port()
    root, service = bare_root(tmp_path, port=port, certificate=str(issued.certificate_path),
                              private_key=str(issued.key_path))
    root.privilegedStartService()
    try:
        _, samples = await scrape(port, "https", cafile=ca.certificate_path)
        assert value(samples, "siprecd_ready") == 0
    finally:
        await service.stopService()


def test_tls_files_are_checked_with_the_key_path(tmp_path):
    with pytest.raises(configmod.ConfigError) as e:
        bare_root(tmp_path, port=9464, certificate=str(tmp_path / "missing.pem"),
                  private_key=str(tmp_path / "missing.key"))
    assert str(e.value).startswith("metrics.certificate: cannot read")
    with pytest.raises(configmod.ConfigError) as e:
        configmod.from_dict({"metrics": {"certificate": str(tmp_path / "a.pem")}})
    assert str(e.value) == "metrics.private_key: expected both certificate and private_key, " \
                           "or neither"
