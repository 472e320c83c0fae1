"""siprecd's configuration: the YAML schema as frozen attrs classes.

Every section has defaults that suit one machine, so an empty file is a valid
config. ``load(path)`` returns a :class:`Config` or raises
:class:`ConfigError` whose ``str()`` is one line naming the key path.
etc/siprecd.yaml documents every key; keep the two in step.
"""

import os
import socket
from pathlib import Path
from typing import Annotated, Literal, Optional

import attrs

from siprecd.structure import (
    ByteSize,
    ConfigError,
    Duration,
    FilePath,
    NonEmpty,
    Pattern,
    Range,
    StatePath,
    load_yaml,
    structure,
)

__all__ = ["Config", "ConfigError", "load", "from_dict", "EXIT_CONFIG"]

# Exit status of every command for a configuration that cannot be used
# (sysexits' EX_CONFIG): the daemon, `siprecd run` and every subcommand.
EXIT_CONFIG = 78

Port = Annotated[int, Range(1, 65535)]
Positive = Annotated[int, Range(1, None)]
Host = Annotated[str, NonEmpty()]
Role = Literal["customer", "agent"]
Codec = Literal["PCMU", "PCMA", "G729", "G722", "opus"]
TlsVersion = Literal["1.2", "1.3"]


def _secret():
    """A field that never shows in repr() (and so never in logs)."""
    return attrs.field(default=None, repr=False)


@attrs.frozen
class Listener:
    enabled: bool = True
    host: Host = "0.0.0.0"
    port: Port = 5070


@attrs.frozen
class TlsListener:
    enabled: bool = False
    host: Host = "0.0.0.0"
    port: Port = 5071
    certificate: Optional[FilePath] = None
    private_key: Optional[FilePath] = None
    # CA bundle to verify client certificates with; none: clients are not asked.
    client_ca: Optional[FilePath] = None
    min_version: TlsVersion = "1.2"
    # Highest TLS version offered (none: the highest OpenSSL has).
    max_version: Optional[TlsVersion] = None
    # OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's own);
    # none: Twisted's default list.
    ciphers: Optional[Annotated[str, NonEmpty()]] = None

    def validate(self, path):
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ConfigError(
                "expected certificate and private_key when TLS is enabled",
                f"{path}.certificate" if self.certificate is None else f"{path}.private_key",
            )
        if self.max_version is not None and self.max_version < self.min_version:
            raise ConfigError(
                f"expected a max_version of at least min_version ({self.min_version}), "
                f"got {self.max_version}", f"{path}.max_version",
            )
        if self.ciphers is not None:
            from siprecd.tls import check_ciphers

            problem = check_ciphers(self.ciphers)
            if problem:
                raise ConfigError(problem, f"{path}.ciphers")


@attrs.frozen
class SipRateLimit:
    requests_per_second: Annotated[float, Range(0.1, None)] = 100.0
    burst: Positive = 200


@attrs.frozen
class SipConnections:
    """SIP over TCP and TLS: what one connection and one source may hold."""

    # Connections open at once, from every source; refused past it (the
    # SBCs of trusted_sources get the last tenth). null: derived at start
    # from the process's file limit (see README, "Limits").
    max: Optional[Positive] = None
    # Connections open at once from one address; trusted_sources exempt.
    per_source: Optional[Positive] = 32
    # A message must be complete this long after its first byte arrived,
    # or its connection is closed (slow or stalled senders).
    message_timeout: Annotated[Duration, Range(0.1, 600)] = 10.0
    # A connection that carries no dialog and has sent nothing for this
    # long is closed (trusted_sources exempt). null: never.
    idle_timeout: Optional[Annotated[Duration, Range(1, None)]] = 120.0


@attrs.frozen
class Sip:
    udp: Listener = Listener()
    tcp: Listener = Listener()
    tls: TlsListener = TlsListener()
    # Address put in Via/Contact/SDP when the host is behind NAT.
    advertised_host: Optional[Host] = None
    max_message_size: Annotated[ByteSize, Range(1024, 16 * 1024 * 1024)] = 65536
    max_call_duration: Duration = 4 * 3600.0
    session_expires: Annotated[Duration, Range(90, None)] = 1800.0
    # Order in which call identifiers are looked for (README, "SIP and SIPREC").
    guid_sources: Annotated[
        list[
            Literal[
                "avaya-uui", "x-ucid", "x-isr-ucid", "oracle-ucid", "audiocodes-ucid",
                "cisco-guid", "genesys-uuid", "broadworks-tracking-id", "broadworks-call-id",
                "metadata-session", "call-id",
            ]
        ],
        NonEmpty(),
    ] = (
        "avaya-uui", "x-ucid", "x-isr-ucid", "oracle-ucid", "audiocodes-ucid",
        "cisco-guid", "genesys-uuid", "broadworks-tracking-id", "broadworks-call-id",
        "metadata-session", "call-id",
    )
    max_calls: Positive = 500
    # Audio streams offered (recvonly) to an INVITE that came without SDP
    # (delayed offer, as Cisco CUCM's built-in-bridge recording sends).
    delayed_offer_streams: Annotated[int, Range(1, 16)] = 2
    user_agent: str = "siprecd"
    # New INVITEs and OPTIONS per source address (token bucket); past it
    # they get 503 with Retry-After. Requests in a dialog and responses
    # are never limited. null: no limit.
    rate_limit: Optional[SipRateLimit] = SipRateLimit()
    # Sources (CIDR, or single addresses) that skip rate_limit, the
    # per-source connection cap and the idle timeout: the SBCs.
    trusted_sources: list[Annotated[str, NonEmpty()]] = ()
    connections: SipConnections = SipConnections()

    def validate(self, path):
        import ipaddress

        for i, value in enumerate(self.trusted_sources):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ConfigError(f"expected an address or CIDR network, got {value!r}",
                                  f"{path}.trusted_sources[{i}]") from None


@attrs.frozen
class Media:
    host: Host = "0.0.0.0"
    advertised_host: Optional[Host] = None
    port_min: Annotated[int, Range(1024, 65534)] = 20000
    port_max: Annotated[int, Range(1025, 65535)] = 29999
    # The codecs taken; which one a stream gets is the SRC's choice (the
    # first of these its m-line offers).
    codecs: Annotated[list[Codec], NonEmpty()] = ("PCMU", "PCMA", "G729", "G722", "opus")
    receive_buffer: Annotated[ByteSize, Range(65536, None)] = 1024 * 1024
    jitter_window: Annotated[Duration, Range(0, 2)] = 0.06
    # How often received audio is decoded and handed on (one timer for all
    # streams): an utterance ends up to this much later. bench/rtp_bench
    # measures the same processor time per packet at 20 ms as at 100 ms.
    tick: Annotated[Duration, Range(0.01, 0.5)] = 0.02
    port_quarantine: Duration = 5.0
    # Ports in use when the node last stopped without hanging up (a crash,
    # kill -9; kept in state_dir/media-ports) are not handed out for this
    # long after the next start.
    restart_quarantine: Duration = 300.0
    mixed_role: Role = "customer"
    # Role of an audio stream beyond the first two that replaces none
    # (3-way call, conference, supervisor barge-in).
    extra_stream_role: Role = "agent"
    # New INVITEs that would take the streams in progress past this get 503.
    max_streams: Positive = 1000
    # Latch each stream to the address and port of its first valid packet
    # (with SRTP: its first authenticated one); others are dropped and
    # counted. false: take packets from anyone (not safe).
    latch: bool = True
    # With a host in the SDP: how long a first valid packet from another
    # host waits for one from the SDP's host before it may latch.
    latch_wait: Annotated[Duration, Range(0, 30)] = 1.0
    # A stream whose latched source has been silent this long while another
    # source sends latches to the newcomer. null: never (a re-INVITE or
    # UPDATE naming the new address moves it). See README, "Media sources".
    relatch_after: Optional[Annotated[Duration, Range(1, None)]] = None
    # Take packets only from the host in the SDP (the hint is a rule).
    check_source: bool = False
    # The older name for latch and check_source together.
    strict_source: bool = False
    # SDES-SRTP (RFC 4568): "allowed" takes SRTP when offered and plain RTP
    # when not; "required" answers 488 to an offer without keys; "off"
    # refuses SRTP m-lines.
    srtp: Literal["off", "allowed", "required"] = "allowed"
    # A stream with no RTP for this long (not on hold, not paused) ends.
    rtp_timeout: Annotated[Duration, Range(1, None)] = 60.0

    def validate(self, path):
        if self.port_min % 2:
            raise ConfigError(f"expected an even port, got {self.port_min}", f"{path}.port_min")
        if self.port_max - self.port_min < 3:
            raise ConfigError(
                f"expected a port above port_min + 2 ({self.port_min + 3} or more), "
                f"got {self.port_max}",
                f"{path}.port_max",
            )


@attrs.frozen
class RemoteAsr:
    urls: list[Annotated[str, Pattern(r"wss?://\S+", "a ws:// or wss:// URL")]] = ()
    connect_timeout: Duration = 5.0


@attrs.frozen
class AsrCapacity:
    """How many streams the recognisers keep in real time
    (siprecd.transcribe.admission)."""

    # Refuse a start-streaming (500-201) that would take them past it.
    enabled: bool = True
    # Processors recognition may use (null: those this process may run on;
    # never more than asr.threads).
    cpus: Optional[Annotated[float, Range(0.1, None)]] = None
    # The share of them admitted streams may use; the rest takes bursts.
    target_load: Annotated[float, Range(0.05, 1.0)] = 0.85
    # Processor seconds per second of audio (null: a start-up probe per
    # language); learnt from every call either way.
    cost: Optional[Annotated[float, Range(0.001, None)]] = None
    probe: bool = True
    # Behind real time by more than this: logged, and no new streams.
    max_lag: Annotated[Duration, Range(0.1, 60)] = 1.0
    # What a start counts for, in times its cost, while another stream is
    # in its first ten seconds (a new stream counts 2 anyway): room for the
    # first utterances of calls that start together.
    burst_factor: Annotated[float, Range(2.0, 10.0)] = 3.0


@attrs.frozen
class Asr:
    backend: Annotated[str, NonEmpty()] = "vosk"
    threads: Annotated[int, Range(1, 256)] = 2
    # Warm recognisers kept per language for the next stream (vosk).
    spare_recognizers: Annotated[int, Range(0, 1000)] = 4
    # Make the spares at start, and replace each one a stream takes, by
    # giving new recognisers speech-like sound behind the streams' work.
    warm_spares: bool = True
    # Folder holding models by name; relative paths are under state_dir.
    models_dir: StatePath = Path("models")
    # language -> model folder name (in models_dir) or path.
    models: dict[str, Annotated[str, NonEmpty()]] = attrs.field(
        factory=lambda: {"en-us": "vosk-model-small-en-us-0.15"}
    )
    # Fetch a missing model given by name into models_dir at start, the way
    # Vosk's downloader does (its model list and zip files).
    download: bool = True
    # Where models are fetched from: a folder URL holding model-list.json
    # and <name>.zip (null: Vosk's own, https://alphacephei.com/vosk/models/).
    download_url: Optional[Annotated[str, Pattern(r"https?://\S+", "an http(s):// URL")]] = None
    # The highest sample rate recognisers are fed at: narrower audio is fed
    # at its own rate, wider (Opus, 48 kHz) is resampled down to this.
    sample_rate: Literal[8000, 16000, 48000] = 16000
    endpoint_silence: Annotated[Duration, Range(0.1, 10)] = 0.25
    max_utterance: Annotated[Duration, Range(1, 300)] = 30.0
    # How long stop-streaming waits for the speech it let through to be
    # recognised and stored before it answers; what is still queued then
    # is transcribed and delivered after the answer all the same.
    stop_wait: Annotated[Duration, Range(0, 300)] = 5.0
    format_numbers: bool = True
    # Word times in interim results (live output) from the local Vosk
    # backend; they make its first partial of an utterance come later.
    partial_word_times: bool = False
    capacity: AsrCapacity = AsrCapacity()
    remote: RemoteAsr = RemoteAsr()


@attrs.frozen
class SqliteStorage:
    path: StatePath = Path("siprecd.sqlite")


@attrs.frozen
class PostgresStorage:
    dsn: Optional[str] = _secret()
    pool_min: Positive = 1
    pool_max: Positive = 10


@attrs.frozen
class StorageEncryption:
    """Keys that encrypt unredacted text and recordings at rest (siprecd.crypto).

    Keys, in order, the first one encrypting: key_env's, key_file, key_files."""

    key_file: Optional[FilePath] = None
    key_files: list[FilePath] = ()
    # Name of an environment variable holding a key (not the key itself).
    key_env: Optional[Annotated[str, Pattern(r"[A-Za-z_][A-Za-z0-9_]*",
                                             "an environment variable name")]] = None

    @property
    def configured(self):
        return bool(self.key_file or self.key_files or self.key_env)


@attrs.frozen
class Storage:
    backend: Annotated[str, NonEmpty()] = "sqlite"
    sqlite: SqliteStorage = SqliteStorage()
    postgresql: PostgresStorage = PostgresStorage()
    encryption: StorageEncryption = StorageEncryption()

    def validate(self, path):
        if self.backend == "postgresql" and not self.postgresql.dsn:
            raise ConfigError(
                "expected a DSN when storage.backend is postgresql", f"{path}.postgresql.dsn"
            )


@attrs.frozen
class RateLimit:
    requests_per_second: Annotated[float, Range(0.1, None)] = 50.0
    burst: Positive = 100


@attrs.frozen
class Api:
    enabled: bool = True
    host: Host = "0.0.0.0"
    port: Port = 8443
    # PEM files; when both are absent a self-signed certificate is made
    # in state_dir/tls on first start (for development only).
    certificate: Optional[FilePath] = None
    private_key: Optional[FilePath] = None
    min_tls_version: TlsVersion = "1.2"
    id_header: Annotated[str, NonEmpty()] = "asapp-api-id"
    secret_header: Annotated[str, NonEmpty()] = "asapp-api-secret"
    max_body_size: Annotated[ByteSize, Range(1024, None)] = 64 * 1024
    rate_limit: RateLimit = RateLimit()
    # Apps see and control only the conversations they started.
    app_isolation: bool = True
    # Base URL for links siprecd hands out (signed export URLs).
    public_url: Optional[str] = None
    # /v1/health and /openapi.yaml without credentials (liveness and
    # readiness only), for load balancers and orchestrators' probes.
    public_health: bool = False

    def validate(self, path):
        if (self.certificate is None) != (self.private_key is None):
            missing = "certificate" if self.certificate is None else "private_key"
            raise ConfigError(
                "expected both certificate and private_key, or neither", f"{path}.{missing}"
            )


@attrs.frozen
class Live:
    """Live transcripts over a WebSocket on the API (siprecd.live)."""

    enabled: bool = True
    # Seconds of audio between two interim results of a stream, at most.
    partial_interval: Annotated[Duration, Range(0.05, 10)] = 0.2
    max_connections: Annotated[int, Range(1, 100000)] = 500
    max_connections_per_app: Annotated[int, Range(1, 100000)] = 100
    # A client's queue while it does not read; past either bound it is cut off.
    queue_events: Annotated[int, Range(10, 1000000)] = 1000
    queue_bytes: Annotated[ByteSize, Range(64 * 1024, None)] = 1024 * 1024
    # A connection that does not answer a ping within this long is dropped.
    ping_interval: Annotated[Duration, Range(1, 3600)] = 30.0


@attrs.frozen
class AutoStart:
    """Transcription started by the node when a session is answered, as if
    ``app_id`` had called start-streaming with these parameters."""

    enabled: bool = False
    app_id: Optional[str] = None
    # {customer_aor} / {agent_aor}: the AOR the metadata gives the sender of
    # that role's stream ("customer" / "agent" when it names none); {guid}.
    customer_id: Annotated[str, NonEmpty()] = "{customer_aor}"
    agent_id: Annotated[str, NonEmpty()] = "{agent_aor}"
    language: Annotated[str, NonEmpty()] = "en-US"
    detailed_token: bool = False
    audio_recording_allowed: bool = False
    redaction_output: Literal["redacted", "unredacted", "redacted_and_unredacted"] = "redacted"
    media_line_order: Literal["CUSTOMER_FIRST", "AGENT_FIRST"] = "CUSTOMER_FIRST"

    def validate(self, path):
        if self.enabled and not self.app_id:
            raise ConfigError("auto_start needs the app it starts transcription for "
                              "(an api id from `siprecd apps create`)", f"{path}.app_id")
        for key in ("customer_id", "agent_id"):
            try:
                getattr(self, key).format(customer_aor="", agent_aor="", guid="")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"expected text with {{customer_aor}}, {{agent_aor}} or "
                                  f"{{guid}} in it, got {getattr(self, key)!r} ({e})",
                                  f"{path}.{key}") from None


@attrs.frozen
class OAuth2:
    token_url: Annotated[str, Pattern(r"https://\S+", "an https:// URL")]
    client_id: Annotated[str, NonEmpty()]
    client_secret: str = attrs.field(repr=False)
    scope: Optional[str] = None
    client_auth: Literal["basic", "body"] = "basic"


@attrs.frozen
class SecretToken:
    value: str = attrs.field(repr=False)
    header: Optional[Annotated[str, NonEmpty()]] = None
    query_parameter: Optional[Annotated[str, NonEmpty()]] = None

    def validate(self, path):
        if (self.header is None) == (self.query_parameter is None):
            raise ConfigError("expected exactly one of header or query_parameter", path)


@attrs.frozen
class WebhookTarget:
    url: Annotated[str, Pattern(r"https://\S+", "an https:// URL")]
    timeout: Annotated[Duration, Range(0.1, 300)] = 10.0
    ca_bundle: Optional[FilePath] = None
    client_certificate: Optional[FilePath] = None
    client_key: Optional[FilePath] = None
    secret: Optional[SecretToken] = None
    oauth2: Optional[OAuth2] = None
    # Standard Webhooks signing secret ("whsec_..."), optional.
    signing_secret: Optional[str] = _secret()
    # Interim results too (type transcript-partial): best effort, never
    # retried, at most one per partial_interval per stream.
    partials: bool = False
    partial_interval: Annotated[Duration, Range(0.1, 60)] = 1.0

    def validate(self, path):
        if (self.client_certificate is None) != (self.client_key is None):
            raise ConfigError(
                "expected both client_certificate and client_key, or neither", path
            )
        if self.signing_secret is not None:
            import base64
            import binascii

            raw = self.signing_secret.removeprefix("whsec_")
            try:
                key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) < 16:
                # The value itself is never shown: it is a secret.
                raise ConfigError(
                    "expected a Standard Webhooks secret: 'whsec_' and at least 16 bytes "
                    "in base64", f"{path}.signing_secret",
                )


@attrs.frozen
class Webhooks:
    targets: dict[str, WebhookTarget] = attrs.field(factory=dict)
    concurrency: Annotated[int, Range(1, 1000)] = 20
    max_attempts: Annotated[int, Range(1, 1000)] = 50
    backoff_initial: Annotated[Duration, Range(0.01, None)] = 1.0
    backoff_max: Annotated[Duration, Range(0.1, None)] = 300.0
    # How often the outbox is looked at for due rows (retries, rows of
    # other nodes, anything notify() missed); new utterances go at once.
    poll_interval: Annotated[Duration, Range(0.05, 3600)] = 2.0
    # A target disabled by 410 Gone parks its rows; a parked row is looked
    # at again after this long in case the state file was lost.
    disabled_recheck: Annotated[Duration, Range(1, None)] = 3600.0

    def validate(self, path):
        if self.backoff_max < self.backoff_initial:
            raise ConfigError(
                f"expected backoff_max of at least backoff_initial ({self.backoff_initial:g}s)",
                f"{path}.backoff_max",
            )


@attrs.frozen
class Redaction:
    """What siprecd.redact redacts (see siprecd/redact/policy.py for each kind)."""

    # Always on: may be written, but only as true (validate refuses false).
    card_numbers: bool = True
    ssn: bool = True
    nine_digit: bool = True
    short_numerics: bool = True
    ten_digit: bool = True
    phone_numbers: bool = True
    spoken_card_numbers: bool = True
    email: bool = True
    # Longest wait of an utterance ending in a number for the rest of it.
    hold_back: Annotated[Duration, Range(0, 30)] = 3.0
    # Numbers split by at most this pause are read as one number.
    lookback: Annotated[Duration, Range(0, 60)] = 5.0
    # Context words ("card number", "CVV") count this long, and for this
    # many utterances of the call.
    context_window: Annotated[Duration, Range(0, 600)] = 30.0
    context_utterances: Annotated[int, Range(0, 100)] = 4
    # Log unredacted text (debugging only; never in production).
    log_unredacted: bool = False

    def validate(self, path):
        for name in ("card_numbers", "ssn", "nine_digit"):
            if not getattr(self, name):
                raise ConfigError(
                    "expected true: this kind is always redacted and cannot be turned off "
                    "(remove the key or set it to true)",
                    f"{path}.{name}" if path else name,
                )


@attrs.frozen
class Export:
    """The daily utterances feed (siprecd/export)."""

    # Build the previous UTC day every day (the CLI builds on demand anyway).
    enabled: bool = True
    # Daily build time, UTC, for the previous UTC day.
    at: Annotated[str, Pattern(r"([01]\d|2[0-3]):[0-5]\d", "a time HH:MM (UTC)")] = "02:00"
    directory: StatePath = Path("exports")
    formats: Annotated[list[Literal["jsonl", "csv"]], NonEmpty()] = ("jsonl", "csv")
    link_lifetime: Annotated[Duration, Range(1, 7 * 86400)] = 3600.0
    # Key that signs download links; made (0600) on first use. Nodes serving
    # the same export directory must share it.
    link_key_file: StatePath = Path("export-link.key")


@attrs.frozen
class Recordings:
    # Stereo WAV per leg of calls whose start-streaming allowed it.
    directory: StatePath = Path("recordings")


@attrs.frozen
class Retention:
    transcripts: Annotated[Duration, Range(60, None)] = 7 * 86400.0
    purge_interval: Annotated[Duration, Range(1, None)] = 600.0
    batch_size: Annotated[int, Range(1, 100000)] = 500


@attrs.frozen
class Metrics:
    """Prometheus /metrics on a listener of its own (siprecd.metrics)."""

    # Off by default: a second daemon (or a test) on the same host would
    # find the port taken. Plain HTTP unless certificate and private_key
    # are set; keep it on loopback or a scrape-only network.
    enabled: bool = False
    host: Host = "127.0.0.1"
    port: Port = 9464
    certificate: Optional[FilePath] = None
    private_key: Optional[FilePath] = None
    min_tls_version: TlsVersion = "1.2"

    def validate(self, path):
        if (self.certificate is None) != (self.private_key is None):
            missing = "certificate" if self.certificate is None else "private_key"
            raise ConfigError(
                "expected both certificate and private_key, or neither",
                f"{path}.{missing}" if path else missing,
            )


@attrs.frozen
class Logging:
    level: Literal["debug", "info", "warn", "error", "critical"] = "info"
    format: Literal["text", "json"] = "text"
    # "-" is standard output.
    file: str = "-"


@attrs.frozen
class Cluster:
    """Several nodes sharing one PostgreSQL (see README, "Operations")."""

    # Shared by every node of one deployment: forwarded start/stop requests
    # and `siprecd drain` carry it. Required when nodes share a database.
    secret: Optional[str] = _secret()
    # Where the other nodes reach this node's HTTPS API (default:
    # https://<api.host, or the host name for 0.0.0.0>:<api.port>).
    advertise_url: Optional[Annotated[str, Pattern(r"https://\S+", "an https:// URL")]] = None
    # CA bundle that signs the nodes' API certificates (default: the
    # system trust store).
    ca_bundle: Optional[FilePath] = None
    heartbeat_interval: Annotated[Duration, Range(0.1, 60)] = 2.0
    # A node not heard from for this long is dead: its calls are ended.
    dead_after: Annotated[Duration, Range(1, 3600)] = 10.0

    def validate(self, path):
        if self.dead_after < 2 * self.heartbeat_interval:
            raise ConfigError("expected at least twice heartbeat_interval",
                              f"{path}.dead_after" if path else "dead_after")
        if self.secret is not None and len(self.secret) < 16:
            raise ConfigError("expected at least 16 characters",
                              f"{path}.secret" if path else "secret")


@attrs.frozen
class Node:
    # Defaults to the host name; must be unique among nodes sharing a database.
    id: Optional[Annotated[str, Pattern(r"[A-Za-z0-9._-]{1,64}", "1-64 letters, digits, '.', '_' or '-'")]] = None
    # How long SIGTERM waits for in-flight work before stopping anyway.
    shutdown_grace: Annotated[Duration, Range(0, 3600)] = 10.0

    @property
    def name(self):
        return self.id or socket.gethostname()


@attrs.frozen
class Config:
    state_dir: FilePath = Path("/var/lib/siprecd")
    node: Node = Node()
    cluster: Cluster = Cluster()
    sip: Sip = Sip()
    media: Media = Media()
    asr: Asr = Asr()
    storage: Storage = Storage()
    api: Api = Api()
    live: Live = Live()
    auto_start: AutoStart = AutoStart()
    webhooks: Webhooks = Webhooks()
    redaction: Redaction = Redaction()
    export: Export = Export()
    recordings: Recordings = Recordings()
    retention: Retention = Retention()
    logging: Logging = Logging()
    metrics: Metrics = Metrics()
    # Where the file came from, for messages; not a YAML key.
    source: Optional[str] = attrs.field(default=None, init=False, eq=False)

    def in_state_dir(self, path):
        """Resolve a path that the schema defines relative to state_dir."""
        path = Path(path)
        return path if path.is_absolute() else self.state_dir / path


def from_dict(data, base_dir=".", environ=None, source=None):
    """Structure already-parsed YAML data into a Config."""
    context = {"base_dir": base_dir, "environ": os.environ if environ is None else environ}
    config = structure(data, Config, "", context)
    object.__setattr__(config, "source", source)
    return config


def load(path, environ=None):
    """Read and validate the YAML file at *path*."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    data = load_yaml(text, source=str(path))
    return from_dict(data, base_dir=path.resolve().parent, environ=environ, source=str(path))
