"""10,000 messages over 100 streams to a flaky receiver: all delivered,
in order per stream, and duplicated only where a timeout forced a retry.

The receiver (real HTTPS on loopback, same reactor) fails 20% of requests
with 5xx, answers 10% after a short delay and 1% only after twice the
sender's timeout: the sender gives up on those although the receiver has
recorded them, so the retry is a duplicate the receiver can see. Every
duplicate must follow a timeout of the sender's for that message, and the
service must have counted it.
"""

import collections
import random
import time

import pytest_twisted
from twisted.internet import reactor

from harness.pki import Authority
from harness.receiver import (
    Reply, WebhookReceiver, add_utterances, seed_streams, until, webhook_config,
)
from siprecd.storage.sqlite import SqliteStorage
from siprecd.webhooks import WebhookService

STREAMS, PER_STREAM = 100, 100
TIMEOUT = 1.0


def flaky(seed=20):
    rng = random.Random(seed)

    def behaviour(received):
        roll = rng.random()
        if roll < 0.20:
            return Reply(rng.choice((500, 502, 503)))
        if roll < 0.21:
            return Reply(200, delay=TIMEOUT * 2)   # too late: the sender retries
        if roll < 0.31:
            return Reply(200, delay=TIMEOUT / 20)  # slow but in time
        return Reply(200)

    return behaviour


@pytest_twisted.ensureDeferred
async def test_ten_thousand_messages_through_a_flaky_receiver(tmp_path):
    authority = Authority("load test CA", tmp_path / "pki")
    receiver = WebhookReceiver(reactor, authority, behaviour=flaky()).start()
    storage = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    await storage.open()
    config = webhook_config(tmp_path / "state", {"crm": {
        "url": receiver.url(), "ca_bundle": str(authority.certificate_path),
        "timeout": f"{TIMEOUT}s"}}, concurrency=100, max_attempts=1000,
        backoff_initial="10ms", backoff_max="100ms", poll_interval="200ms")
    streams = await seed_streams(storage, STREAMS)
    written = await add_utterances(storage, streams, PER_STREAM, ["crm"])
    timed_out = collections.Counter()
    service = WebhookService.from_config(config, storage, reactor)
    service.on_outcome.add(
        lambda item, outcome: outcome is not None and outcome.timed_out
        and timed_out.update([item.message.id]))
    started = time.monotonic()
    try:
        await service.startService()
        await until(service, lambda s: s.stats["delivered"] == STREAMS * PER_STREAM,
                    timeout=120, what="every message delivered")
        elapsed = time.monotonic() - started
    finally:
        await service.stopService()
        await storage.close()
        await receiver.stop()

    accepted = receiver.accepted
    per_message = collections.Counter(r.json["messageId"] for r in accepted)
    assert set(per_message) == {m.id for m in written}

    # Order per stream: first receipts in sequence order; a duplicate only
    # ever repeats the message just before it.
    by_stream = collections.defaultdict(list)
    for r in accepted:
        body = r.json
        by_stream[body["streamId"]].append(body["sequence"])
    for stream in streams:
        seen = by_stream[stream.id]
        assert list(dict.fromkeys(seen)) == list(range(1, PER_STREAM + 1))
        assert seen == sorted(seen)

    # Duplicates: each one follows a timeout of the sender's for that
    # message. The receiver's held answers (2x the timeout) are all such
    # timeouts; on a loaded machine an answer written in time can still
    # reach the sender after its timeout, which is a timeout too (the
    # receiver marks it answered, the sender retries and counts it).
    duplicates = sum(per_message.values()) - len(per_message)
    abandoned = collections.Counter(r.json["messageId"] for r in accepted if r.answered is False)
    for message_id, count in per_message.items():
        assert count - 1 <= timed_out[message_id], message_id
    for message_id, count in abandoned.items():
        assert per_message[message_id] >= count + 1
        assert timed_out[message_id] >= count
    assert sum(abandoned.values()) <= duplicates
    # And the sender counted every timeout as a possible duplicate.
    assert duplicates <= service.stats["possible_duplicates"] == sum(timed_out.values())
    assert duplicates > 20  # the test did exercise the case
    failed = sum(1 for r in receiver.received if r.status >= 500)
    assert failed > 0.15 * len(receiver.received)
    assert service.stats["dead"] == 0
    print(f"\n{STREAMS * PER_STREAM} messages delivered in {elapsed:.1f}s "
          f"({STREAMS * PER_STREAM / elapsed:.0f}/s); {len(receiver.received)} requests, "
          f"{failed} answered 5xx, {service.stats['timeouts']} timed out, "
          f"{duplicates} duplicates seen by the receiver, "
          f"{service.stats['possible_duplicates']} counted as possible by the sender")
