"""twistd glue: command-line options and the service tree for one daemon."""

import socket
import sys

from twisted.python import usage

from siprecd import config as configmod
from siprecd import logs, tls
from siprecd.checks import check_files, prepare_state_dir
from siprecd.config import EXIT_CONFIG
from siprecd.service import ListeningPort, SiprecdService, StartupError

__all__ = ["Options", "makeService"]

def config_failure(message):
    """Print one line to stderr and exit with EXIT_CONFIG (no traceback)."""
    print(f"siprecd: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


class Options(usage.Options):
    synopsis = "-c FILE"
    longdesc = (
        "Run the siprecd SIPREC recording and transcription server. "
        "All settings are in the YAML file given with -c; see etc/siprecd.yaml."
    )
    optParameters = [
        ["config", "c", None, "Path to the YAML configuration file (required)."],
    ]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("-c/--config FILE is required")
        try:
            self.config = configmod.load(self["config"])
            check_files(self.config)
        except configmod.ConfigError as e:
            config_failure(str(e))


def _wants_own_observer(options):
    """Use the YAML's logging section unless twistd was told where to log."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return True
    if parent.get("logfile") or parent.get("logger") or parent.get("syslog"):
        return False
    # A daemonised twistd has no stdout; it keeps its own twistd.log then.
    return bool(parent.get("nodaemon")) or options.config.logging.file != "-"


def _api_context(config):
    if config.api.certificate is not None:
        cert, key = config.api.certificate, config.api.private_key
    else:
        cert, key, made = tls.ensure_self_signed(config.state_dir / "tls")
        if made:
            SiprecdService.log.warn(
                "made a self-signed development certificate {path} for the API; "
                "set api.certificate and api.private_key for production",
                path=str(cert),
            )
    return tls.server_options(cert, key, config.api.min_tls_version, where="api")


def makeService(options, reactor=None):
    """Build the root service from parsed Options (or anything with .config)."""
    if reactor is None:
        from twisted.internet import reactor
    config = options.config
    observer = logs.make_observer(config.logging) if _wants_own_observer(options) else None
    root = SiprecdService(config, reactor, log_observer=observer)
    try:
        prepare_state_dir(config)
        # Storage is the first child: opened and migrated before anything
        # listens. An unknown storage.backend is a ConfigError here.
        from siprecd.storage import StorageService

        storage_service = StorageService.from_config(config, reactor)
        storage_service.setServiceParent(root)
        root.storage = storage_service.storage
        # The daily feed: after storage, so it stops before storage closes.
        from siprecd.export import ExportService

        root.export = ExportService.from_config(config, root.storage, reactor)
        root.export.setServiceParent(root)
        # Webhook delivery from the outbox: after storage (stops before it),
        # resumes what was pending when the node stopped.
        from siprecd.webhooks import WebhookService

        root.webhooks = WebhookService.from_config(config, root.storage, reactor)
        root.webhooks.setServiceParent(root)
        # Heartbeats; ends the calls of dead nodes and this node's own
        # calls from before a restart.
        from siprecd.cluster import ClusterService

        root.cluster = ClusterService.from_config(config, root.storage, reactor)
        root.cluster.setServiceParent(root)
        # Speech recognition loads in the background: the node stays
        # not-ready (SIP 503, /v1/health says why) until its model is in.
        from siprecd.asr import AsrService

        asr_service = AsrService.from_config(config, reactor, root.readiness)
        asr_service.setServiceParent(root)
        root.asr = asr_service.backend
        from siprecd.transcribe import TranscriptionService

        from siprecd.recordings import RecordingStore

        # Consented audio; kept as long as transcripts, purged on every node.
        root.recordings = RecordingStore.from_config(config, reactor)
        storage_service.local_purges.append(root.recordings.purge)
        reactor.callWhenRunning(root.recordings.recover)
        root.transcription = TranscriptionService.from_config(
            config, root.storage, root.asr, reactor, recordings=root.recordings,
            on_utterance=root.webhooks.notify,
        )
        root.transcription.setServiceParent(root)
        _add_listeners(root, config, reactor)
        if config.metrics.enabled:
            # /metrics on its own listener (loopback by default), bound with
            # the others in privilegedStartService; hooks into the parts above.
            from siprecd.metrics import MetricsService

            root.metrics = MetricsService.from_config(config, root, reactor)
            root.metrics.setServiceParent(root)
    except configmod.ConfigError as e:
        config_failure(str(e))
    except StartupError as e:
        raise SystemExit(f"siprecd: {e}") from None
    return root


def usable_codecs(wanted, g729_available=None):
    """media.codecs less G729 when libbcg729 cannot be loaded (with a warning)."""
    from siprecd.media import codecs

    available = codecs.g729_available() if g729_available is None else g729_available
    if "G729" in wanted and not available:
        SiprecdService.log.warn(
            "G.729 is not offered: {reason}", reason=codecs.G729_UNAVAILABLE_REASON
        )
        wanted = tuple(c for c in wanted if c != "G729")
    return tuple(wanted)


def _add_listeners(root, config, reactor):
    from siprecd.calls import CallListeners, CallRegistry
    from siprecd.media.manager import MediaManager, SocketAwarePorts
    from siprecd.media.transport import MediaTransport
    from siprecd.media.ports import RangePortAllocator
    from siprecd.sip.endpoint import SipEndpoint
    from siprecd.sip.transport import SipDatagramProtocol, SipStreamFactory, Transports
    from siprecd.siprec.server import RecordingServer, RecordingService

    sip = config.sip
    transports = Transports(reactor)
    endpoint = SipEndpoint(reactor, transports, max_message_size=sip.max_message_size)
    ports = RangePortAllocator(
        reactor, config.media.port_min, config.media.port_max, config.media.port_quarantine,
        probe_host=config.media.host,
    )
    root.calls = CallRegistry()
    # RTP: one socket pair per stream, bound before the 200 OK goes out.
    root.media_transport = MediaTransport(reactor, config.media)
    root.media_transport.setServiceParent(root)
    ports = SocketAwarePorts(ports)
    root.media = MediaManager(root.media_transport, root.transcription, ports)
    listeners = CallListeners(root.calls, root.media, root.transcription)
    root.sip_server = RecordingServer(
        endpoint, reactor, config, listeners, ports, root.readiness,
        codecs=usable_codecs(config.media.codecs),
    )
    root.media.hang_up = root.sip_server.hang_up

    def stream_factory(kind):
        factory = SipStreamFactory(endpoint, transports, kind, sip.max_message_size)
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

    if sip.udp.enabled:
        ListeningPort(
            "SIP/UDP", sip.udp.host, sip.udp.port, listen_udp,
            "sip.udp", close_on_drain=False,
        ).setServiceParent(root)
    if sip.tcp.enabled:
        ListeningPort(
            "SIP/TCP", sip.tcp.host, sip.tcp.port,
            lambda: reactor.listenTCP(sip.tcp.port, stream_factory("TCP"), interface=sip.tcp.host),
            "sip.tcp", close_on_drain=False,
        ).setServiceParent(root)
    if sip.tls.enabled:
        sip_context = tls.listener_options(sip.tls, where="sip.tls")
        ListeningPort(
            "SIP/TLS", sip.tls.host, sip.tls.port,
            lambda: reactor.listenSSL(
                sip.tls.port, stream_factory("TLS"), sip_context, interface=sip.tls.host
            ),
            "sip.tls", close_on_drain=False,
        ).setServiceParent(root)
    if config.api.enabled:
        from siprecd.api.app import ControlApi
        from siprecd.api.control import LocalCalls
        from siprecd.api.http import make_site

        root.calls_controller = LocalCalls(
            root.transcription, root.storage, config.webhooks.targets, config.api.app_isolation)
        if config.cluster.secret:
            from siprecd.api.forward import ForwardingCalls

            root.calls_controller = ForwardingCalls.from_config(
                config, root.calls_controller, root.cluster, reactor)
        from siprecd.export.catalogue import Catalogue
        from siprecd.export.signing import KeyFileError, Links

        try:
            links = Links.from_config(config, reactor)
        except KeyFileError as e:
            raise configmod.ConfigError(str(e), "export.link_key_file") from None
        root.api = ControlApi.from_config(
            config, root.storage, root.calls_controller, root.readiness, reactor,
            recordings=root.recordings, catalogue=Catalogue.from_config(config), links=links)
        root.api.on_drain = root.drain_node
        site = make_site(root.api.resource(), config.api.max_body_size)
        api_context = _api_context(config)
        ListeningPort(
            "HTTPS API", config.api.host, config.api.port,
            lambda: reactor.listenSSL(
                config.api.port, site, api_context, interface=config.api.host
            ),
            "api",
        ).setServiceParent(root)
    # Last: stopped first, so calls are hung up while the SIP sockets are open.
    RecordingService(root.sip_server).setServiceParent(root)
