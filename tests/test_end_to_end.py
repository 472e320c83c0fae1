"""The first end-to-end slice, as a customer would run it: the daemon as a
subprocess (twistd), an app made with the CLI, a SIPREC call placed by the
simulator (Korean speech from espeak-ng, the real Korean Vosk model),
start-streaming over HTTPS, transcript webhooks received by an mTLS
receiver (custom CA, client certificate, secret header), stop-streaming,
the call hung up, and the same utterances read back with GET messages."""

import numpy as np
import pytest_twisted
from twisted.internet import defer, reactor, threads

from harness.api import ApiClient, create_app
from harness.daemon import Daemon, write_config
from harness.openapi import problems
from harness.pki import Authority
from harness.receiver import WebhookReceiver
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech

SECRET = "e2e-shared-secret"


@pytest_twisted.ensureDeferred
async def test_call_to_webhooks_to_messages(tmp_path):
    ca = Authority("e2e test CA", tmp_path / "pki")
    client = ca.issue_client(common_name="siprecd-e2e", name="siprecd-client")
    receiver = WebhookReceiver(reactor, ca, require_client_certificate=True,
                               require_header=("X-Webhook-Token", SECRET))
    receiver.start()
    path, cfg = write_config(tmp_path, webhooks={"targets": {"crm": {
        "url": receiver.url("/transcripts"),
        "ca_bundle": str(tmp_path / "pki" / "ca.pem"),
        "client_certificate": str(client.certificate_path),
        "client_key": str(client.key_path),
        "secret": {"header": "X-Webhook-Token", "value": SECRET},
    }}})
    daemon = Daemon(path).start()
    placed = None
    try:
        await threads.deferToThread(daemon.wait_ready, 120)
        api_id, secret = await threads.deferToThread(create_app, path, "crm")
        api = ApiClient(cfg["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        api_id, secret)

        answered = defer.Deferred()
        said = korean_speech("안녕하세요 카드 번호를 알려 주세요 감사합니다", tmp_path / "ko.wav")
        # A pause after each sentence, so utterances end (the audio loops).
        speech = np.concatenate([said, np.zeros(12000, dtype=np.int16)])
        placed = place_calls(
            reactor, Target("127.0.0.1", cfg["sip"]["udp"]["port"]),
            [CallSpec(customer=speech, agent=speech[::-1].copy(), duration=30)],
            media_host="127.0.0.1", local_host="127.0.0.1",
            on_call_answered=lambda result: answered.callback(result.guid))
        guid = await answered.addTimeout(30, reactor)

        started = await threads.deferToThread(
            api.start, guid, "cust-77", "agent-9",
            autotranscribeParams={"language": KO_LANGUAGE})
        assert started.status == 200, started.body
        streams = {role: v["streamId"] for role, v in
                   started.body["autotranscribeResponse"].items()}
        # Transcripts arrive while the call goes on.
        began = reactor.seconds()
        await receiver.wait_for_accepted(1, timeout=60)
        print(f"first webhook after {reactor.seconds() - began:.1f} s")
        stopped = await threads.deferToThread(api.stop, guid)
        assert stopped.status == 200, stopped.body
        transcripts = sum(v["summary"]["transcripts"]
                          for v in stopped.body["autotranscribeResponse"].values())
        # Speech the recognisers had not finished with when the stop came is
        # still transcribed after the answer (the summary says "pending").
        pending = any(v["summary"]["pending"]
                      for v in stopped.body["autotranscribeResponse"].values())
        summary = await placed.addTimeout(60, reactor)
        placed = None
        assert summary.calls[0].answered

        messages = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={guid}")).body["items"]
        assert (len(messages) >= transcripts > 0) if pending else (len(messages) == transcripts > 0)
        await receiver.wait_for_accepted(len(messages), timeout=60)
        hooks = [r.json for r in receiver.accepted]
        # Everything stored was delivered once (no failures here, so no retries).
        assert sorted(h["messageId"] for h in hooks) == sorted(m["messageId"] for m in messages)
        by_id = {h["messageId"]: h for h in hooks}
        # Every body is what the published document says a receiver gets.
        for hook in hooks:
            assert not problems("WebhookTranscript", hook), (problems("WebhookTranscript", hook),
                                                             hook)
        for message in messages:
            hook = by_id[message["messageId"]]
            assert hook["type"] == "transcript"
            assert hook["externalConversationId"] == guid
            assert hook["streamId"] == streams[message["sender"]["role"]]
            assert hook["sender"] == message["sender"]
            assert hook["autotranscribeResponse"]["utterance"][0]["text"] == message["text"]
            assert (hook["autotranscribeResponse"]["start"],
                    hook["autotranscribeResponse"]["end"]) == (message["start"], message["end"])
        # In order per stream, as received.
        for stream_id in streams.values():
            sequences = [h["sequence"] for h in hooks if h["streamId"] == stream_id]
            assert sequences == sorted(sequences)
        # Over mutual TLS, with the secret header.
        assert all("siprecd-e2e" in (r.client_subject or "") for r in receiver.accepted)
        assert all(r.headers.get("x-webhook-token") == SECRET for r in receiver.accepted)
        assert not any("Traceback" in line for line in daemon.lines)
    finally:
        await threads.deferToThread(daemon.terminate, 30)
        if placed is not None:
            await placed
        await receiver.stop()
