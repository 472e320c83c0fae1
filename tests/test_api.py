"""The HTTPS control API through real TLS on loopback, against the daemon's
service tree in this process: a real SIPREC call from the simulator (Korean
speech, the real Korean Vosk model), real SQLite, credentials made with the
``siprecd apps`` CLI. Every error code of SPEC §3 is produced here.

Three spots need a hand inside the tree, each named where it happens:
holding a storage method (GatedStorage) so that a request is still in
progress, or a BYE still being processed, when the next request arrives;
marking the ASR backend not ready (500-201); and a storage method raising
an unexpected exception (500-01).
"""

import json
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from harness.api import ApiClient, create_app
from harness.inprocess import CallWatcher, start_service_tree
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech
from siprecd.testing.doubles import GatedStorage

START = "/mg-autotranscribe/v1/start-streaming"
STOP = "/mg-autotranscribe/v1/stop-streaming"
UUID_LENGTH = 36


def call(client, method, *args, **kwargs):
    """The blocking client, off the reactor thread (the server is in this
    process's reactor)."""
    return threads.deferToThread(getattr(client, method), *args, **kwargs)


async def gather(*ds):
    return await defer.gatherResults(list(ds), consumeErrors=True)


class Tree:
    """The service tree, its config file, two apps and their clients."""

    def __init__(self, root, written, path, tmp_path):
        self.root = root
        self.written = written
        self.path = path
        cert = tmp_path / "state" / "tls" / "api-selfsigned.crt"
        port = written["api"]["port"]
        self.port, self.cert = port, cert
        self.app = ApiClient(port, cert, *create_app(path, label="first"))
        self.other = ApiClient(port, cert, *create_app(path, label="second"))
        self.anonymous = ApiClient(port, cert)


async def start_tree(tmp_path, **sections):
    root, written = await start_service_tree(tmp_path, reactor, **sections)
    return Tree(root, written, tmp_path / "siprecd.yaml", tmp_path)


def place_call(tree, tmp_path, seconds=40):
    speech = korean_speech("안녕하세요 카드 번호를 알려 주세요", tmp_path / "ko.wav")
    target = Target("127.0.0.1", tree.written["sip"]["udp"]["port"])
    return place_calls(reactor, target, [CallSpec(customer=speech, duration=seconds)],
                       media_host="127.0.0.1", local_host="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_every_error_code_and_the_happy_path(tmp_path):
    # A slow refill (5/s; burst 100 as by default), so that 160 requests
    # over TLS exceed the budget however slowly a loaded machine makes them.
    # A stop waits as long as it takes here (asr.stop_wait), so its summary
    # counts every transcript however loaded the machine is.
    tree = await start_tree(tmp_path, api={"rate_limit": {"requests_per_second": 5}},
                            asr={"stop_wait": "300s"})
    watcher = CallWatcher(tree.root)
    placed = None
    try:
        app, other, anonymous = tree.app, tree.other, tree.anonymous

        # -- authentication ---------------------------------------------------------
        answer = await call(anonymous, "get", "/v1/health")
        assert (answer.status, answer.code) == (401, "401-01")
        wrong = ApiClient(tree.port, tree.cert, app.api_id, "not-the-secret")
        answer = await call(wrong, "get", "/v1/health")
        assert (answer.status, answer.code) == (401, "401-01")
        assert str(uuid.UUID(answer.body["error"]["requestId"])) == answer.body["error"]["requestId"]
        answer = await call(app, "get", "/v1/health")
        assert answer.status == 200 and answer.body["healthCheck"] == "SUCCESS"

        # -- generic codes --------------------------------------------------------------
        answer = await call(app, "get", "/no/such/path")
        assert (answer.status, answer.code) == (404, "404-01")
        answer = await call(app, "get", START)
        assert (answer.status, answer.code) == (404, "404-01")
        assert answer.headers["allow"] == "POST"
        big = json.dumps({"namespace": "siprec", "guid": "x" * (70 * 1024)}).encode()
        answer = await call(app, "post", START, raw=big)
        assert (answer.status, answer.code) == (413, "413-01")
        answer = await call(app, "get", "/conversation/v1/conversation/messages")
        assert (answer.status, answer.code) == (400, "400-01")
        answer = await call(app, "get", "/conversation/v1/conversation/messages?externalId="
                            + "g" * 300)
        assert (answer.status, answer.code) == (422, "422-01")
        answer = await call(app, "get", "/conversation/v1/conversations/not-a-uuid")
        assert (answer.status, answer.code) == (422, "422-01")
        answer = await call(app, "get", "/conversation/v1/conversations/%FF")
        assert (answer.status, answer.code) == (400, "400-01")
        answer = await call(app, "get", f"/conversation/v1/conversations/{uuid.uuid4()}")
        assert (answer.status, answer.code) == (404, "404-01")
        tree.root.readiness.wait_for("test", "a stage says it is not ready")
        answer = await call(app, "get", "/v1/health")
        assert (answer.status, answer.code) == (503, "503-01")
        assert answer.body["healthCheck"] == "FAILURE" and answer.body["pending"]
        tree.root.readiness.done("test")

        # -- request checks before any call -------------------------------------------
        bad_bodies = [
            (b"{not json", "400-201"),
            (b"[1, 2]", "400-201"),
            (json.dumps({"guid": "g", "customerId": "c", "agentId": "a"}).encode(), "400-201"),
            (json.dumps({"namespace": "sip-rec", "guid": "g", "customerId": "c",
                         "agentId": "a"}).encode(), "400-201"),
            (json.dumps({"namespace": "twilio", "guid": "g", "customerId": "c",
                         "agentId": "a"}).encode(), "400-202"),
            (json.dumps({"namespace": "siprec", "customerId": "c", "agentId": "a"}).encode(),
             "400-201"),
            (json.dumps({"namespace": "siprec", "guid": "g", "agentId": "a"}).encode(),
             "400-201"),
            (json.dumps({"namespace": "siprec", "guid": 5, "customerId": "c",
                         "agentId": "a"}).encode(), "400-201"),
            (json.dumps({"namespace": "siprec", "guid": "g", "customerId": "c", "agentId": "a",
                         "autotranscribeParams": "yes"}).encode(), "400-201"),
        ]
        for raw, code in bad_bodies:
            answer = await call(app, "post", START, raw=raw)
            assert answer.code == code, (raw, answer.body)
            assert answer.status == 400
        answer = await call(app, "start", "no-such-guid", autotranscribeParams={"language": "ko"})
        assert answer.code == "400-203"
        answer = await call(app, "stop", "no-such-guid")
        assert answer.code == "400-203"

        # -- a real call ----------------------------------------------------------------
        placed = place_call(tree, tmp_path)
        session = await watcher.offered.get()
        guid = session.guid.value
        ko = {"language": KO_LANGUAGE}
        for params, code in (({"language": "xx-YY"}, "400-202"),
                             ({"language": "ko", "redactionOutput": "some"}, "400-202"),
                             ({"language": "ko", "detailedToken": "yes"}, "400-201"),
                             ({"language": "ko", "audioRecordingAllowed": 1}, "400-201")):
            answer = await call(app, "start", guid, autotranscribeParams=params)
            assert answer.code == code, (params, answer.body)
        answer = await call(app, "start", guid, agent="agent-1",
                            siprecParams={"mediaLineOrder": "SIDEWAYS"},
                            autotranscribeParams=ko)
        assert answer.code == "400-201"

        # 500-201: transcription cannot start (speech recognition not ready:
        # the backend's own flag, set as a model reload would).
        tree.root.node.asr.ready = False
        answer = await call(app, "start", guid, autotranscribeParams=ko)
        assert (answer.status, answer.code) == (500, "500-201")
        tree.root.node.asr.ready = True

        started = await call(app, "start", guid, agent="agent-1",
                             autotranscribeParams=dict(ko, detailedToken=True))
        assert started.status == 200, started.body
        assert started.body["isOk"] is True
        first = started.body["autotranscribeResponse"]
        assert set(first) == {"customer", "agent"}
        for role in first.values():
            assert role["status"] == {"code": 1000, "description": "OK"}
            assert len(role["streamId"]) == UUID_LENGTH
        # Additive, beside it: every stream, with its role, label and session.
        assert [(s["role"], s["streamId"]) for s in started.body["streams"]] == [
            ("customer", first["customer"]["streamId"]), ("agent", first["agent"]["streamId"])]

        answer = await call(app, "start", guid, autotranscribeParams=ko)
        assert (answer.status, answer.code) == (409, "409-201")
        # Another app may not touch this conversation (api.app_isolation).
        answer = await call(other, "stop", guid)
        assert (answer.status, answer.code) == (403, "403-01")
        answer = await call(other, "get", f"/conversation/v1/conversation/messages?externalId={guid}")
        assert (answer.status, answer.code) == (403, "403-01")

        # 409-202: a second request while the first is still being processed.
        control = tree.root.node.transcription.control   # where stops store their statistics
        gated = GatedStorage(control.storage)
        control.storage = gated
        arrived = gated.hold("update_stream_stats")
        first_stop = call(app, "stop", guid)
        await arrived
        answer = await call(app, "start", guid, autotranscribeParams=ko)
        assert (answer.status, answer.code) == (409, "409-202")
        gated.release("update_stream_stats")
        stopped = await first_stop
        assert stopped.status == 200, stopped.body
        summary = stopped.body["autotranscribeResponse"]["customer"]["summary"]
        assert summary["totalAudioBytes"] > 0
        assert summary["audioDurationMs"] == summary["totalAudioBytes"] // 16
        assert summary["streamingSeconds"] >= 0
        assert summary["pending"] is False      # everything before the stop is stored
        assert set(summary) == {"totalAudioBytes", "audioDurationMs", "streamingSeconds", "pending",
                                "transcripts"}
        answer = await call(app, "stop", guid)
        assert (answer.status, answer.code) == (409, "409-201")

        # 409-01: the same leg (same agent) cannot swap the media lines.
        answer = await call(app, "start", guid, agent="agent-1", autotranscribeParams=ko,
                            siprecParams={"mediaLineOrder": "AGENT_FIRST"})
        assert (answer.status, answer.code) == (409, "409-01")
        # Resume in the same leg: the same streamIds.
        resumed = await call(app, "start", guid, agent="agent-1", autotranscribeParams=ko)
        assert resumed.status == 200
        assert resumed.body["autotranscribeResponse"] == first
        await call(app, "stop", guid)
        # A new agent is a new leg, with new streamIds, and may swap the lines.
        second = await call(app, "start", guid, agent="agent-2",
                            autotranscribeParams=dict(ko, audioRecordingAllowed=True),
                            siprecParams={"mediaLineOrder": "agent_first"})
        assert second.status == 200, second.body
        ids = {r["streamId"] for r in second.body["autotranscribeResponse"].values()}
        assert not ids & {r["streamId"] for r in first.values()}

        # 429-01: an app's rate limit (burst 100, 5/s here); the limit is
        # per app, so the first app is not slowed down.
        answers = await gather(*[call(other, "get", "/v1/health") for _ in range(160)])
        limited = [a for a in answers if a.status == 429]
        assert limited and all(a.code == "429-01" for a in limited)
        assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
        assert (await call(app, "get", "/v1/health")).status == 200
        await wait_for_tokens(other)

        # 409-203: the call's BYE is being processed.
        arrived = gated.hold("end_call")
        tree.root.node.sip_server.hang_up(session, "test over")
        await arrived
        answer = await call(app, "start", guid, agent="agent-3", autotranscribeParams=ko)
        assert (answer.status, answer.code) == (409, "409-203")
        answer = await call(app, "stop", guid)
        assert (answer.status, answer.code) == (409, "409-203")
        gated.release("end_call")
        await watcher.ended.get()
        await placed
        placed = None
        await tree.root.node.transcription.drain()       # the call's end is processed
        answer = await call(app, "stop", guid)
        assert answer.code == "400-203"

        # -- after the call: conversations and messages ---------------------------------
        answer = await call(app, "get", f"/conversation/v1/conversation/messages?externalId={guid}")
        assert answer.status == 200
        items = answer.body["items"]
        assert items, "the call was transcribed for seconds: utterances expected"
        stored = await tree.root.node.storage.messages_for_guid(guid)
        assert [i["messageId"] for i in items] == [m.id for m in stored]
        for item in items:
            assert set(item) >= {"text", "sender", "messageId", "createdTimestamp",
                                 "clientTimestamp"}
            assert item["sender"]["role"] in ("customer", "agent")
        answer = await call(app, "get", f"/conversation/v1/conversations?externalId={guid}")
        assert answer.status == 200
        (conversation,) = answer.body["conversations"]
        assert conversation["externalId"] == guid and conversation["status"] == "ended"
        assert [a["externalId"] for a in conversation["agents"]] == ["agent-1", "agent-2"]
        assert [leg["number"] for leg in conversation["legs"]] == [1, 2]
        by_id = await call(app, "get", f"/conversation/v1/conversations/{conversation['id']}")
        assert by_id.body == conversation
        again = await call(app, "get",
                           f"/conversation/v1/conversations/{conversation['id']}/messages")
        assert again.body == answer_items(items)

        # The second leg allowed recording: its audio is there, the first's not.
        base = f"/conversation/v1/conversations/{conversation['id']}/recordings"
        listed = await call(app, "get", base)
        assert listed.status == 200, listed.body
        (recording,) = listed.body["recordings"]
        assert recording["legId"] == conversation["legs"][1]["id"]
        wav = await call(app, "get", recording["url"])
        assert wav.status == 200 and wav.headers["content-type"] == "audio/wav"
        assert wav.body[:4] == b"RIFF" and wav.body[22:24] == b"\x02\x00"   # stereo
        assert len(wav.body) == recording["bytes"]
        answer = await call(app, "get", f"{base}/{conversation['legs'][0]['id']}.wav")
        assert (answer.status, answer.code) == (404, "404-01")
        answer = await call(other, "get", recording["url"])
        assert (answer.status, answer.code) == (403, "403-01")

        # The audit log has every start and stop, by app.
        audit = await tree.root.node.storage.audit_log(guid=guid)
        actions = [(e.action, e.app_id) for e in reversed(audit)]
        assert actions == [("transcription.started", app.api_id),
                           ("transcription.stopped", app.api_id),
                           ("transcription.started", app.api_id),
                           ("transcription.stopped", app.api_id),
                           ("transcription.started", app.api_id)]

        # 500-01: anything unexpected is logged and answered without details.
        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        tree.root.node.api.storage = BrokenStorage(tree.root.node.storage, "get_call_by_guid", broken)
        answer = await call(app, "get", f"/conversation/v1/conversations?externalId={guid}")
        assert (answer.status, answer.code) == (500, "500-01")
        assert "bug" not in answer.body["error"]["message"]
    finally:
        if placed is not None:
            for s in list(tree.root.node.sip_server.calls.values()):
                tree.root.node.sip_server.hang_up(s, "test over")
        await tree.root.stopService()
        if placed is not None:
            await placed


def answer_items(items):
    return {"items": items}


class BrokenStorage:
    """Fault injection: the real storage with one method replaced."""

    def __init__(self, storage, name, replacement):
        self._storage, self._name, self._replacement = storage, name, replacement

    def __getattr__(self, name):
        return self._replacement if name == self._name else getattr(self._storage, name)


async def wait_for_tokens(client):
    """Wait until the app's bucket has refilled a little (real time: the
    limiter runs on the reactor's clock), bounded."""
    for _ in range(50):
        answer = await call(client, "get", "/v1/health")
        if answer.status == 200:
            return
        await deferLater(float(answer.headers.get("retry-after", "1")))
    pytest.fail("the rate limit never let requests through again")


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, min(seconds, 1.0), lambda: None)


@pytest_twisted.ensureDeferred
async def test_revoked_and_rotated_credentials_are_refused(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tree = await start_tree(tmp_path)
    siprecd = str(Path(sys.executable).parent / "siprecd")
    try:
        assert (await call(tree.app, "get", "/v1/health")).status == 200
        out = subprocess.run([siprecd, "apps", "rotate", "-c", str(tree.path), "--json",
                              tree.app.api_id], capture_output=True, text=True, check=True)
        new_secret = json.loads(out.stdout)["apiSecret"]
        # Another process changed the secret: this node's cache of verified
        # secrets trusts the old one for at most 30 s; a fresh node at once.
        tree.root.node.storage._verified.clear()
        answer = await call(tree.app, "get", "/v1/health")
        assert answer.code == "401-01"
        rotated = ApiClient(tree.port, tree.cert, tree.app.api_id, new_secret)
        assert (await call(rotated, "get", "/v1/health")).status == 200
        subprocess.run([siprecd, "apps", "revoke", "-c", str(tree.path), tree.app.api_id],
                       check=True, capture_output=True)
        tree.root.node.storage._verified.clear()
        answer = await call(rotated, "get", "/v1/health")
        assert answer.code == "401-01"
        listed = subprocess.run([siprecd, "apps", "list", "-c", str(tree.path), "--all",
                                 "--json"], capture_output=True, text=True, check=True)
        rows = {r["apiId"]: r for r in map(json.loads, listed.stdout.splitlines())}
        assert rows[tree.app.api_id]["revoked"] is not None
        assert rows[tree.other.api_id]["revoked"] is None
        assert "secret" not in listed.stdout.lower()
        audit = await tree.root.node.storage.audit_log(app_id=tree.app.api_id)
        assert [e.action for e in reversed(audit)] == ["app.created", "app.rotated",
                                                       "app.revoked"]
    finally:
        await tree.root.stopService()


@pytest_twisted.ensureDeferred
async def test_failed_authentications_are_limited_per_address(tmp_path):
    tree = await start_tree(tmp_path)
    try:
        answers = await gather(*[call(tree.anonymous, "get", "/v1/health") for _ in range(40)])
        codes = {a.code for a in answers}
        assert codes == {"401-01", "429-01"}
        # A good app from the same address is limited too until the budget
        # refills: guessing must not load the node with secret hashing.
        limited = [a for a in answers if a.code == "429-01"]
        assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
    finally:
        await tree.root.stopService()
