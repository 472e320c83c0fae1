"""transcript-partial webhooks to a real HTTPS receiver (TLS on loopback,
a throwaway CA): only to targets that ask for them, latest wins while a
POST is in flight, at most one per interval per stream, never a waiting
partial after its final, no retries."""

import pytest_twisted
from twisted.internet import defer, reactor

from harness.pki import Authority
from harness.receiver import Reply, WebhookReceiver, webhook_config
from siprecd.storage.records import Message
from siprecd.storage.sqlite import SqliteStorage
from siprecd.transcribe.events import CallEvent
from siprecd.transcribe.partials import LivePartial
from siprecd.webhooks import WebhookService
from siprecd.webhooks.partials import PartialWebhooks

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


def partial(revision, target="crm", utterance="u1", stream="s1", text=None):
    return LivePartial(guid="g1", call_id="c1", leg_id="leg-1", stream_id=stream,
                       role="customer", external_id="cust-1", utterance_id=utterance,
                       revision=revision, start_ms=100, end_ms=900,
                       text=text or f"words {revision}", created_ms=0, app_id="app-1",
                       webhook_target=target, stream_params={"redactionOutput": "redacted"})


async def setup(tmp_path, receiver, interval=0.2):
    storage = SqliteStorage(reactor, tmp_path / "siprecd.sqlite")
    await storage.open()
    ca_bundle = str(tmp_path / "pki" / "ca.pem")
    config = webhook_config(tmp_path / "state", {
        "crm": {"url": receiver.url("/partials"), "ca_bundle": ca_bundle, "partials": True,
                "partial_interval": interval, "signing_secret": SECRET},
        "plain": {"url": receiver.url("/plain"), "ca_bundle": ca_bundle},
    })
    webhooks = WebhookService.from_config(config, storage, reactor)
    partials = PartialWebhooks.from_config(config, webhooks, reactor)
    partials.startService()
    return storage, webhooks, partials


async def teardown(storage, webhooks, partials, receiver):
    await defer.maybeDeferred(partials.stopService)
    for sender in webhooks.senders.values():
        await sender.close()
    await storage.close()
    await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_partials_go_to_targets_that_ask_latest_first(tmp_path):
    ca = Authority("partials CA", tmp_path / "pki")
    receiver = WebhookReceiver(reactor, ca).start()
    # The first answer is slow: partials meanwhile replace one another.
    receiver.script.append(Reply(delay=0.5))
    parts = await setup(tmp_path, receiver)
    _, _, sender = parts
    try:
        assert sender.wants("crm") and not sender.wants("plain")
        sender.partial(partial(1))
        for revision in range(2, 7):
            sender.partial(partial(revision))
        sender.partial(partial(1, target="plain"))
        await receiver.wait_for(lambda r: len(r.accepted) >= 2)
        bodies = receiver.accepted_json()
        assert [b["revision"] for b in bodies] == [1, 6]
        assert all(r.path == "/partials" for r in receiver.received)
        first = bodies[0]
        assert first["type"] == "transcript-partial"
        assert first["utteranceId"] == "u1" and first["streamId"] == "s1"
        assert first["autotranscribeResponse"]["utterance"] == [{"text": "words 1"}]
        # Signed like every webhook, with an id of its own.
        assert receiver.received[0].headers["webhook-id"] == "u1.1"
        assert receiver.received[0].headers["webhook-signature"].startswith("v1,")
        assert sender.stats["replaced"] == 4
        # At most one per interval per stream.
        assert receiver.received[1].at - receiver.received[0].at >= 0.2 - 0.05
    finally:
        await teardown(*parts, receiver)


@pytest_twisted.ensureDeferred
async def test_a_waiting_partial_is_dropped_when_its_final_is_stored(tmp_path):
    ca = Authority("partials CA", tmp_path / "pki")
    receiver = WebhookReceiver(reactor, ca).start()
    receiver.script.append(Reply(delay=0.5))
    parts = await setup(tmp_path, receiver)
    _, _, sender = parts
    try:
        sender.partial(partial(1))
        sender.partial(partial(2))          # waits behind the slow first
        sender.final(Message(id="u1", stream_id="s1", text="final words", start_ms=100,
                             end_ms=900, created_ms=0))
        sender.partial(partial(1, utterance="u2"))
        await receiver.wait_for(lambda r: len(r.accepted) >= 2)
        assert [(b["utteranceId"], b["revision"]) for b in receiver.accepted_json()] == [
            ("u1", 1), ("u2", 1)]
        assert sender.stats["superseded"] == 1
    finally:
        await teardown(*parts, receiver)


@pytest_twisted.ensureDeferred
async def test_failures_are_not_retried_and_an_ended_call_is_forgotten(tmp_path):
    ca = Authority("partials CA", tmp_path / "pki")
    receiver = WebhookReceiver(reactor, ca).start()
    receiver.script.append(Reply(500))
    parts = await setup(tmp_path, receiver, interval=0.1)
    _, _, sender = parts
    try:
        outcomes = defer.DeferredQueue()
        sender.on_outcome.add(lambda p, outcome: outcomes.put((p.revision, outcome.kind)))
        sender.partial(partial(1))
        assert await outcomes.get().addTimeout(15, reactor) == (1, "retry")
        sender.partial(partial(2))
        assert await outcomes.get().addTimeout(15, reactor) == (2, "delivered")
        assert [r.json["revision"] for r in receiver.received] == [1, 2]
        assert sender.stats["failed"] == 1 and sender.stats["delivered"] == 1
        sender.call_event(CallEvent("call-ended", "g1", "c1", 0))
        assert sender._streams == {}
    finally:
        await teardown(*parts, receiver)
