"""Prometheus metrics of one daemon, served at /metrics on a listener of its own.

:class:`SiprecdMetrics` holds a ``CollectorRegistry`` of siprecd's own (not
prometheus_client's global one, so two service trees in one process, as in
the tests, never share or clash) with two kinds of metric:

- read at scrape time, by :class:`_ScrapeCollector`, from state the daemon
  keeps anyway: calls and streams in progress, RTP counters and jitter
  (the media manager's per-stream statistics plus its running totals of
  streams already closed), the ASR queue, webhook counters. Nothing is
  added to the packet path.
- counted as things happen, through the hooks (:class:`siprecd.hooks.Hook`)
  the other parts are given when :mod:`siprecd.node` builds them (they
  never import prometheus_client): each recogniser call
  (``TranscriptionService(on_asr_call=...)``), each stored utterance
  (``on_stored``), each webhook attempt (``WebhookService(on_outcome=...)``),
  each API request (``ControlApi(on_request=...)``).

What is read at scrape time is named by a :class:`ScrapeSources` record
given to :class:`MetricsService`: the parts of the node it reads, any of
which may be absent (a test tree, the API disabled).

:class:`MetricsService` is the listener (a :class:`~siprecd.service.ListeningPort`,
so it binds in ``privilegedStartService`` and a busy port stops start-up with
one line naming ``metrics``). It serves plain HTTP by default: it is a
separate listener, on loopback unless configured otherwise, for a scraper,
and nothing in it is secret (no guid, no text, no credentials). With
``metrics.certificate`` and ``metrics.private_key`` it serves TLS instead.
It stays open while the daemon drains, so the drain can be watched.

Everything here runs on the reactor thread: the page is rendered there
(not through prometheus_client's WSGI resource, which would read the
daemon's state from a pool thread).
"""

import time
from importlib import metadata

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.web import resource, server

from siprecd import tls
from siprecd.service import ListeningPort

__all__ = ["SiprecdMetrics", "ScrapeSources", "MetricsService", "make_site"]

# Utterance latency: the recogniser's endpoint (asr.endpoint_silence) and the
# redaction hold-back (up to redaction.hold_back) are part of it.
LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# From the utterance stored to the webhook delivered: retries make it long.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

# MediaManager.ended_totals / per-stream stats key -> (metric, help).
RTP_COUNTERS = {
    "packets": ("siprecd_rtp_packets", "RTP packets received on recorded streams "
                "(duplicates and late ones included)."),
    "bytes": ("siprecd_rtp_payload_bytes", "RTP payload octets received."),
    "lost": ("siprecd_rtp_lost_packets", "RTP packets missing when their turn came "
             "(the gap was filled)."),
    "late": ("siprecd_rtp_late_packets", "RTP packets that came after their turn "
             "(dropped; also counted as lost)."),
    "duplicates": ("siprecd_rtp_duplicate_packets", "Duplicate RTP packets (dropped)."),
    "malformed": ("siprecd_rtp_malformed_packets", "Datagrams on RTP ports that are not "
                  "valid RTP."),
    "refused": ("siprecd_rtp_refused_packets", "RTP and RTCP datagrams refused because they "
                "came from another source than the stream's (media.latch, check_source)."),
}
# WebhookService.stats key -> (metric, help).
WEBHOOK_COUNTERS = {
    "retries": ("siprecd_webhook_retries", "Webhook deliveries scheduled for another attempt."),
    "dead": ("siprecd_webhook_dead_letters", "Webhook deliveries given up on (dead-lettered)."),
    "possible_duplicates": ("siprecd_webhook_possible_duplicates",
                            "Webhook attempts that timed out: the receiver may get the "
                            "message twice."),
    "parked": ("siprecd_webhook_parked", "Webhook deliveries parked because their target "
               "is disabled (HTTP 410)."),
}


def _version():
    try:
        return metadata.version("siprecd")
    except metadata.PackageNotFoundError:
        return "unknown"


@attrs.frozen
class ScrapeSources:
    """The parts of a node read at each scrape; None where a node has none."""

    readiness: object = None       # siprecd.service.Readiness
    calls: object = None           # siprecd.calls.CallRegistry
    media: object = None           # siprecd.media.manager.MediaManager
    transcription: object = None   # siprecd.transcribe.TranscriptionService
    webhooks: object = None        # siprecd.webhooks.WebhookService


class SiprecdMetrics:
    """The registry and the instruments; its methods ``asr_call``,
    ``utterance_stored``, ``webhook_outcome`` and ``api_request`` are the
    listeners the node's parts are given. *clock* (an IReactorTime) dates
    webhook lag against the time storage wrote on each message."""

    def __init__(self, node="siprecd", clock=None, process=True):
        self.node = node
        self.version = _version()
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.asr_audio = Counter(
            "siprecd_asr_audio_seconds", "Seconds of audio given to speech recognisers.",
            registry=r)
        self.asr_busy = Counter(
            "siprecd_asr_busy_seconds",
            "Wall-clock seconds from handing audio to a recogniser to its answer (waiting for "
            "a recogniser thread included); divided by siprecd_asr_audio_seconds_total this "
            "is the real-time factor.", registry=r)
        self.asr_errors = Counter(
            "siprecd_asr_errors", "Recogniser calls that failed.", registry=r)
        self.utterance_latency = Histogram(
            "siprecd_utterance_latency_seconds",
            "From the end of an utterance's last word on the call's wall clock to the "
            "utterance being stored.", buckets=LATENCY_BUCKETS, registry=r)
        self.api_requests = Counter(
            "siprecd_api_requests", "HTTPS API requests answered, by route and status code.",
            ["route", "code"], registry=r)
        self.api_duration = Histogram(
            "siprecd_api_request_duration_seconds", "Time to answer HTTPS API requests.",
            ["route"], buckets=HTTP_BUCKETS, registry=r)
        self.webhook_deliveries = Counter(
            "siprecd_webhook_deliveries", "Webhook POSTs the receiver accepted.",
            ["target"], registry=r)
        self.webhook_failures = Counter(
            "siprecd_webhook_failures",
            "Webhook POSTs that failed, by what follows: retry, permanent (dead-lettered) "
            "or gone (HTTP 410: the target is disabled).", ["target", "outcome"], registry=r)
        self.webhook_duration = Histogram(
            "siprecd_webhook_attempt_duration_seconds",
            "Time of one webhook POST (connect, TLS, request, answer).", ["target"],
            buckets=HTTP_BUCKETS, registry=r)
        self.webhook_lag = Histogram(
            "siprecd_webhook_delivery_lag_seconds",
            "From an utterance being stored to its webhook being accepted (retries "
            "included).", ["target"], buckets=LAG_BUCKETS, registry=r)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    # -- hooks (reactor thread) ---------------------------------------------------------

    def asr_call(self, audio_seconds, busy_seconds, ok):
        self.asr_audio.inc(audio_seconds)
        self.asr_busy.inc(max(0.0, busy_seconds))
        if not ok:
            self.asr_errors.inc()

    def utterance_stored(self, message, now_ms):
        # client_ms is the wall-clock time of the utterance's start (the
        # stream's origin + start); its end is end_ms - start_ms later.
        if message.client_ms is None:
            return
        ended_ms = message.client_ms + (message.end_ms - message.start_ms)
        self.utterance_latency.observe(max(0.0, (now_ms - ended_ms) / 1000.0))

    def webhook_outcome(self, item, outcome):
        if outcome is None:     # parked or dead-lettered without an attempt: in the stats
            return
        target = item.target
        self.webhook_duration.labels(target).observe(max(0.0, outcome.elapsed))
        if outcome.kind == "delivered":
            self.webhook_deliveries.labels(target).inc()
            created = item.message.created_ms
            if created is not None and self.clock is not None:
                lag = self.clock.seconds() - created / 1000.0
                self.webhook_lag.labels(target).observe(max(0.0, lag))
        else:
            self.webhook_failures.labels(target, outcome.kind).inc()

    def api_request(self, request, route):
        # Real time for the answer's duration, as for any HTTP server.
        started = time.perf_counter()

        def finished(_):
            code = str(request.code or 200)
            self.api_requests.labels(route, code).inc()
            self.api_duration.labels(route).observe(time.perf_counter() - started)

        request.notifyFinish().addBoth(finished)


class _ScrapeCollector:
    """What is read from the daemon at each scrape."""

    def __init__(self, metrics, sources):
        self.metrics = metrics
        self.sources = sources

    def describe(self):
        # Names only, so the registry can check them for clashes once.
        return list(self._families(ScrapeSources()))

    def collect(self):
        return list(self._families(self.sources))

    def _families(self, sources):
        m = self.metrics
        info = GaugeMetricFamily("siprecd_info", "This siprecd node (value 1).",
                                 labels=["node", "version"])
        info.add_metric([m.node, m.version], 1)
        yield info
        readiness = sources.readiness
        yield GaugeMetricFamily(
            "siprecd_ready", "1 when the node takes calls (every stage started, ASR ready).",
            value=1 if readiness is not None and readiness.ready else 0)
        calls = sources.calls
        yield GaugeMetricFamily("siprecd_active_calls", "Recording sessions in progress.",
                                value=len(calls) if calls is not None else 0)
        yield from self._media(sources.media)
        yield from self._transcription(sources.transcription)
        yield from self._webhooks(sources.webhooks)

    @staticmethod
    def _media(media):
        streams = []
        totals = dict.fromkeys(RTP_COUNTERS, 0)
        if media is not None:
            for key in totals:
                totals[key] += media.ended_totals.get(key, 0)
            for open_streams in list(media.calls.values()):
                streams += [stream for _, stream in open_streams.values()]
        jitter = 0.0
        for stream in streams:
            stats = stream.stats()
            for key in totals:
                totals[key] += stats.get(key, 0)
            jitter = max(jitter, stats.get("jitter_ms", 0.0) / 1000.0)
        yield GaugeMetricFamily("siprecd_active_streams",
                                "RTP streams being received (all calls).", value=len(streams))
        for key, (name, help_text) in RTP_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=totals[key])
        yield GaugeMetricFamily(
            "siprecd_rtp_jitter_max_seconds",
            "Highest RFC 3550 interarrival jitter among the streams being received.",
            value=jitter)

    @staticmethod
    def _transcription(transcription):
        windows, backlog = transcription.backlog() if transcription is not None else (0, 0)
        yield GaugeMetricFamily("siprecd_transcribed_streams",
                                "Streams being transcribed now (started and not stopped).",
                                value=windows)
        yield GaugeMetricFamily(
            "siprecd_asr_queue_seconds",
            "Audio waiting for speech recognisers, all streams together.",
            value=backlog)
        if transcription is None:
            return
        capacity = transcription.capacity()
        yield GaugeMetricFamily(
            "siprecd_asr_lag_seconds",
            "How far behind real time the most delayed stream's recognition is.",
            value=capacity["lag"])
        yield GaugeMetricFamily(
            "siprecd_asr_streams_behind",
            "Streams whose recognition is behind real time by more than "
            "asr.capacity.max_lag.", value=capacity["behind"])
        refused = CounterMetricFamily(
            "siprecd_asr_refused_starts",
            "start-streaming requests refused because the recognisers could not keep "
            "more streams in real time, by reason (capacity, behind).", labels=["reason"])
        for reason, count in sorted(capacity["refused"].items()):
            refused.add_metric([reason], count)
        yield refused
        families = {
            "cost": GaugeMetricFamily(
                "siprecd_asr_cost", "Processor seconds a second of audio costs to recognise, "
                "per language (learnt; seeded by a probe or asr.capacity.cost).",
                labels=["language"]),
            "capacity": GaugeMetricFamily(
                "siprecd_asr_capacity_streams",
                "Streams of a language this node keeps in real time in all.",
                labels=["language"]),
            "headroom": GaugeMetricFamily(
                "siprecd_asr_headroom_streams",
                "Streams of a language that would be admitted now.", labels=["language"]),
        }
        for language, figures in sorted(capacity["languages"].items()):
            for name, family in families.items():
                if figures[name] is not None:
                    family.add_metric([language], figures[name])
        yield from families.values()

    @staticmethod
    def _webhooks(webhooks):
        stats = webhooks.stats if webhooks is not None else {}
        for key, (name, help_text) in WEBHOOK_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=stats.get(key, 0))
        yield GaugeMetricFamily("siprecd_webhook_in_flight", "Webhook POSTs in progress.",
                                value=webhooks.in_flight if webhooks is not None else 0)
        yield GaugeMetricFamily(
            "siprecd_webhook_disabled_targets", "Webhook targets disabled by HTTP 410.",
            value=len(webhooks.disabled_targets) if webhooks is not None else 0)


class MetricsPage(resource.Resource):
    """``GET /metrics``: the registry in the format the scraper asks for
    (Prometheus text, or OpenMetrics by its Accept header)."""

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: metrics are at /metrics\n"
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self.registry)


def make_site(registry, timeout=60):
    site = server.Site(MetricsPage(registry), timeout=timeout)
    site.noisy = False
    site.displayTracebacks = False
    # No access log: one line per scrape every few seconds says nothing.
    site.log = lambda request: None
    return site


class MetricsService(ListeningPort):
    """The /metrics listener (see the module docstring); ``metrics`` is
    its :class:`SiprecdMetrics`."""

    def __init__(self, metrics, sources, host, port, listen, label="Prometheus metrics"):
        super().__init__(label, host, port, listen, "metrics", close_on_drain=False)
        self.name = "metrics"
        self.metrics = metrics
        metrics.registry.register(_ScrapeCollector(metrics, sources))

    @property
    def registry(self):
        return self.metrics.registry

    @classmethod
    def from_config(cls, config, reactor, sources, metrics=None):
        """Built from the ``metrics`` section: serves *metrics* (a
        SiprecdMetrics whose listeners the node's parts were given; a new
        one when None) and reads *sources* (ScrapeSources) at each scrape.
        Raises ConfigError when the TLS files do not load."""
        m = config.metrics
        if metrics is None:
            metrics = SiprecdMetrics(node=config.node.name, clock=reactor)
        site = make_site(metrics.registry)
        if m.certificate is not None:
            context = tls.server_options(m.certificate, m.private_key, m.min_tls_version,
                                         where="metrics")
            return cls(metrics, sources, m.host, m.port,
                       lambda: reactor.listenSSL(m.port, site, context, interface=m.host),
                       label="Prometheus metrics (TLS)")
        return cls(metrics, sources, m.host, m.port,
                   lambda: reactor.listenTCP(m.port, site, interface=m.host))
