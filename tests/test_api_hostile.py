"""The HTTPS API against hostile and unlucky clients: many wrong secrets at
once from one address, bodies over api.max_body_size (declared with
``Expect: 100-continue``, declared without it, chunked), and a storage
outage (health, error messages).

The API runs in this process on real TLS over loopback with real SQLite
storage; the clients are raw sockets (to see exactly what is sent and
when) and the harness's blocking client, from threads.
"""

import json
import socket
import ssl
import time

import pytest_twisted
from twisted.internet import defer, reactor, threads

from harness.api import ApiClient
from siprecd import tls
from siprecd.api import app as appmod
from siprecd.api.app import ControlApi
from siprecd.api.http import make_site
from siprecd.interfaces import StorageUnavailable
from siprecd.service import Readiness
from siprecd.storage import sql as sqlmod
from siprecd.storage.sqlite import SqliteStorage

MAX_BODY = 64 * 1024


class Api:
    """ControlApi on a real TLS port with real SQLite and one app."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.storage = SqliteStorage(reactor, tmp_path / "siprecd.sqlite")
        self.readiness = Readiness()

    async def start(self):
        await self.storage.open()
        app, self.secret = await self.storage.create_app(None, label="test")
        self.api_id = app.api_id
        self.api = ControlApi(self.storage, None, self.readiness, reactor, "node-1")
        cert, key, _ = tls.ensure_self_signed(self.tmp_path / "tls")
        self.cert = cert
        site = make_site(self.api.resource(), MAX_BODY)
        self.port = reactor.listenSSL(0, site, tls.server_options(cert, key),
                                      interface="127.0.0.1")
        self.number = self.port.getHost().port
        return self

    def client(self, secret=None):
        return ApiClient(self.number, self.cert, self.api_id,
                         self.secret if secret is None else secret)

    async def stop(self):
        await self.port.stopListening()
        await self.storage.close()


def tls_socket(port):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw)


def read_response(sock, timeout=10.0):
    """Status line, headers (lower-case) and body of one response; the
    body by its content-length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a full response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0], headers, body


def closed_by_server(sock, timeout=10.0):
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True
    except TimeoutError:
        return False


# -- failed authentications ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_wrong_secrets_cost_at_most_the_budget_in_hashes(tmp_path, monkeypatch):
    """300 requests with wrong secrets sent at once from one address:
    secret checks (scrypt) are counted as they start, so at most the
    failure budget (20, plus 2 a second) is hashed; the rest get 429."""
    hashes = []
    real = sqlmod.check_secret

    def counted(secret, stored):
        hashes.append(time.monotonic())
        return real(secret, stored)

    monkeypatch.setattr(sqlmod, "check_secret", counted)
    api = await Api(tmp_path).start()
    pool = reactor.getThreadPool()
    size = (pool.min, pool.max)
    pool.adjustPoolsize(maxthreads=100)   # the clients' requests really are concurrent
    try:
        started = time.monotonic()
        clients = [api.client(secret=f"wrong-{i}") for i in range(300)]
        answers = await defer.gatherResults(
            [threads.deferToThread(c.get, "/v1/health") for c in clients], consumeErrors=True)
        took = time.monotonic() - started
        statuses = sorted({a.status for a in answers})
        budget = appmod.AUTH_FAILURE_BURST + appmod.AUTH_FAILURE_RATE * took
        print(f"\n300 concurrent wrong secrets from one address in {took:.1f}s: "
              f"{len(hashes)} scrypt verifications (budget {budget:.0f}); answers "
              f"{ {s: sum(a.status == s for a in answers) for s in statuses} }")
        assert statuses == [401, 429]
        assert len(hashes) <= budget
    finally:
        pool.adjustPoolsize(*size)
        await api.stop()


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_with_the_same_credentials_hash_once(tmp_path, monkeypatch):
    hashes = []
    real = sqlmod.check_secret
    monkeypatch.setattr(sqlmod, "check_secret", lambda s, h: hashes.append(1) or real(s, h))
    api = await Api(tmp_path).start()
    try:
        client = api.client()
        answers = await defer.gatherResults(
            [threads.deferToThread(client.get, "/v1/health") for _ in range(40)])
        assert {a.status for a in answers} == {200}
        assert len(hashes) <= 10   # one per verification in flight, then the cache
        assert api.api.auth_failures.peek("127.0.0.1") == 0.0   # successes cost nothing
    finally:
        await api.stop()


# -- bodies over the limit ---------------------------------------------------------------


def _post_head(api, length, extra=""):
    return (f"POST /mg-autotranscribe/v1/start-streaming HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"asapp-api-id: {api.api_id}\r\nasapp-api-secret: {api.secret}\r\n"
            f"content-type: application/json\r\n{extra}"
            f"content-length: {length}\r\n\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_expect_continue_with_an_oversized_length_gets_413_without_reading(tmp_path):
    """A 10 MB body announced with Expect: 100-continue: the answer is 413
    from the headers alone (no 100 Continue), then the connection closes;
    the client never has to send a byte of the body."""
    api = await Api(tmp_path).start()
    try:
        def exchange():
            with tls_socket(api.number) as s:
                s.sendall(_post_head(api, 10 * 1024 * 1024, "Expect: 100-continue\r\n"))
                status, headers, body = read_response(s)
                return status, headers, body, closed_by_server(s)

        status, headers, body, closed = await threads.deferToThread(exchange)
        print(f"\n10 MB with Expect: answered {status!r} with 0 body bytes sent; closed: {closed}")
        assert status.startswith("HTTP/1.1 413"), status
        assert json.loads(body)["error"]["code"] == "413-01"
        assert headers["connection"] == "close"
        assert closed
    finally:
        await api.stop()


@pytest_twisted.ensureDeferred
async def test_an_oversized_declared_body_gets_413_before_the_connection_closes(tmp_path):
    """Without Expect, a client that sends its 2 MB body before reading
    still finds the 413 waiting (the body is read and dropped to its end)."""
    api = await Api(tmp_path).start()
    try:
        def exchange():
            with tls_socket(api.number) as s:
                size = 2 * 1024 * 1024
                s.sendall(_post_head(api, size) + b"x" * size)
                return read_response(s)

        status, headers, body = await threads.deferToThread(exchange)
        assert status.startswith("HTTP/1.1 413"), status
        assert json.loads(body)["error"]["code"] == "413-01"
    finally:
        await api.stop()


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_that_grows_too_large_gets_413_at_once(tmp_path):
    api = await Api(tmp_path).start()
    try:
        def exchange():
            with tls_socket(api.number) as s:
                s.sendall(_post_head(api, 0).replace(b"content-length: 0\r\n",
                                                    b"transfer-encoding: chunked\r\n"))
                chunk = b"y" * 16384
                for _ in range(5):   # 80 KiB: past the 64 KiB limit, no end chunk yet
                    s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                answer = read_response(s)
                s.sendall(b"0\r\n\r\n")
                return answer + (closed_by_server(s),)

        status, headers, body, closed = await threads.deferToThread(exchange)
        assert status.startswith("HTTP/1.1 413"), status
        assert json.loads(body)["error"]["code"] == "413-01"
        assert closed
    finally:
        await api.stop()


# -- storage outage ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_reflects_storage_and_errors_name_no_host_or_path(tmp_path, monkeypatch):
    api = await Api(tmp_path).start()
    try:
        client = api.client()
        assert (await threads.deferToThread(client.get, "/v1/health")).status == 200
        location = str(tmp_path / "siprecd.sqlite")

        def down(*args, **kw):
            return defer.fail(StorageUnavailable(
                f"sqlite storage at {location}: disk I/O error (db.example.internal:5432)"))

        monkeypatch.setattr(api.storage, "ping", down)
        monkeypatch.setattr(api.storage, "get_call_by_guid", down)
        api.api.storage_probe._result = None      # the cached check is over
        health = await threads.deferToThread(client.get, "/v1/health")
        assert (health.status, health.code) == (503, "503-01")
        assert health.body["healthCheck"] == "FAILURE" and "storage" in health.body["pending"]
        messages = await threads.deferToThread(
            client.get, "/conversation/v1/conversation/messages?externalId=g1")
        assert (messages.status, messages.code) == (503, "503-01")
        for answer in (health, messages):
            text = json.dumps(answer.body)
            assert location not in text and "example.internal" not in text and "5432" not in text
    finally:
        await api.stop()
