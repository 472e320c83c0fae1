"""What a siprecd node is made of, declared in one place: :class:`Node`.

:func:`build_node` makes every part of a node from a configuration, in
dependency order, and hands each part what it needs when it is made: its
collaborators and the listeners (:class:`siprecd.hooks.Hook`) of the
events it reports. Nothing is attached afterwards and nothing reads a part
back from anywhere but the frozen :class:`Node` it returns.
``siprecd.tap.makeService`` turns it into the daemon's root service, whose
children start in the order of :attr:`Node.services`::

    storage -> export -> webhooks -> webhook partials -> cluster -> asr
    -> transcription -> RTP port journal -> media -> SIP/UDP, SIP/TCP, SIP/TLS
    -> HTTPS API -> live WebSockets -> metrics -> SIP

(SIP, the recording server, last: stopped first, so calls are hung up
while the SIP sockets are still open.)
"""

import socket

import attrs
from twisted.internet import task
from twisted.logger import Logger

from siprecd import config as configmod
from siprecd import tls
from siprecd.service import ListeningPort, Readiness

__all__ = ["Node", "Drain", "build_node", "usable_codecs", "connection_limits"]

log = Logger()


@attrs.frozen
class Node:
    """The parts of one node. ``api``, ``calls_controller`` and ``metrics``
    are None when disabled in the configuration."""

    config: object
    reactor: object
    readiness: Readiness
    storage: object                  # IStorage
    recordings: object               # siprecd.recordings.RecordingStore
    asr: object                      # IASRBackend
    transcription: object            # siprecd.transcribe.TranscriptionService
    webhooks: object                 # siprecd.webhooks.WebhookService
    export: object                   # siprecd.export.ExportService
    cluster: object                  # siprecd.cluster.ClusterService
    calls: object                    # siprecd.calls.CallRegistry
    media: object                    # siprecd.media.manager.MediaManager
    media_transport: object          # siprecd.media.transport.MediaTransport
    sip_server: object               # siprecd.siprec.server.RecordingServer
    drain: object                    # Drain
    calls_controller: object = None  # siprecd.api.control.ICallController
    api: object = None               # siprecd.api.app.ControlApi
    metrics: object = None           # siprecd.metrics.SiprecdMetrics
    services: tuple = ()             # the root service's children, in start order
    orphans: object = None           # siprecd.orphans.OrphanReaper
    live_hub: object = None          # siprecd.live.LiveHub (live.enabled, api.enabled)
    live: object = None              # siprecd.live.websocket.LiveEndpoint
    webhook_partials: object = None  # siprecd.webhooks.partials.PartialWebhooks


class Drain:
    """Draining a node (``siprecd drain``, SIGUSR1): OPTIONS and new
    INVITEs are answered 503 and /v1/health says so, so the load balancer
    sends new calls elsewhere; calls in progress go on (start/stop
    included). Logs once when no call is left, and the node can be stopped."""

    log = Logger()

    def __init__(self, readiness, sip_server, calls, clock):
        self.readiness = readiness
        self.sip_server = sip_server
        self.calls = calls
        self.clock = clock
        self.draining = False
        self._watch = None

    def start(self):
        if not self.draining:
            self.draining = True
            self.readiness.wait_for("drain", "draining: new calls are refused")
            self.sip_server.draining = True
            self.log.info("draining: new calls are refused; {count} calls in progress",
                          count=len(self.calls))
            self._watch = task.LoopingCall(self._drained)
            self._watch.clock = self.clock
            self._watch.start(1.0, now=True)
        return {"draining": True, "calls": len(self.calls)}

    def _drained(self):
        if len(self.calls) == 0:
            self.log.info("drained: no calls left; this node can be stopped")
            self.stop_watching()

    def stop_watching(self):
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None


def usable_codecs(wanted, unavailable=None):
    """media.codecs less those this machine cannot decode (G.729 without
    libbcg729, G.722 without the g722 package, Opus without libopus), each
    with a warning. *unavailable(name)* says why a codec cannot be used
    (default: ``media.codecs.unavailable_reason``)."""
    from siprecd.media import codecs

    unavailable = unavailable or codecs.unavailable_reason
    usable = []
    for name in wanted:
        reason = unavailable(name)
        if reason:
            Drain.log.warn("{codec} is not offered: {reason}", codec=name, reason=reason)
        else:
            usable.append(name)
    return tuple(usable)


def build_node(config, reactor):
    """Every part of a node for *config*; raises ConfigError naming the key
    of what cannot be built (an unknown backend, TLS files that do not
    load, a link key that cannot be read)."""
    from siprecd.asr import AsrService
    from siprecd.cluster import ClusterService
    from siprecd.export import ExportService
    from siprecd.media.ports import PortJournalService
    from siprecd.recordings import RecordingStore
    from siprecd.siprec.server import RecordingService
    from siprecd.storage import StorageService
    from siprecd.transcribe import TranscriptionService
    from siprecd.live import LiveHub
    from siprecd.webhooks import WebhookService
    from siprecd.webhooks.partials import PartialWebhooks

    readiness = Readiness()
    readiness.wait_for("startup", "starting")
    metrics = None
    if config.metrics.enabled:
        from siprecd.metrics import SiprecdMetrics

        metrics = SiprecdMetrics(node=config.node.name, clock=reactor)

    def listener(method):
        return () if metrics is None else (method(metrics),)

    # Consented audio; kept as long as transcripts, purged on every node.
    recordings = RecordingStore.from_config(config, reactor)
    reactor.callWhenRunning(recordings.recover)
    # Storage is the first stage: opened and migrated before anything listens.
    storage_service = StorageService.from_config(config, reactor,
                                                 local_purges=(recordings.purge,))
    storage = storage_service.storage
    # The daily feed: after storage, so it stops before storage closes.
    export = ExportService.from_config(config, storage, reactor)
    # Webhook delivery from the outbox: after storage (stops before it),
    # resumes what was pending when the node stopped.
    webhooks = WebhookService.from_config(config, storage, reactor,
                                          on_outcome=listener(lambda m: m.webhook_outcome))
    # Interim results: best effort to the targets that ask for them, and
    # to live WebSocket clients; the recogniser is asked for them only
    # while one of these wants those of the call.
    webhook_partials = PartialWebhooks.from_config(config, webhooks, reactor)
    live_hub = (LiveHub(reactor, isolation=config.api.app_isolation)
                if config.live.enabled and config.api.enabled else None)
    live_listeners = () if live_hub is None else (live_hub,)

    def partials_wanted(guid, app_id, webhook_target):
        return (webhook_partials.wants(webhook_target)
                or (live_hub is not None and live_hub.wants(guid, app_id)))

    # Speech recognition loads in the background: the node stays not
    # ready (SIP 503, /v1/health says why) until its model is in.
    asr_service = AsrService.from_config(config, reactor, readiness)
    transcription = TranscriptionService.from_config(
        config, storage, asr_service.backend, reactor, recordings=recordings,
        on_utterance=(webhooks.notify, webhook_partials.final,
                      *(h.final for h in live_listeners)),
        on_stored=listener(lambda m: m.utterance_stored),
        on_asr_call=listener(lambda m: m.asr_call),
        on_partial=(webhook_partials.partial, *(h.partial for h in live_listeners)),
        on_call_event=(webhooks.call_event, webhook_partials.call_event,
                       *(h.call_event for h in live_listeners)),
        partials_wanted=partials_wanted)

    calls, media, media_transport, sip_server, sip_ports, orphans = _sip_and_media(
        config, reactor, transcription, readiness, storage)
    # Heartbeats; ends the calls of dead nodes and this node's own calls
    # from before a restart, and has their SBCs sent a BYE.
    cluster = ClusterService.from_config(config, storage, reactor,
                                         on_node_gone=(orphans.node_gone,))
    drain = Drain(readiness, sip_server, calls, reactor)
    calls_controller = api = live = None
    api_ports = ()
    if config.api.enabled:
        if live_hub is not None:
            from siprecd.live.websocket import LiveEndpoint

            live = LiveEndpoint.from_config(config, live_hub, storage, reactor)
        calls_controller, api, api_ports = _api(
            config, reactor, storage, transcription, cluster, readiness, recordings, drain,
            listener(lambda m: m.api_request), live)
    services = [storage_service, export, webhooks, webhook_partials, cluster, asr_service,
                transcription, PortJournalService(media.ports.ports), media_transport,
                *sip_ports, *api_ports]
    if live is not None:
        # After the API's listener: stopped first, closing its WebSockets.
        services.append(live)
    if metrics is not None:
        from siprecd.metrics import MetricsService, ScrapeSources

        # /metrics on its own listener (loopback by default).
        services.append(MetricsService.from_config(
            config, reactor, ScrapeSources(readiness, calls, media, transcription, webhooks),
            metrics=metrics))
    # Last: stopped first, so calls are hung up while the SIP sockets are open.
    services.append(RecordingService(sip_server))
    return Node(config, reactor, readiness, storage, recordings, asr_service.backend,
                transcription, webhooks, export, cluster, calls, media, media_transport,
                sip_server, drain, calls_controller, api, metrics, tuple(services),
                orphans=orphans, live_hub=live_hub, live=live,
                webhook_partials=webhook_partials)


def _sip_and_media(config, reactor, transcription, readiness, storage):
    """SIP and RTP: the recording server, the media plane (one socket pair
    per stream, bound before the 200 OK names it), the SIP listeners, and
    the keeper of each call's dialog with the reaper that hangs up those
    of a node that is gone (siprecd.orphans)."""
    from siprecd.calls import CallListeners, CallRegistry
    from siprecd.orphans import DialogKeeper, OrphanReaper
    from siprecd.siprec.orphans import OrphanedDialogs
    from siprecd.media.manager import MediaManager, SocketAwarePorts
    from siprecd.media.ports import PortJournal, RangePortAllocator
    from siprecd.media.transport import MediaTransport
    from siprecd.sip.endpoint import SipEndpoint
    from siprecd.sip.transport import Transports
    from siprecd.siprec.server import RecordingServer

    tls_client = (tls.sip_client_options(config.sip.tls) if config.sip.tls.enabled else None)
    transports = Transports(reactor, tls_client_options=tls_client)
    endpoint = SipEndpoint(reactor, transports, max_message_size=config.sip.max_message_size)
    ports = SocketAwarePorts(RangePortAllocator(
        reactor, config.media.port_min, config.media.port_max, config.media.port_quarantine,
        probe_host=config.media.host, journal=PortJournal(config.state_dir / "media-ports"),
        restart_quarantine=config.media.restart_quarantine,
    ))
    calls = CallRegistry()
    media_transport = MediaTransport(reactor, config.media, tick=config.media.tick)

    def hang_up(session, reason):
        # The media manager hangs up a call whose streams all went silent,
        # through the recording server made just below (which needs it).
        return sip_server.hang_up(session, reason)

    media = MediaManager(media_transport, transcription, ports, hang_up=hang_up)
    dialogs = DialogKeeper(storage, config.node.name)
    sip_server = RecordingServer(
        endpoint, reactor, config, CallListeners(calls, media, transcription, dialogs), ports,
        readiness, codecs=usable_codecs(config.media.codecs),
    )
    sip_ports = _sip_listeners(config, reactor, endpoint, transports,
                               in_use=sip_server.connection_in_use)
    orphans = OrphanReaper(storage, OrphanedDialogs(endpoint, reactor, config))
    return calls, media, media_transport, sip_server, sip_ports, orphans


def connection_limits(config, reactor):
    """The caps of SIP stream connections (``sip.connections``), the total
    kept below what the file limit leaves for them; logged."""
    from siprecd import resources
    from siprecd.sip.limits import ConnectionLimits

    wanted = config.sip.connections
    soft, hard = resources.file_limit()
    cap, budget = resources.connection_cap(wanted.max, soft, config.media.max_streams)
    if wanted.max is not None and budget is not None and wanted.max > budget:
        log.warn(
            "sip.connections.max {wanted} is more than the file limit leaves for SIP "
            "connections ({budget} of {soft} descriptors, after {streams} media streams); "
            "using {cap}", wanted=wanted.max, budget=budget, soft=soft,
            streams=config.media.max_streams, cap=cap)
    log.info(
        "SIP connections: at most {cap} open ({per_source} per source), file limit {soft} "
        "(hard {hard})", cap=cap, per_source=wanted.per_source or "no cap", soft=soft, hard=hard)
    return ConnectionLimits(reactor, max_connections=cap, per_source=wanted.per_source,
                            trusted=config.sip.trusted_sources)


def _sip_listeners(config, reactor, endpoint, transports, in_use=lambda connection: False):
    from siprecd.sip.transport import SipDatagramProtocol, SipStreamFactory

    sip = config.sip
    limits = connection_limits(config, reactor) if (sip.tcp.enabled or sip.tls.enabled) else None

    def stream_factory(kind):
        factory = SipStreamFactory(
            endpoint, transports, kind, sip.max_message_size, clock=reactor, limits=limits,
            message_timeout=sip.connections.message_timeout,
            idle_timeout=sip.connections.idle_timeout, in_use=in_use)
        transports.stream_factories[kind] = factory
        return factory

    def listen_udp():
        port = reactor.listenUDP(
            sip.udp.port, SipDatagramProtocol(endpoint, transports), interface=sip.udp.host,
            maxPacketSize=sip.max_message_size,
        )
        # Bursts of INVITEs (an SBC failing over to us) must not be dropped.
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.media.receive_buffer)
        return port

    out = []
    if sip.udp.enabled:
        out.append(ListeningPort("SIP/UDP", sip.udp.host, sip.udp.port, listen_udp,
                                 "sip.udp", close_on_drain=False))
    if sip.tcp.enabled:
        out.append(ListeningPort(
            "SIP/TCP", sip.tcp.host, sip.tcp.port,
            lambda: reactor.listenTCP(sip.tcp.port, stream_factory("TCP"), interface=sip.tcp.host),
            "sip.tcp", close_on_drain=False))
    if sip.tls.enabled:
        sip_context = tls.listener_options(sip.tls, where="sip.tls")
        out.append(ListeningPort(
            "SIP/TLS", sip.tls.host, sip.tls.port,
            lambda: reactor.listenSSL(
                sip.tls.port, stream_factory("TLS"), sip_context, interface=sip.tls.host
            ),
            "sip.tls", close_on_drain=False))
    return out


def _api(config, reactor, storage, transcription, cluster, readiness, recordings, drain,
         on_request, live=None):
    from siprecd.api.app import ControlApi
    from siprecd.api.control import LocalCalls
    from siprecd.api.http import make_site
    from siprecd.export.catalogue import Catalogue
    from siprecd.export.signing import KeyFileError, Links

    local = LocalCalls(transcription, storage, config.webhooks.targets, config.api.app_isolation)
    controller = local
    if config.cluster.secret:
        from siprecd.api.forward import ForwardingCalls

        controller = ForwardingCalls.from_config(config, local, storage, cluster, reactor)
    try:
        links = Links.from_config(config, reactor)
    except KeyFileError as e:
        raise configmod.ConfigError(str(e), "export.link_key_file") from None
    api = ControlApi.from_config(
        config, storage, controller, readiness, reactor, recordings=recordings,
        catalogue=Catalogue.from_config(config), links=links, local_calls=local,
        on_drain=drain.start, on_request=on_request, live=live)
    site = make_site(api.resource(), config.api.max_body_size)
    context = _api_context(config)
    port = ListeningPort(
        "HTTPS API", config.api.host, config.api.port,
        lambda: reactor.listenSSL(config.api.port, site, context, interface=config.api.host),
        "api",
    )
    return controller, api, (port,)


def _api_context(config):
    if config.api.certificate is not None:
        cert, key = config.api.certificate, config.api.private_key
    else:
        cert, key, made = tls.ensure_self_signed(config.state_dir / "tls")
        if made:
            Drain.log.warn(
                "made a self-signed development certificate {path} for the API; "
                "set api.certificate and api.private_key for production",
                path=str(cert),
            )
    return tls.server_options(cert, key, config.api.min_tls_version, where="api")
