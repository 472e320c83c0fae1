"""WebhookService against real local HTTPS receivers and real storage.

Each test starts its own CA, receiver (TLS on 127.0.0.1) and SQLite file
(PostgreSQL where said); waiting is on what the receiver records or on
the service's own events, with bounded timeouts, never on sleeps.
"""

import email.utils
import itertools
import json
import os
import time

import pytest
import pytest_twisted
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from harness.pki import Authority
from harness.receiver import (
    Reply, WebhookReceiver, add_utterances, seed_streams, until, webhook_config,
)
from siprecd.interfaces import IDrainable
from siprecd.storage.postgresql import PostgresStorage
from siprecd.storage.records import DELIVERED, PENDING
from siprecd.storage.sqlite import SqliteStorage
from siprecd.transcribe.events import CallEvent
from siprecd.webhooks import WebhookService, encode_payload
from siprecd.webhooks.state import TargetStates

SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = {"backoff_initial": "20ms", "backoff_max": "100ms", "poll_interval": "100ms"}


@pytest.fixture
def authority(tmp_path):
    return Authority("webhook test CA", tmp_path / "pki")


@pytest.fixture
def receiver(authority):
    r = WebhookReceiver(reactor, authority).start()
    yield r
    pytest_twisted.blockon(r.stop())


@pytest_twisted.async_yield_fixture
async def storage(tmp_path):
    s = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def target(receiver, authority, **extra):
    return {"url": receiver.url(), "ca_bundle": str(authority.certificate_path),
            "timeout": "5s", **extra}


class Running:
    """Starts services and always stops them (a failing test must not
    leave a poll loop behind)."""

    def __init__(self):
        self.services = []

    def start(self, config, storage, clock=None):
        service = WebhookService.from_config(config, storage, reactor, clock=clock)
        self.services.append(service)
        return service, defer.ensureDeferred(_started(service))

    async def stop_all(self):
        for service in self.services:
            if service.running:
                await service.stopService()


async def _started(service):
    await service.startService()
    return service


@pytest_twisted.async_yield_fixture
async def running():
    r = Running()
    yield r
    await r.stop_all()


async def outbox(storage):
    return await storage._read(lambda tx: tx.rows(
        "SELECT id, state, attempts, next_attempt_ms, last_error FROM outbox ORDER BY id"))


def texts(events):
    return [formatEvent(e) for e in events]


# Basics ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delivers_each_message_once_in_order_with_the_spec_body(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)}, **FAST)
    streams = await seed_streams(storage, 3)
    written = await add_utterances(storage, streams, 4, ["crm"])
    service, started = running.start(config, storage)
    verifyObject(IDrainable, service)
    await started
    await receiver.wait_for_accepted(12)

    bodies = receiver.accepted_json()
    assert sorted(b["messageId"] for b in bodies) == sorted(m.id for m in written)
    for stream in streams:
        assert [b["sequence"] for b in bodies if b["streamId"] == stream.id] == [1, 2, 3, 4]
    first = next(b for b in bodies if b["streamId"] == streams[0].id)
    assert first["type"] == "transcript"
    assert first["externalConversationId"] == streams[0].guid
    assert first["sender"] == {"externalId": "cust-0", "role": "customer"}
    assert first["autotranscribeResponse"] == {
        "message": "transcript", "start": 0, "end": 800, "utterance": [{"text": "utterance 0"}]}
    request = receiver.accepted[0]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("siprecd/")
    await until(service, lambda s: s.stats["delivered"] == 12)
    assert {r["state"] for r in await outbox(storage)} == {DELIVERED}


@pytest_twisted.ensureDeferred
async def test_notify_delivers_at_once_without_waiting_for_the_poll(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)},
                            poll_interval="1h")
    (stream,) = await seed_streams(storage, 1)
    service, started = running.start(config, storage)
    await started  # the first poll runs at start, finding nothing
    await add_utterances(storage, [stream], 1, ["crm"])
    assert receiver.received == []
    service.notify(None)
    await receiver.wait_for_accepted(1, timeout=5)


@pytest_twisted.ensureDeferred
async def test_header_secret_and_standard_webhooks_signature_over_the_exact_bytes(
        tmp_path, storage, authority, running):
    receiver = WebhookReceiver(reactor, authority, require_header=("X-Hook-Token", "s3cr3t"))
    receiver.start()
    try:
        config = webhook_config(tmp_path / "state", {"crm": target(
            receiver, authority, secret={"header": "X-Hook-Token", "value": "s3cr3t"},
            signing_secret=SIGNING_SECRET)}, **FAST)
        streams = await seed_streams(storage, 1)
        (message,) = await add_utterances(storage, streams, 1, ["crm"])
        _, started = running.start(config, storage)
        await started
        await receiver.wait_for_accepted(1)
    finally:
        await receiver.stop()
    request = receiver.accepted[0]
    assert request.headers["x-hook-token"] == "s3cr3t"
    assert request.headers["webhook-id"] == message.id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    verified = Webhook(SIGNING_SECRET).verify(request.body, request.headers)
    assert verified["messageId"] == message.id
    # Exactly the bytes encode_payload makes from the stored message.
    stored = (await storage.messages_for_guid(streams[0].guid))[0]
    assert request.body == encode_payload(stored)
    with pytest.raises(WebhookVerificationError):
        Webhook(SIGNING_SECRET).verify(request.body + b" ", request.headers)


@pytest_twisted.ensureDeferred
async def test_query_secret_is_sent_but_never_logged(tmp_path, storage, authority, running,
                                                     logged):
    receiver = WebhookReceiver(reactor, authority, require_query=("key", "q-s3cr3t&x"))
    receiver.start()
    receiver.script = [Reply(503)]
    try:
        config = webhook_config(tmp_path / "state", {"crm": target(
            receiver, authority, secret={"query_parameter": "key", "value": "q-s3cr3t&x"})},
            **FAST)
        streams = await seed_streams(storage, 1)
        await add_utterances(storage, streams, 1, ["crm"])
        _, started = running.start(config, storage)
        await started
        await receiver.wait_for_accepted(1)
    finally:
        await receiver.stop()
    assert [r.query.get("key") for r in receiver.received] == [["q-s3cr3t&x"]] * 2
    lines = "\n".join(texts(logged))
    assert "key=***" in lines  # the target's URL is logged, scrubbed
    assert "s3cr3t" not in lines
    assert "s3cr3t" not in json.dumps([r["last_error"] for r in await outbox(storage)])


# Failures and retries -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_5xx_and_a_refused_connection_are_retried_until_the_receiver_recovers(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)}, **FAST)
    receiver.script = [Reply(500), Reply(502, body=b"upstream down"), Reply(503)]
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 3, ["crm"])
    service, started = running.start(config, storage)
    outcomes = []
    service.on_outcome.add(lambda item, outcome: outcomes.append(
        (item.message.sequence, outcome.kind, outcome.status)))
    await started
    await receiver.wait_for_accepted(3)
    assert [r.json["sequence"] for r in receiver.received] == [1, 1, 1, 1, 2, 3]
    assert outcomes[:4] == [(1, "retry", 500), (1, "retry", 502), (1, "retry", 503),
                            (1, "delivered", 200)]
    await until(service, lambda s: s.stats["delivered"] == 3)
    assert service.stats["retries"] == 3 and service.stats["possible_duplicates"] == 0


@pytest_twisted.ensureDeferred
async def test_retry_after_in_seconds_and_as_a_date_is_honoured(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)},
                            backoff_initial="1s", backoff_max="2s", poll_interval="1h")
    http_date = email.utils.formatdate(time.time() + 120, usegmt=True)
    receiver.script = [Reply(429, {"Retry-After": "30"}), Reply(503, {"Retry-After": http_date})]
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 1, ["crm"])
    clock = task.Clock()  # timers and storage times; the network runs in real time
    clock.advance(time.time() + 1)
    service, started = running.start(config, storage, clock=clock)
    seen = []
    service.on_outcome.add(lambda item, outcome: seen.append(outcome))
    await started
    start_ms = int(clock.seconds() * 1000)

    await until(service, lambda s: s.stats["retries"] == 1)
    (row,) = await outbox(storage)
    assert (row["state"], row["next_attempt_ms"]) == (PENDING, start_ms + 30_000)
    assert row["last_error"].startswith("HTTP 429")
    clock.advance(29.9)
    assert len(receiver.received) == 1  # not before Retry-After
    clock.advance(0.2)
    await until(service, lambda s: s.stats["retries"] == 2)
    (row,) = await outbox(storage)
    waited = (row["next_attempt_ms"] - int(clock.seconds() * 1000)) / 1000
    assert 110 <= waited <= 121, waited
    clock.advance(waited + 0.1)
    await receiver.wait_for_accepted(1)
    await until(service, lambda s: s.stats["delivered"] == 1)


@pytest_twisted.ensureDeferred
async def test_a_permanent_4xx_dead_letters_at_once_and_the_stream_moves_on(
        tmp_path, storage, receiver, authority, running, logged):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)}, **FAST)
    receiver.script = [Reply(422, body=b'{"error": "bad field"}')]
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 2, ["crm"])
    service, started = running.start(config, storage)
    await started
    await receiver.wait_for_accepted(1)
    assert [r.json["sequence"] for r in receiver.received] == [1, 2]
    (dead,) = await storage.dead_letters()
    assert (dead.message.sequence, dead.attempts) == (1, 1)
    assert dead.last_error == 'HTTP 422 Unprocessable Entity: {"error": "bad field"}'
    assert any("dead-lettered" in t for t in texts(logged))


@pytest_twisted.ensureDeferred
async def test_after_max_attempts_a_message_is_dead_lettered(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)},
                            max_attempts=3, **FAST)
    receiver.behaviour = lambda r: Reply(500)
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 1, ["crm"])
    service, started = running.start(config, storage)
    await started
    await until(service, lambda s: s.stats["dead"] == 1)
    assert len(receiver.received) == 3
    (dead,) = await storage.dead_letters(target="crm")
    assert (dead.attempts, dead.last_error) == (3, "HTTP 500 Internal Server Error: "
                                                   '{"ok": true}')


@pytest_twisted.ensureDeferred
async def test_a_timeout_is_retried_and_counted_as_a_possible_duplicate(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority,
                                                                timeout="300ms")}, **FAST)
    receiver.script = [Reply(200, delay=2.0)]
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 2, ["crm"])
    service, started = running.start(config, storage)
    await started
    await receiver.wait_for(lambda r: len(r.accepted) == 3 and r.received[0].answered is False)
    assert [r.json["sequence"] for r in receiver.received] == [1, 1, 2]
    await until(service, lambda s: s.stats["delivered"] == 2)
    assert service.stats["timeouts"] == service.stats["possible_duplicates"] == 1


# 410 Gone ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_410_disables_the_target_until_re_enabled_and_loses_nothing(
        tmp_path, storage, receiver, authority, running, logged):
    state_dir = tmp_path / "state"
    config = webhook_config(state_dir, {"crm": target(receiver, authority),
                                        "other": target(receiver, authority,
                                                        url=receiver.url("/other"))}, **FAST)
    receiver.behaviour = lambda r: Reply(410) if r.path == "/hook" else Reply(200)
    streams = await seed_streams(storage, 3)
    await add_utterances(storage, streams, 2, ["crm", "other"])
    service, started = running.start(config, storage)
    await started
    await until(service, lambda s: s.stats["parked"] == 3)
    await receiver.wait_for(lambda r: len([x for x in r.accepted if x.path == "/other"]) == 6)
    # Only the heads of the three streams were tried; nothing was dead-lettered.
    assert len([r for r in receiver.received if r.path == "/hook"]) <= 3
    assert await storage.dead_letters() == []
    assert "crm" in service.disabled_targets
    assert [t for t in texts(logged) if "answered 410 Gone" in t and "crm" in t][:2] == \
        [t for t in texts(logged) if "answered 410 Gone" in t][:1]
    states = TargetStates(state_dir / "webhook-targets.json")
    assert states.disabled()["crm"]["reason"].startswith("HTTP 410 Gone from https://")
    assert oct(os.stat(states.path).st_mode & 0o777) == "0o600"
    (audit,) = [a for a in await storage.audit_log() if a.action == "webhook.target_disabled"]
    assert audit.detail["target"] == "crm"
    assert len(states.read()["crm"]["parked"]) == 3

    # A new instance (a restart) keeps it disabled.
    await service.stopService()
    service, started = running.start(config, storage)
    await started
    assert "crm" in service.disabled_targets
    service.notify()
    # Re-enabled (as the CLI does): the service notices at its next poll.
    receiver.behaviour = lambda r: Reply(200)
    was, parked = states.enable("crm")
    assert was and len(parked) == 3
    now = int(time.time() * 1000)
    for outbox_id in parked:
        await storage.mark_failed(outbox_id, now, "target crm re-enabled")
    await receiver.wait_for(lambda r: len([x for x in r.accepted if x.path == "/hook"]) == 6)
    hook = [r.json for r in receiver.accepted if r.path == "/hook"]
    for stream in streams:
        assert [b["sequence"] for b in hook if b["streamId"] == stream.id] == [1, 2]
    assert "crm" not in service.disabled_targets


@pytest_twisted.ensureDeferred
async def test_streaming_started_opens_the_targets_connection_ahead_of_its_first_utterance(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)},
                            poll_interval="1h")
    (stream,) = await seed_streams(storage, 1)
    service, started = running.start(config, storage)
    await started

    def event(kind, webhook_target="crm"):
        return CallEvent(kind, stream.guid, None, 0, app_id="app", webhook_target=webhook_target)

    # Only streaming-started to a configured target opens one.
    for other in (event("call-started"), event("streaming-stopped"),
                  event("streaming-started", webhook_target=None),
                  event("streaming-started", webhook_target="gone")):
        service.call_event(other)
    assert service.stats["opened_ahead"] == 0
    service.call_event(event("streaming-started"))
    await receiver.wait_for(lambda r: r.connections_made == 1, timeout=5,
                            what="the connection opened ahead")
    assert receiver.received == [] and service.stats["opened_ahead"] == 1
    # The first utterance goes over it.
    await add_utterances(storage, [stream], 1, ["crm"])
    service.notify()
    await receiver.wait_for_accepted(1, timeout=5)
    assert receiver.connections_made == 1
    # A node that is stopping opens nothing.
    service.stop_accepting()
    service.call_event(event("streaming-started"))
    assert service.stats["opened_ahead"] == 1


# Restart and shutdown ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_receiver_down_across_a_daemon_restart_gets_everything_once_in_order(
        tmp_path, authority, running):
    path = tmp_path / "state" / "siprecd.sqlite"
    receiver = WebhookReceiver(reactor, authority).start()
    port = receiver.port_number
    await receiver.stop()  # down from the start
    config = webhook_config(tmp_path / "state", {"crm": {
        "url": f"https://127.0.0.1:{port}/hook", "ca_bundle": str(authority.certificate_path),
        "timeout": "2s"}}, **FAST)

    first = SqliteStorage(reactor, path)
    await first.open()
    streams = await seed_streams(first, 4)
    written = await add_utterances(first, streams, 5, ["crm"])
    service, started = running.start(config, first)
    await started
    await until(service, lambda s: s.stats["retries"] >= 8)
    errors = [r["last_error"] for r in await outbox(first) if r["attempts"]]
    assert len(errors) == 4  # only each stream's head was tried
    assert {e for e in errors if e} == {"connection refused"}
    await service.stopService()
    assert service.in_flight == 0
    await first.close()

    receiver.start(port)  # same port
    try:
        second = SqliteStorage(reactor, path)
        await second.open()
        service, started = running.start(config, second)
        await started
        await receiver.wait_for_accepted(20)
        await until(service, lambda s: s.stats["delivered"] == 20)
        await service.stopService()
        assert {r["state"] for r in await outbox(second)} == {DELIVERED}
        await second.close()
    finally:
        await receiver.stop()
    bodies = receiver.accepted_json()
    assert sorted(b["messageId"] for b in bodies) == sorted(m.id for m in written)
    for stream in streams:
        assert [b["sequence"] for b in bodies if b["streamId"] == stream.id] == [1, 2, 3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_drain_lets_a_delivery_in_flight_finish_and_stop_releases_the_rest(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)}, **FAST)
    receiver.script = [Reply(200, delay=0.3)]
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 3, ["crm"])
    service, started = running.start(config, storage)
    await started
    await receiver.wait_for(lambda r: len(r.received) == 1)
    assert service.in_flight == 1
    service.stop_accepting()
    await service.drain()
    assert receiver.received[0].answered is True
    assert service.stats["delivered"] == 1
    await service.stopService()
    rows = await outbox(storage)
    assert [r["state"] for r in rows] == [DELIVERED, PENDING, PENDING]
    assert len(receiver.received) == 1


@pytest_twisted.ensureDeferred
async def test_stopping_cuts_a_hanging_request_and_the_row_is_due_again(
        tmp_path, storage, receiver, authority, running):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)}, **FAST)
    receiver.script = [Reply(200, delay=60)]
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 1, ["crm"])
    service, started = running.start(config, storage)
    await started
    await receiver.wait_for(lambda r: len(r.received) == 1)
    await service.stopService()
    assert service.stats["interrupted"] == 1
    (row,) = await outbox(storage)
    assert row["state"] == PENDING
    await receiver.wait_for(lambda r: r.received[0].answered is False, timeout=5)


@pytest_twisted.ensureDeferred
async def test_rows_of_a_target_no_longer_configured_are_dead_lettered(
        tmp_path, storage, receiver, authority, running, logged):
    config = webhook_config(tmp_path / "state", {"crm": target(receiver, authority)}, **FAST)
    streams = await seed_streams(storage, 1)
    await add_utterances(storage, streams, 2, ["gone-target", "crm"])
    service, started = running.start(config, storage)
    await started
    await receiver.wait_for_accepted(2)
    await until(service, lambda s: s.stats["dead"] == 2)
    dead = await storage.dead_letters(target="gone-target")
    assert [d.message.sequence for d in dead] == [1, 2]
    assert dead[0].last_error == "no webhook target 'gone-target' configured"
    assert len([t for t in texts(logged) if "not in webhooks.targets" in t]) == 1


# PostgreSQL ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delivery_from_postgresql_with_two_nodes_keeps_order_and_delivers_once(
        tmp_path, postgres_schema, authority, running):
    receiver = WebhookReceiver(reactor, authority).start()
    calls = itertools.count(1)
    receiver.behaviour = lambda r: Reply(503) if next(calls) % 5 == 0 else Reply(200)
    stores = []
    try:
        for _ in range(2):
            s = PostgresStorage(reactor, postgres_schema, pool_min=1, pool_max=4)
            await s.open()
            stores.append(s)
        streams = await seed_streams(stores[0], 6)
        written = await add_utterances(stores[0], streams, 5, ["crm"])
        services = []
        for n, s in enumerate(stores):
            config = webhook_config(tmp_path / f"state-{n}",
                                    {"crm": target(receiver, authority)},
                                    node=f"node-{n}", concurrency=3, **FAST)
            service, started = running.start(config, s)
            await started
            services.append(service)
        await receiver.wait_for_accepted(30)
        await until(services, lambda all_: sum(x.stats["delivered"] for x in all_) == 30)
        assert all(s.stats["delivered"] > 0 for s in services), "both nodes took part"
    finally:
        await running.stop_all()
        for s in stores:
            await s.close()
        await receiver.stop()
    bodies = receiver.accepted_json()
    assert sorted(b["messageId"] for b in bodies) == sorted(m.id for m in written)
    for stream in streams:
        assert [b["sequence"] for b in bodies if b["streamId"] == stream.id] == [1, 2, 3, 4, 5]
