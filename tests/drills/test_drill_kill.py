"""Drill: the daemon is killed (SIGKILL) in the middle of a call, and started again."""

import collections
import sqlite3

import pytest_twisted
from twisted.internet import reactor, threads

from harness import drills
from harness.api import ApiClient, create_app
from harness.daemon import write_config
from harness.receiver import Reply

CALL_SECONDS = 30.0
STORED_BEFORE_KILL = 6
STORED = r"utterance \d+ of stream \S+ stored"


def answered(receiver):
    """Requests the receiver took and answered 2xx (a held answer the
    sender gave up on does not count)."""
    return [r for r in receiver.received if r.accepted and r.answered]


def call_row(database, guid):
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute("SELECT state, end_reason FROM calls WHERE guid = ?",
                          (guid,)).fetchone()


def outbox_states(database):
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_call_and_restart(tmp_path, asr_plugin, authority, receiver):
    """Promise: after a SIGKILL in the middle of a transcribed, recorded
    call and a restart, every utterance stored before the kill is there
    unchanged, the call is marked ended ("node restarted"), the webhook
    rows pending or in flight at the kill are delivered after the restart
    (each stored utterance accepted exactly once; one in flight at the
    kill may reach the receiver twice, the first time unanswered), and the
    recording's .part file is finished into a WAV the API lists."""
    path, cfg = write_config(tmp_path, asr={"backend": "drill"}, media=drills.media_ports(),
                             logging={"level": "debug"},
                             webhooks={"targets": {"crm": {
                                 "url": receiver.url("/hook"),
                                 "ca_bundle": str(tmp_path / "pki" / "ca.pem")}},
                                 "backoff_initial": "0.2s", "backoff_max": "1s",
                                 "poll_interval": "0.5s"})
    state = tmp_path / "state"
    database = state / "siprecd.sqlite"
    # Before the kill the receiver takes two requests, then holds every
    # answer: one delivery per stream is in flight, the rest pending.
    receiver.behaviour = lambda r: Reply() if len(receiver.accepted) < 2 else Reply(delay=3600)
    daemon = drills.DrillDaemon(path).start()
    placed = None
    try:
        await threads.deferToThread(daemon.wait_ready, 60)
        api_id, secret = await threads.deferToThread(create_app, path, "crm")
        api = ApiClient(cfg["api"]["port"], state / "tls" / "api-selfsigned.crt", api_id, secret)
        guid, placed = await drills.place_call(reactor, cfg["sip"]["tcp"]["port"], CALL_SECONDS)
        started = await threads.deferToThread(
            api.start, guid, "cust-1", "agent-1",
            autotranscribeParams={"audioRecordingAllowed": True})
        assert started.status == 200, started.body
        await threads.deferToThread(daemon.wait_for_count, STORED, STORED_BEFORE_KILL, 30)
        await receiver.wait_for(lambda r: len(r.received) >= 4, what="held deliveries")
        before = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={guid}")).body["items"]
        parts = list((state / "recordings").glob("*/*.wav.part"))
        assert parts, "no recording in progress"
        daemon.proc.kill()
        daemon.proc.wait(10)
        stored_at_kill = len(daemon.matching(STORED))
        accepted_before = {r.json["messageId"] for r in answered(receiver)}
        held = [r.json["messageId"] for r in receiver.received if not r.answered]
        outbox_at_kill = outbox_states(database)
        # The simulator sees its TCP connection drop and ends the call.
        summary = await placed.addTimeout(30, reactor)
        placed = None
        assert summary.calls[0].answered
    finally:
        if placed is not None:
            placed.cancel()
        daemon.kill()

    receiver.behaviour = lambda r: Reply()
    again = drills.DrillDaemon(path).start()
    try:
        await threads.deferToThread(again.wait_ready, 60)
        after = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={guid}")).body["items"]
        await receiver.wait_for(
            lambda r: {x.json["messageId"] for x in answered(r)} >= {m["messageId"] for m in after},
            timeout=30, what="every stored utterance accepted")
        conversation_id = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversations?externalId={guid}")
        ).body["conversations"][0]["id"]
        # The .part files are finished on a thread at start, which logs
        # nothing when it succeeds: ask the API until it lists them.
        recordings = await drills.api_until(
            api, f"/conversation/v1/conversations/{conversation_id}/recordings",
            lambda body: body["recordings"], timeout=15)
        status = await threads.deferToThread(
            drills.sip_options, "127.0.0.1", cfg["sip"]["udp"]["port"])
        code, _ = await threads.deferToThread(again.terminate, 30)
    finally:
        again.kill()

    assert code == 0 and status == 200
    by_id = {m["messageId"]: m for m in after}
    missing = [m for m in before if by_id.get(m["messageId"]) != m]
    state_after, reason = call_row(database, guid)
    accepted = collections.Counter(r.json["messageId"] for r in answered(receiver))
    received = collections.Counter(r.json["messageId"] for r in receiver.received)
    pending_at_kill = len(after) - len(accepted_before)
    twice = sorted(m for m, n in received.items() if n > 1)
    left_parts = list((state / "recordings").glob("*/*.wav.part"))
    wavs = list((state / "recordings").glob("*/*.wav"))
    ended_line = again.matching(r"ended \d+ calls this node had before it restarted")
    drills.record(
        "SIGKILL mid-call (SQLite, transcribing and recording), then restart",
        f"{len(before)} utterances listed by the API just before the kill ({stored_at_kill} "
        f"logged stored), {len(after)} after the restart, all unchanged; call "
        f"{state_after} ({reason!r}; logged: '{ended_line[0].split('] ', 1)[-1]}'); outbox at "
        f"the kill {outbox_at_kill}: {pending_at_kill} rows undelivered ({len(held)} in flight, "
        f"held by the receiver) "
        f"delivered after the restart; accepted once each ({sum(accepted.values())} accepts for "
        f"{len(accepted)} messages), {len(twice)} received twice (in flight at the kill, first "
        f"never answered); recording: {len(parts)} .part file finished into {len(wavs)} WAV, "
        f"listed by the API ({len(recordings['recordings'])})",
        f"nothing stored; {len(missing)} stored utterances missing; the audio after the kill "
        "(the node was down) and any utterance recognised but not yet committed at the kill")
    assert missing == [] and len(after) >= stored_at_kill
    assert (state_after, reason) == ("ended", "node restarted")
    assert set(accepted) == set(by_id) and max(accepted.values()) == 1
    assert set(held) <= set(twice)
    assert left_parts == [] and len(wavs) == len(parts) >= 1
