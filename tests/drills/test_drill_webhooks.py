"""Drill: the webhook target's host name does not resolve."""

import collections
import re

import pytest_twisted
import yaml
from twisted.internet import reactor, threads

from harness import drills
from harness.api import ApiClient, create_app
from harness.daemon import write_config

CALL_SECONDS = 6.0
BACKOFF_INITIAL, BACKOFF_MAX = 0.2, 2.0
FAILED = re.compile(r"webhooks: delivering (?P<id>\S+) to crm failed \((?P<error>[^)]*)\); "
                    r"attempt (?P<attempt>\d+) of \d+, next in (?P<delay>[\d.]+)s")


@pytest_twisted.ensureDeferred
async def test_webhook_host_that_does_not_resolve(tmp_path, asr_plugin, authority, receiver):
    """Promise: deliveries to a target whose host name does not resolve
    are retried with exponential backoff (within backoff_initial and
    backoff_max, never faster), each failure is one clear log line, no
    message is dead-lettered or lost, and once the target is fixed (config
    changed, daemon restarted) every stored utterance is delivered, once."""
    path, cfg = write_config(tmp_path, asr={"backend": "drill"}, media=drills.media_ports(),
                             webhooks={
        "targets": {"crm": {"url": "https://nonexistent.invalid/hook"}},
        "backoff_initial": f"{BACKOFF_INITIAL}s", "backoff_max": f"{BACKOFF_MAX}s",
        "poll_interval": "0.5s"})
    daemon = drills.DrillDaemon(path).start()
    placed = None
    try:
        await threads.deferToThread(daemon.wait_ready, 60)
        api_id, secret = await threads.deferToThread(create_app, path, "crm")
        api = ApiClient(cfg["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        api_id, secret)
        guid, placed = await drills.place_call(reactor, cfg["sip"]["tcp"]["port"], CALL_SECONDS)
        started = await threads.deferToThread(api.start, guid, "cust-1", "agent-1")
        assert started.status == 200, started.body
        summary = await placed.addTimeout(CALL_SECONDS + 30, reactor)
        placed = None
        assert summary.ok, summary.format()
        # Retried with backoff while the name does not resolve: wait until
        # some message has failed five times.
        await threads.deferToThread(daemon.wait_for, r"to crm failed .*attempt 5 of", 30)
        items = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={guid}")).body["items"]
        assert items
        status = await threads.deferToThread(
            drills.sip_options, "127.0.0.1", cfg["sip"]["udp"]["port"])
        code, _ = await threads.deferToThread(daemon.terminate, 30)
        assert code == 0 and status == 200
    finally:
        if placed is not None:
            placed.cancel()
        daemon.kill()

    failures = [FAILED.search(line) for line in daemon.lines]
    failures = [m for m in failures if m]
    assert failures
    errors = {m["error"] for m in failures}
    per_message = collections.defaultdict(list)
    for m in failures:
        per_message[m["id"]].append((int(m["attempt"]), float(m["delay"])))
    for attempts in per_message.values():
        assert [a for a, _ in attempts] == list(range(1, len(attempts) + 1))
        for attempt, delay in attempts:
            cap = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** attempt)
            assert BACKOFF_INITIAL <= delay <= cap + 0.01, (attempt, delay)
    start_line = next(line for line in daemon.lines if "webhooks: delivering to" in line)
    assert not any("dead-lettered" in line for line in daemon.lines)

    # The fix: the right URL, and a restart.
    config = yaml.safe_load(path.read_text())
    config["webhooks"]["targets"]["crm"] = {"url": receiver.url("/hook"),
                                            "ca_bundle": str(tmp_path / "pki" / "ca.pem")}
    path.write_text(yaml.safe_dump(config))
    again = drills.DrillDaemon(path).start()
    try:
        await threads.deferToThread(again.wait_ready, 60)
        await receiver.wait_for_accepted(len(items), timeout=30)
        # Nothing more is coming: the outbox is empty once each is marked.
        code, _ = await threads.deferToThread(again.terminate, 30)
        assert code == 0
    finally:
        again.kill()
    delivered = collections.Counter(r.json["messageId"] for r in receiver.accepted)
    assert set(delivered) == {m["messageId"] for m in items}
    duplicates = sum(n - 1 for n in delivered.values())
    for stream in {r.json["streamId"] for r in receiver.accepted}:
        sequences = [r.json["sequence"] for r in receiver.accepted
                     if r.json["streamId"] == stream]
        assert sequences == sorted(sequences)
    most = max(len(a) for a in per_message.values())
    drills.record(
        "webhook host does not resolve (https://nonexistent.invalid/hook), then fixed by a "
        "config change and a restart",
        f"{len(failures)} failed attempts over {len(per_message)} stream heads, each one line "
        f"(e.g. '{failures[0].group(0)}'; "
        f"and at start: '{start_line.split('] ', 1)[-1]}'); "
        f"backoff with jitter within {BACKOFF_INITIAL}-{BACKOFF_MAX} s, never faster (up to "
        f"{most} attempts of one message); none dead-lettered; after the fix all "
        f"{len(items)} stored utterances delivered, in order per stream",
        f"nothing; duplicates: {duplicates}")
    assert duplicates == 0
    assert errors == {"DNS lookup failed: no results for hostname lookup: nonexistent.invalid"}, \
        errors
