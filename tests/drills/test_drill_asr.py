"""Drill: the speech recogniser of one stream breaks in the middle of a call."""

import json
import re

import pytest_twisted
from twisted.internet import defer, reactor, threads

from harness import drills
from harness.api import ApiClient, create_app
from harness.daemon import write_config

CALL_SECONDS = 10.0
FAIL_AFTER = 10      # chunks of 0.2 s: the failure comes about 2 s into the call


@pytest_twisted.ensureDeferred
async def test_asr_backend_raising_mid_stream(tmp_path, asr_plugin, authority, receiver):
    """Promise: when the recogniser of one stream raises in the middle of
    a call, the call goes on to its normal end, the other stream is still
    transcribed to the end, utterances stored before the failure stay, the
    error is logged once with the stream id, and nothing escapes to the
    reactor (no unhandled error, no critical line); the daemon still
    answers OPTIONS and stops cleanly.

    Two calls at once: in the first the customer's recogniser breaks for
    good (its Deferred fails from a worker thread, as a real backend on a
    thread pool does); in the second it raises once, synchronously, and
    then works again (a transient failure: transcription of that stream
    resumes)."""
    env = dict(asr_plugin, **{drills.ASR_ENV: json.dumps({"fail": {
        "0": {"fail_after": FAIL_AFTER, "permanent": True, "mode": "thread"},
        "2": {"fail_after": FAIL_AFTER, "permanent": False, "mode": "raise"},
    }})})
    path, cfg = write_config(tmp_path, asr={"backend": "drill"}, media=drills.media_ports(),
                             webhooks={
        "targets": {"crm": {"url": receiver.url("/hook"),
                            "ca_bundle": str(tmp_path / "pki" / "ca.pem")}}})
    daemon = drills.DrillDaemon(path, env=env).start()
    placed = []
    try:
        await threads.deferToThread(daemon.wait_ready, 60)
        api_id, secret = await threads.deferToThread(create_app, path, "crm")
        api = ApiClient(cfg["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        api_id, secret)
        calls = []
        for _ in ("broken for good", "fails once"):
            guid, done = await drills.place_call(reactor, cfg["sip"]["tcp"]["port"], CALL_SECONDS)
            placed.append(done)
            # One start after the other: recognisers are made in this order.
            started = await threads.deferToThread(api.start, guid, "cust-1", "agent-1")
            assert started.status == 200, started.body
            calls.append((guid, {role: v["streamId"] for role, v
                                 in started.body["autotranscribeResponse"].items()}))

        summaries = await defer.gatherResults(placed).addTimeout(CALL_SECONDS + 30, reactor)
        placed = []
        for summary in summaries:
            (call,) = summary.calls
            assert call.answered and call.bye_status == 200 and not call.problems, \
                summary.format()
        status = await threads.deferToThread(
            drills.sip_options, "127.0.0.1", cfg["sip"]["udp"]["port"])
        assert status == 200

        results = []
        for guid, streams in calls:
            items = (await threads.deferToThread(
                api.get, f"/conversation/v1/conversation/messages?externalId={guid}")
            ).body["items"]
            results.append({role: [m for m in items if m["sender"]["role"] == role]
                            for role in ("customer", "agent")})
        stored = [m for r in results for ms in r.values() for m in ms]
        await receiver.wait_for_accepted(len(stored), timeout=30)
        assert {r.json["messageId"] for r in receiver.accepted} == \
            {m["messageId"] for m in stored}
    finally:
        for d in placed:
            d.cancel()
        code, _ = await threads.deferToThread(daemon.terminate, 30)

    assert code == 0
    unhandled = [line for line in daemon.lines
                 if re.search(r"Unhandled|Traceback|#critical\]", line)]
    logged = [[line for line in daemon.lines
               if "asr failed on stream" in line and streams["customer"] in line]
              for _, streams in calls]
    (broken, transient) = results
    last_agent = [max((m["end"] for m in r["agent"]), default=0) for r in results]
    last_customer = [max((m["end"] for m in r["customer"]), default=0) for r in results]
    drills.record(
        "ASR backend raises mid-stream (customer's recogniser; call A: broken for good, "
        "failing from a worker thread; call B: raises once)",
        f"both calls went on to their own BYE (200); agent streams transcribed to the end "
        f"(last utterance ends at {last_agent[0]} / {last_agent[1]} ms of "
        f"{CALL_SECONDS * 1000:.0f}); customer A: {len(broken['customer'])} utterances "
        f"stored before the failure (last ends at {last_customer[0]} ms), none after; "
        f"customer B: {len(transient['customer'])} utterances, transcribed to the end (last "
        f"ends at {last_customer[1]} ms); error logged {len(logged[0])} / "
        f"{len(logged[1])} time(s), one line with the stream id; no critical line, no "
        f"traceback, no unhandled error; OPTIONS 200; all stored utterances delivered; exit 0",
        "nothing stored was lost; not transcribed: customer A's audio after the failure "
        "(the broken recogniser is kept until the window ends), customer B's failed 0.2 s "
        "chunk")
    assert unhandled == []
    assert [len(x) for x in logged] == [1, 1], logged
    for r, end in zip(results, last_agent):
        assert r["agent"] and end >= (CALL_SECONDS - 2.5) * 1000, r["agent"]
    end_ms = (CALL_SECONDS - 2.5) * 1000
    assert broken["customer"] and last_customer[0] < end_ms - 2000, broken["customer"]
    assert last_customer[1] >= end_ms, transient["customer"]
