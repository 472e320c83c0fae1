"""``siprecd webhooks ...`` run as real subprocesses against the same
SQLite file and state directory as a running WebhookService (the CLI
cannot run in-process: task.react cannot run twice in one process)."""

import json
import os
import sys

import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor, utils

from harness.pki import Authority
from harness.receiver import Reply, WebhookReceiver, add_utterances, seed_streams, until
from siprecd import config as configmod
from siprecd.storage.sqlite import SqliteStorage
from siprecd.webhooks import WebhookService

FAST = {"backoff_initial": "20ms", "backoff_max": "100ms", "poll_interval": "100ms"}


async def siprecd(*args):
    """(exit status, stdout, stderr) of ``siprecd ARGS`` in a subprocess."""
    d = utils.getProcessOutputAndValue(sys.executable, ["-m", "siprecd.cli", *args],
                                       env=dict(os.environ))
    d.addTimeout(60, reactor)
    out, err, code = await d
    return code, out.decode(), err.decode()


@pytest.fixture
def authority(tmp_path):
    return Authority("cli test CA", tmp_path / "pki")


@pytest_twisted.async_yield_fixture
async def setup(tmp_path, authority):
    """A config file, its storage (open) and a receiver; yields a namespace."""
    receiver = WebhookReceiver(reactor, authority).start()
    path = tmp_path / "siprecd.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "node": {"id": "node-a"},
        "webhooks": {"targets": {"crm": {"url": receiver.url(),
                                         "ca_bundle": str(authority.certificate_path)}},
                     **FAST},
    }))
    config = configmod.load(path)
    storage = SqliteStorage(reactor, config.in_state_dir(config.storage.sqlite.path))
    await storage.open()
    service = WebhookService.from_config(config, storage, reactor)

    class Setup:
        pass

    s = Setup()
    s.path, s.config, s.storage, s.receiver, s.service = str(path), config, storage, receiver, \
        service
    yield s
    if service.running:
        await service.stopService()
    await storage.close()
    await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_dead_letters_are_listed_and_replayed_from_the_cli(setup):
    s = setup
    streams = await seed_streams(s.storage, 2)
    refused = streams[0].id
    rejecting = {"on": True}
    s.receiver.behaviour = lambda r: Reply(422, body=b'{"error": "schema"}') \
        if rejecting["on"] and r.json["streamId"] == refused else Reply(200)
    await add_utterances(s.storage, streams, 2, ["crm"])
    await s.service.startService()
    await until(s.service, lambda x: x.stats["dead"] == 2 and x.stats["delivered"] == 2)

    code, out, err = await siprecd("webhooks", "dead-letters", "-c", s.path)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 2 and all("  crm  " in line and "HTTP 422" in line for line in lines)
    code, out, _ = await siprecd("webhooks", "dead-letters", "-c", s.path, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["streamId"], r["sequence"], r["attempts"]) for r in rows] == [
        (refused, 1, 1), (refused, 2, 1)]
    assert rows[0]["lastError"] == 'HTTP 422 Unprocessable Entity: {"error": "schema"}'

    rejecting["on"] = False
    code, out, err = await siprecd("webhooks", "replay", "-c", s.path, str(rows[1]["id"]))
    assert (code, out.strip(), err) == (0, "replayed 1 dead letter", "")
    await s.receiver.wait_for(lambda r: [b.json["sequence"] for b in r.accepted
                                         if b.json["streamId"] == refused] == [2])
    code, out, _ = await siprecd("webhooks", "replay", "-c", s.path, "--target", "crm")
    assert out.strip() == "replayed 1 dead letter"
    await s.receiver.wait_for(lambda r: [b.json["sequence"] for b in r.accepted
                                         if b.json["streamId"] == refused] == [2, 1])
    code, out, _ = await siprecd("webhooks", "dead-letters", "-c", s.path)
    assert out.strip() == "no dead letters"
    replays = [a for a in await s.storage.audit_log() if a.action == "webhook.replayed"]
    assert [a.detail["count"] for a in replays] == [1, 1]

    code, out, err = await siprecd("webhooks", "replay", "-c", s.path, "999")
    assert code == 1 and out == ""
    assert err.strip() == ("siprecd: none of the given ids is a dead letter "
                           "(see `siprecd webhooks dead-letters`)")


@pytest_twisted.ensureDeferred
async def test_a_target_disabled_by_410_is_re_enabled_from_the_cli(setup):
    s = setup
    s.receiver.behaviour = lambda r: Reply(410)
    streams = await seed_streams(s.storage, 3)
    written = await add_utterances(s.storage, streams, 2, ["crm"])
    await s.service.startService()
    await until(s.service, lambda x: x.stats["parked"] == 3)

    code, out, _ = await siprecd("webhooks", "status", "-c", s.path, "--json")
    (row,) = json.loads(out)["targets"]
    # Six deliveries wait (the first of each stream parked, the second behind it).
    assert (row["target"], row["disabled"], row["waiting"], row["parked"],
            row["deadLetters"]) == ("crm", True, 6, 3, 0)
    assert row["reason"].startswith("HTTP 410 Gone from https://127.0.0.1:")
    code, out, _ = await siprecd("webhooks", "status", "-c", s.path)
    assert out.startswith("crm  https://127.0.0.1:") and "DISABLED since" in out

    s.receiver.behaviour = lambda r: Reply(200)
    code, out, err = await siprecd("webhooks", "enable", "-c", s.path, "crm")
    assert (code, err) == (0, "")
    assert out.startswith("enabled webhook target crm; 3 waiting deliveries are due again")
    await s.receiver.wait_for_accepted(6)
    bodies = s.receiver.accepted_json()
    assert sorted(b["messageId"] for b in bodies) == sorted(m.id for m in written)
    for stream in streams:
        assert [b["sequence"] for b in bodies if b["streamId"] == stream.id] == [1, 2]
    assert "crm" not in s.service.disabled_targets
    actions = [a.action for a in await s.storage.audit_log()]
    assert "webhook.target_disabled" in actions and "webhook.target_enabled" in actions

    code, out, _ = await siprecd("webhooks", "enable", "-c", s.path, "crm")
    assert (code, out.strip()) == (0, "webhook target crm is not disabled")
    code, out, err = await siprecd("webhooks", "enable", "-c", s.path, "billing")
    assert (code, out) == (1, "")
    assert err.strip() == "siprecd: no webhook target 'billing' in webhooks.targets (crm)"


@pytest_twisted.ensureDeferred
async def test_cli_errors_are_one_line(tmp_path):
    code, out, err = await siprecd("webhooks", "dead-letters", "-c", str(tmp_path / "nope.yaml"))
    assert code == 78 and out == ""
    assert err.count("\n") == 1 and err.startswith("siprecd: cannot read config file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_dir: %s\nwebhooks:\n  targets:\n    crm: {url: 'http://x'}\n" % tmp_path)
    code, _, err = await siprecd("webhooks", "status", "-c", str(bad))
    assert code == 78
    assert err.strip() == ("siprecd: webhooks.targets.crm.url: expected an https:// URL, "
                           "got 'http://x'")


@pytest_twisted.ensureDeferred
async def test_status_counts_every_delivery_a_failing_target_still_owes(setup):
    # The receiver fails every POST: nothing is dead yet, everything waits
    # (the first of each stream retrying, the rest queued behind it).
    s = setup
    s.receiver.behaviour = lambda r: Reply(503)
    streams = await seed_streams(s.storage, 2)
    await add_utterances(s.storage, streams, 4, ["crm"])
    await s.service.startService()
    await until(s.service, lambda x: x.stats["retries"] >= 4)
    # Stopped (as a node would be, or with the target down for long): the
    # deliveries keep waiting and none is given up on while we look.
    await s.service.stopService()

    code, out, _ = await siprecd("webhooks", "status", "-c", s.path, "--json")
    assert code == 0
    (row,) = json.loads(out)["targets"]
    assert (row["target"], row["disabled"], row["waiting"], row["parked"],
            row["deadLetters"]) == ("crm", False, 8, 0, 0)
    assert row["oldestWaiting"].endswith("Z")
    code, out, _ = await siprecd("webhooks", "status", "-c", s.path)
    assert "  enabled  waiting=8  parked=0  dead=0  oldest waiting since " in out
