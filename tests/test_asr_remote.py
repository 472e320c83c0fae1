"""The remote backend against real vosk-server protocol servers
(contrib/vosk-server/asr_server.py in subprocesses, the dither-free
Korean model): the protocol itself, words equal to the local backend's,
round-robin, servers that are down, die mid-stream or come up late."""

import json
import socket

import numpy as np
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from harness.asr_server import AsrServerProcess
from siprecd import config as configmod
from siprecd.asr.common import AsrNotReady
from siprecd.asr.remote import EOF, RemoteAsrError, RemoteBackend, backoff_delay
from siprecd.asr.vosk import VoskBackend
from siprecd.structure import ConfigError
from siprecd.testing.asr import feed, ko_model_dir, korean_speech

SILENCE = np.zeros(8000, dtype=np.int16)
WAIT = 60  # seconds: a bound on waits for real events, never a sleep


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    with AsrServerProcess(ko_model_dir(), threads=2) as running:
        yield running


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    first = korean_speech("안녕하세요 저는 학생입니다. 오늘 날씨가 좋네요", folder / "1.wav")
    second = korean_speech("감사합니다 내일 만나요", folder / "2.wav")
    return np.concatenate([SILENCE, first, SILENCE, SILENCE, second, SILENCE])


@pytest_twisted.async_yield_fixture(scope="module")
async def local():
    backend = VoskBackend(reactor, {"ko": str(ko_model_dir())}, "/", threads=2)
    await backend.start()
    yield backend
    await backend.stop()


def remote(*urls, **options):
    options.setdefault("connect_timeout", 5.0)
    options.setdefault("backoff_initial", 0.1)
    options.setdefault("backoff_max", 0.5)
    return RemoteBackend(reactor, list(urls), ["ko"], **options)


def within(d, seconds=WAIT):
    return d.addTimeout(seconds, reactor)


# The protocol, spoken by hand --------------------------------------------------------


class RawClient(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.messages.put((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        self.factory.closed.callback(code)


async def raw_connect(url):
    factory = WebSocketClientFactory(url, reactor=reactor)
    factory.protocol = RawClient
    factory.opened, factory.closed = defer.Deferred(), defer.Deferred()
    factory.messages = defer.DeferredQueue()
    await TCP4ClientEndpoint(reactor, factory.host, factory.port).connect(factory)
    return await within(factory.opened), factory


@pytest_twisted.ensureDeferred
async def test_the_server_speaks_the_vosk_server_protocol(server, speech):
    client, factory = await raw_connect(server.url)
    client.sendMessage(json.dumps({"config": {"sample_rate": 8000, "words": 1}}).encode())
    pcm = speech.astype("<i2").tobytes()
    replies = []
    for i in range(0, len(pcm), 8000):
        client.sendMessage(pcm[i:i + 8000], isBinary=True)
        payload, binary = await within(factory.messages.get())
        assert not binary
        replies.append(json.loads(payload))
    assert all(set(r) == {"partial"} or "text" in r for r in replies)
    assert any(r.get("partial") for r in replies)
    client.sendMessage(EOF.encode())
    payload, _ = await within(factory.messages.get())
    final = json.loads(payload)
    assert EOF == '{"eof" : 1}'
    assert final["text"] and final["result"]
    assert set(final["result"][0]) == {"word", "start", "end", "conf"}
    assert await within(factory.closed) == 1000


@pytest_twisted.ensureDeferred
async def test_the_server_closes_on_a_text_message_it_does_not_know(server):
    client, factory = await raw_connect(server.url)
    client.sendMessage(b'{"hello": 1}')
    assert await within(factory.closed) == 4003


# Equal to the local backend ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [400, 4000])
@pytest_twisted.ensureDeferred
async def test_words_equal_the_local_backends_for_the_same_audio_and_chunks(
        server, local, speech, chunk):
    backend = remote(server.url)
    await backend.start()
    try:
        cut = len(speech) // 2
        got, expected = [], []
        for b, out in ((backend, got), (local, expected)):
            recognizer = b.new_recognizer("ko")
            # A finish() in the middle: the remote side opens a new session.
            out += await feed(recognizer, speech[:cut], chunk=chunk)
            out += await feed(recognizer, speech[cut:], chunk=chunk)
            recognizer.close()
    finally:
        await backend.stop()
    assert [r.text for r in got] == [r.text for r in expected]
    assert len(got) >= 2
    for g, e in zip(got, expected):
        assert [w.word for w in g.words] == [w.word for w in e.words]
        for gw, ew in zip(g.words, e.words):
            assert (gw.start, gw.end, gw.conf) == pytest.approx((ew.start, ew.end, ew.conf),
                                                                abs=1e-3)


# Servers up and down ----------------------------------------------------------------------


def test_configuration(server):
    config = configmod.from_dict({"asr": {
        "backend": "remote", "models": {"en-US": "x"},
        "remote": {"urls": ["ws://a:2700", "wss://b:2700#ES-us"], "connect_timeout": "2s"}}})
    backend = RemoteBackend.from_config(config, reactor)
    assert backend.languages() == ["en-us", "es-us"] and backend.connect_timeout == 2.0
    assert backend.describe() == "connecting to ASR servers: ws://a:2700, wss://b:2700#ES-us"
    assert [backoff_delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


@pytest_twisted.ensureDeferred
async def test_no_servers_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^asr.remote.urls: no vosk-server to connect to"):
        await remote().start()


@pytest_twisted.ensureDeferred
async def test_new_recognizers_go_round_robin_over_the_servers_that_are_up(server, speech):
    with AsrServerProcess(ko_model_dir(), threads=1) as other:
        dead = f"ws://127.0.0.1:{free_port()}"
        backend = remote(server.url, other.url, dead)
        await within(backend.start())
        await within(backend.wait_for_state(server.url, up=True))
        await within(backend.wait_for_state(other.url, up=True))
        await within(backend.wait_for_state(dead, up=False))
        assert dict((url, (up, why)) for url, up, why in backend.servers)[dead] == (
            False, "connection refused")
        used = []
        for _ in range(4):
            recognizer = backend.new_recognizer("ko")
            await recognizer.accept(speech[:1600].tobytes())
            used.append(recognizer.server)
            recognizer.close()
        await backend.stop()
    assert used in ([server.url, other.url] * 2, [other.url, server.url] * 2)


@pytest_twisted.ensureDeferred
async def test_a_server_that_dies_mid_stream_fails_that_call_and_is_retried_with_backoff(speech):
    first = AsrServerProcess(ko_model_dir(), threads=1).start()
    backend = remote(first.url)
    try:
        await within(backend.start())
        recognizer = backend.new_recognizer("ko")
        given = 8000 * 2
        await recognizer.accept(speech[:given].tobytes())
        first.kill()
        with pytest.raises(RemoteAsrError, match=rf"^ASR server {first.url} went away mid-stream"):
            await within(recognizer.accept(speech[given:2 * given].tobytes()))
        await within(backend.wait_for_state(first.url, up=False))
        with pytest.raises(RemoteAsrError, match=rf"^no ASR server for ko is up \({first.url}: "):
            await recognizer.accept(speech[2 * given:3 * given].tobytes())
        # The same server comes back on the same port: the backoff probes find it.
        again = AsrServerProcess(ko_model_dir(), port=first.port, threads=1).start()
        try:
            await within(backend.wait_for_state(first.url, up=True))
            # The recogniser carries on, on a new session, times still on the stream's timeline.
            rest = speech[3 * given:]
            results = await feed(recognizer, rest)
            assert results and results[0].start >= 3 * given / 8000
        finally:
            again.stop()
    finally:
        first.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_start_waits_for_a_server_that_comes_up_later():
    port = free_port()
    backend = remote(f"ws://127.0.0.1:{port}")
    starting = backend.start()
    await within(backend.wait_for_state(f"ws://127.0.0.1:{port}", up=False))
    assert not starting.called and not backend.ready
    with AsrServerProcess(ko_model_dir(), port=port, threads=1):
        await within(starting)
        assert backend.ready
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_before_any_server_answered_ends_start_and_the_probes():
    url = f"ws://127.0.0.1:{free_port()}"
    backend = remote(url)
    starting = backend.start()
    await within(backend.wait_for_state(url, up=False))
    await backend.stop()
    with pytest.raises(AsrNotReady):
        await starting
    assert all(s.retry is None for s in backend._servers)


class Silent(protocol.Protocol):
    """Takes the TCP connection, never answers the WebSocket handshake."""


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_times_out(server):
    factory = protocol.Factory.forProtocol(Silent)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    silent = f"ws://127.0.0.1:{port.getHost().port}"
    backend = remote(silent, server.url, connect_timeout=0.5)
    try:
        await within(backend.start())
        await within(backend.wait_for_state(silent, up=False))
        assert dict((u, why) for u, _, why in backend.servers)[silent] == "no answer within 0.5s"
    finally:
        await backend.stop()
        await port.stopListening()
