"""The API as a customer integrates it, written from the vendor's public
guide and what integrators do with it: the guide's paths (with their
trailing slash), resumes, a changed customerId, two apps side by side in
every route that returns conversation data, a stop while the recogniser
is seconds behind, the node starting transcription by itself, and health
asked by a load balancer.

Everything runs against the daemon's service tree in this process: real
SIPREC calls from the simulator with Korean speech, the real Korean Vosk
model, real SQLite, HTTPS on loopback, an HTTPS webhook receiver with its
own CA. The client is ``requests`` with redirects off, so a redirect
would show as one.
"""

import csv
import io
import json
from urllib.parse import quote, urlencode

import numpy as np
import pytest_twisted
import requests
from twisted.internet import defer, reactor, task, threads

from harness.api import create_app
from harness.inprocess import CallWatcher, start_service_tree
from harness.openapi import problems
from harness.pki import Authority
from harness.receiver import WebhookReceiver
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech

# As the vendor's guide writes them: with a trailing slash.
START = "/mg-autotranscribe/v1/start-streaming/"
STOP = "/mg-autotranscribe/v1/stop-streaming/"
KO = {"language": KO_LANGUAGE}
SENTENCES = ["안녕하세요 고객님 무엇을 도와드릴까요", "제 카드 번호를 확인하고 싶습니다",
             "오늘 날씨가 정말 좋네요", "전화해 주셔서 감사합니다"]


class Client:
    """An app's blocking HTTPS client (run it off the reactor thread)."""

    def __init__(self, port, cafile, api_id=None, secret=None):
        self.base = f"https://127.0.0.1:{port}"
        self.cafile = str(cafile)
        self.headers = {} if api_id is None else {"asapp-api-id": api_id,
                                                  "asapp-api-secret": secret}
        self.api_id = api_id

    def _call(self, method, path, body=None, headers=None):
        answer = requests.request(method, self.base + path, json=body, verify=self.cafile,
                                  headers=dict(self.headers, **(headers or {})),
                                  allow_redirects=False, timeout=120)
        assert not answer.is_redirect, (method, path, answer.status_code, answer.headers)
        return answer

    def __call__(self, method, path, body=None, headers=None):
        return threads.deferToThread(self._call, method, path, body, headers)

    def start(self, guid, customer, agent, **fields):
        body = {"namespace": "siprec", "guid": guid, "customerId": customer, "agentId": agent}
        return self("POST", START, dict(body, **fields))

    def stop(self, guid):
        return self("POST", STOP, {"namespace": "siprec", "guid": guid})


def code_of(answer):
    return answer.json()["error"]["code"]


class Site:
    """A node with two apps, each bound to a webhook target of its own on
    one receiver (the paths tell them apart)."""

    async def begin(self, tmp_path, **sections):
        self.ca = Authority("customer test CA", tmp_path / "pki")
        self.receiver = WebhookReceiver(reactor, self.ca).start()
        targets = {name: {"url": self.receiver.url(f"/{name}"),
                          "ca_bundle": str(self.ca.certificate_path)} for name in ("a", "b")}
        sections.setdefault("webhooks", {"targets": targets})
        self.root, self.written = await start_service_tree(tmp_path, reactor, **sections)
        self.watcher = CallWatcher(self.root)
        path = tmp_path / "siprecd.yaml"
        cafile = tmp_path / "state" / "tls" / "api-selfsigned.crt"
        port = self.written["api"]["port"]
        self.a = Client(port, cafile, *await threads.deferToThread(create_app, path, "a", "A"))
        self.b = Client(port, cafile, *await threads.deferToThread(create_app, path, "b", "B"))
        self.anonymous = Client(port, cafile)
        self.placed = []
        return self

    def hooks(self, target):
        return [r.json for r in self.receiver.accepted if r.path.startswith(f"/{target}")]

    def call(self, customer, agent, seconds, speed=1.0):
        """Place one call; fires with its guid once answered."""
        answered = defer.Deferred()
        placed = place_calls(
            reactor, Target("127.0.0.1", self.written["sip"]["udp"]["port"]),
            [CallSpec(customer=customer, agent=agent, duration=seconds)],
            media_host="127.0.0.1", local_host="127.0.0.1", speed=speed,
            on_call_answered=lambda result: answered.called or answered.callback(result.guid))
        self.placed.append(placed)
        return answered.addTimeout(60, reactor)

    async def hang_up(self, guid):
        for session in list(self.root.node.sip_server.calls.values()):
            if session.guid.value == guid:
                await self.root.node.sip_server.hang_up(session, "test over")

    async def ended(self, guid, client):
        """Wait until the call's end has been processed (stop answers 400-203;
        409-203 while it is, which includes storing what was said before a
        stop that the recognisers had not finished)."""
        for _ in range(3000):
            answer = await client.stop(guid)
            if answer.status_code == 400 and code_of(answer) == "400-203":
                return
            await task.deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"the call {guid} did not end")

    async def end(self):
        for session in list(self.root.node.sip_server.calls.values()):
            self.root.node.sip_server.hang_up(session, "test over")
        await self.root.stopService()
        for placed in self.placed:
            await placed.addErrback(lambda f: None)
        await self.receiver.stop()


def speech(tmp_path, sentences=SENTENCES, gap=1.2):
    parts = []
    for i, text in enumerate(sentences):
        parts += [korean_speech(text, tmp_path / f"s{i}.wav"), np.zeros(int(gap * 8000), np.int16)]
    return np.concatenate(parts)


async def until(what, predicate, timeout=90.0):
    for _ in range(int(timeout * 10)):
        value = await predicate() if callable(predicate) else None
        if value:
            return value
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


async def webhooks_of(site, target, stream_ids, count=1):
    """At least *count* webhooks of *stream_ids* at *target*."""
    async def got():
        found = [h for h in site.hooks(target) if h["streamId"] in stream_ids]
        return found if len(found) >= count else None
    return await until(f"{count} webhooks of {sorted(stream_ids)}", got)


@pytest_twisted.ensureDeferred
async def test_the_guides_paths_resumes_and_a_new_customer_keep_history_true(tmp_path):
    site = await Site().begin(tmp_path)
    try:
        said = speech(tmp_path)
        guid = await site.call(said, said[::-1].copy(), seconds=600)
        a = site.a

        # The guide's path with its slash; every setting given.
        full = {"language": KO_LANGUAGE, "detailedToken": True,
                "redactionOutput": "redacted_and_unredacted"}
        first = await a.start(guid, "cust-1", "agent-1", autotranscribeParams=full)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["isOk"] is True
        assert body["settings"] == {"language": KO_LANGUAGE, "detailedToken": True,
                                    "audioRecordingAllowed": False,
                                    "redactionOutput": "redacted_and_unredacted",
                                    "mediaLineOrder": "CUSTOMER_FIRST"}
        leg1 = body["legId"]
        streams1 = {r: v["streamId"] for r, v in body["autotranscribeResponse"].items()}
        await webhooks_of(site, "a", set(streams1.values()))
        assert (await a.stop(guid)).status_code == 200

        # A resume that leaves autotranscribeParams out keeps the leg's settings.
        resumed = await a.start(guid, "cust-1", "agent-1")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["settings"] == body["settings"]
        assert resumed.json()["legId"] == leg1
        assert {r: v["streamId"] for r, v in resumed.json()["autotranscribeResponse"].items()} \
            == streams1
        before = len(site.hooks("a"))
        await webhooks_of(site, "a", set(streams1.values()), count=before + 1)
        assert (await a.stop(guid)).status_code == 200
        after_resume = site.hooks("a")[before:]
        assert after_resume and all(
            "tokens" in h["autotranscribeResponse"]["utterance"][0]
            and "unredactedText" in h["autotranscribeResponse"]["utterance"][0]
            for h in after_resume)

        # A new customerId is a new leg: new streamIds, defaults for what
        # the request leaves out (said in the answer).
        second = await a.start(guid, "cust-2", "agent-1", autotranscribeParams=KO)
        assert second.status_code == 200, second.text
        assert second.json()["legId"] != leg1
        assert second.json()["settings"]["detailedToken"] is False
        assert second.json()["settings"]["redactionOutput"] == "redacted"
        streams2 = {r: v["streamId"] for r, v in second.json()["autotranscribeResponse"].items()}
        assert not set(streams2.values()) & set(streams1.values())
        await webhooks_of(site, "a", set(streams2.values()))
        assert (await a.stop(guid)).status_code == 200

        await site.hang_up(guid)
        await site.ended(guid, a)

        # History stays true: each message's sender is what it was when the
        # message was made, and what its webhook carried.
        listed = await a("GET", f"/conversation/v1/conversation/messages/?externalId={guid}")
        assert listed.status_code == 200
        items = listed.json()["items"]
        hooks = {h["messageId"]: h for h in site.hooks("a")}
        assert set(hooks) == {m["messageId"] for m in items}
        for item in items:
            assert item["sender"] == hooks[item["messageId"]]["sender"]
            expected = "cust-1" if item["legId"] == leg1 else "cust-2"
            if item["sender"]["role"] == "customer":
                assert item["sender"]["externalId"] == expected, item
        assert {i["sender"]["externalId"] for i in items if i["sender"]["role"] == "customer"} \
            == {"cust-1", "cust-2"}
        for hook in hooks.values():
            assert not problems("WebhookTranscript", hook), problems("WebhookTranscript", hook)

        # Conversation routes with a trailing slash, no redirect.
        found = await a("GET", f"/conversation/v1/conversations/?externalId={guid}")
        (conversation,) = found.json()["conversations"]
        assert [(leg["customerId"], leg["agentId"]) for leg in conversation["legs"]] == [
            ("cust-1", "agent-1"), ("cust-2", "agent-1")]
        by_id = await a("GET", f"/conversation/v1/conversations/{conversation['id']}/")
        assert by_id.status_code == 200 and by_id.json()["externalId"] == guid
        again = await a("GET", f"/conversation/v1/conversations/{conversation['id']}/messages/")
        assert again.json()["items"] == items
    finally:
        await site.end()


def rows_of(text, fmt):
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line]
    return list(csv.DictReader(io.StringIO(text)))


async def feed_files(client, fmt="jsonl"):
    """Every (file name, download URL) the File Exporter offers *client*."""
    base = {"feed": "utterances", "version": "1", "format": fmt}
    dates = (await client("POST", "/fileexporter/v1/static/listfeeddates/", base)).json()
    out = []
    for date in dates["dates"]:
        listed = await client("POST", "/fileexporter/v1/static/listfeedfiles",
                              dict(base, date=date))
        for name in listed.json()["files"]:
            got = await client("POST", "/fileexporter/v1/static/getfeedfile",
                               dict(base, date=date, fileName=name))
            assert got.status_code == 200, got.text
            out.append(got.json()["url"])
    return out


@pytest_twisted.ensureDeferred
async def test_two_apps_never_see_each_others_conversations_in_any_route(tmp_path):
    site = await Site().begin(tmp_path)
    try:
        said = speech(tmp_path)
        guids = {}
        for name, client in (("a", site.a), ("b", site.b)):
            guids[name] = await site.call(said, said, seconds=600)
            started = await client.start(guids[name], f"cust-{name}", f"agent-{name}",
                                         autotranscribeParams=dict(KO, audioRecordingAllowed=True))
            assert started.status_code == 200, started.text
            ids = {v["streamId"] for v in started.json()["autotranscribeResponse"].values()}
            await webhooks_of(site, name, ids)
        a, b = site.a, site.b
        # Calls in progress: each app sees its own (both are started now).
        checked = []
        for me, client in (("a", a), ("b", b)):
            listed = await client("GET", "/conversation/v1/calls/")
            assert listed.status_code == 200, listed.text
            calls = {c["externalId"]: c for c in listed.json()["calls"]}
            assert set(calls) == {guids[me]}, (me, sorted(calls))
            (session,) = calls[guids[me]]["sessions"]
            assert session["transcription"]["state"] == "started"
            assert session["transcription"]["appId"] == client.api_id
            assert sorted((s["role"], s["transcription"]) for s in session["streams"]) == [
                ("agent", "started"), ("customer", "started")]
            assert all(s["codec"] == "PCMU" and s["streamId"] for s in session["streams"])
            # The metadata's participants, with the streams they send.
            assert calls[guids[me]]["participants"] and all(
                p["aors"] for p in calls[guids[me]]["participants"])
            assert calls[guids[me]]["identifiers"]
            assert not problems("CallList", listed.json()), problems("CallList", listed.json())
        checked.append("GET calls in progress")
        # Start and stop: the other app's call is out of reach.
        assert code_of(await a.stop(guids["b"])) == "403-01"
        assert code_of(await a.start(guids["b"], "x", "y", autotranscribeParams=KO)) == "403-01"
        for name, client in (("a", a), ("b", b)):
            assert (await client.stop(guids[name])).status_code == 200
            await site.hang_up(guids[name])
            await site.ended(guids[name], client)
        for client in (a, b):
            assert (await client("GET", "/conversation/v1/calls")).json() == {"calls": []}

        for me, other, client in (("a", "b", a), ("b", "a", b)):
            mine, theirs = guids[me], guids[other]
            conv = {}
            for who, guid in (("mine", mine), ("theirs", theirs)):
                # The conversation's id, as its own app sees it.
                owner = a if (who == "mine") == (me == "a") else b
                found = (await owner("GET", f"/conversation/v1/conversations?externalId={guid}"))
                conv[who] = found.json()["conversations"][0]["id"]
            routes = {
                "GET messages by externalId":
                    lambda g, c: f"/conversation/v1/conversation/messages?externalId={g}",
                "GET conversations by externalId":
                    lambda g, c: f"/conversation/v1/conversations?externalId={g}",
                "GET conversation by id": lambda g, c: f"/conversation/v1/conversations/{c}",
                "GET messages by conversation id":
                    lambda g, c: f"/conversation/v1/conversations/{c}/messages",
                "GET recordings": lambda g, c: f"/conversation/v1/conversations/{c}/recordings",
            }
            for route, path in routes.items():
                own = await client("GET", path(mine, conv["mine"]))
                assert own.status_code == 200, (route, own.text)
                refused = await client("GET", path(theirs, conv["theirs"]))
                assert (refused.status_code, code_of(refused)) == (403, "403-01"), route
                checked.append(route)
            recordings = (await client("GET", routes["GET recordings"](mine, conv["mine"])))
            (recording,) = recordings.json()["recordings"]
            assert (await client("GET", recording["url"])).status_code == 200
            leg_file = recording["url"].rsplit("/", 1)[1]
            stolen = await client("GET", f"/conversation/v1/conversations/{conv['theirs']}"
                                         f"/recordings/{leg_file}")
            assert stolen.status_code in (403, 404)
            checked.append("GET a recording")

        # The File Exporter: each app's feed holds its own conversations only.
        day = site.root.node.export.exporter
        result = await day.export(_today())
        assert result.rows > 0
        links = {}
        for name, client in (("a", a), ("b", b)):
            links[name] = await feed_files(client)
            assert links[name], f"app {name} is offered no file"
            seen = set()
            for url in links[name]:
                got = await threads.deferToThread(requests.get, url, verify=client.cafile,
                                                  allow_redirects=False, timeout=60)
                assert got.status_code == 200
                seen |= {row["externalConversationId"] for row in rows_of(got.text, "jsonl")}
            assert seen == {guids[name]}, (name, seen)
        checked.append("File Exporter listings, getfeedfile and download")
        # A link of A's with B's tree put in its path no longer verifies.
        forged = links["a"][0].replace(f"/apps/{a.api_id}/", f"/apps/{b.api_id}/")
        got = await threads.deferToThread(requests.get, forged, verify=a.cafile, timeout=60)
        assert got.status_code == 403
        # A correctly signed link to the whole feed is refused under isolation.
        relative = links["a"][0].split("/fileexporter/v1/download/apps/")[1].split("?")[0]
        whole = "/fileexporter/v1/download/" + relative.split("/", 1)[1]
        query = urlencode(site.root.node.api.links.sign(whole))
        got = await threads.deferToThread(requests.get, f"{a.base}{quote(whole)}?{query}",
                                          verify=a.cafile, timeout=60)
        assert got.status_code == 404
        print("isolation checked in:", "; ".join(dict.fromkeys(checked)))
    finally:
        await site.end()


def _today():
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).date()


def spans_of(said_parts, loops):
    """[(start, end)] in samples of each sentence of the looped audio."""
    spans, position = [], 0
    for _ in range(loops):
        for sentence, gap in said_parts:
            spans.append((position, position + len(sentence)))
            position += len(sentence) + len(gap)
    return spans


@pytest_twisted.ensureDeferred
async def test_a_stop_while_the_recogniser_is_seconds_behind_loses_no_speech(tmp_path):
    # One recogniser thread and a call streamed 8 times faster than real
    # time: the recogniser falls seconds behind, and the stop comes then.
    site = await Site().begin(tmp_path, asr={"threads": 1})
    try:
        parts = [(korean_speech(t, tmp_path / f"s{i}.wav"), np.zeros(12000, np.int16))
                 for i, t in enumerate(SENTENCES)]
        said = np.concatenate([x for pair in parts for x in pair])
        guid = await site.call(said, said, seconds=600, speed=8.0)
        started = await site.a.start(guid, "cust-1", "agent-1", autotranscribeParams=KO)
        assert started.status_code == 200, started.text

        (call,) = site.root.node.transcription.calls.conversation(guid).sessions

        async def behind():
            # Both streams have had all the sentences once (what passed the
            # gate so far: the stop's summary will say the same), and the
            # recogniser is at least 3 s of audio behind.
            _, waiting = site.root.node.transcription.backlog()   # seconds
            heard = min(ls.samples for ls in call.streams.values())
            return heard >= len(said) and waiting >= 3.0
        await until("the recogniser to be 3 s behind after a whole loop", behind)
        stopped = await site.a.stop(guid)
        assert stopped.status_code == 200, stopped.text
        received = {role: v["summary"]["audioDurationMs"]
                    for role, v in stopped.json()["autotranscribeResponse"].items()}
        await site.hang_up(guid)
        await site.ended(guid, site.a)

        items = (await site.a("GET", f"/conversation/v1/conversation/messages?externalId={guid}")
                 ).json()["items"]
        loops = 1 + max(received.values()) * 8 // len(said)
        for role, ms in received.items():
            mine = [(m["start"] * 8, m["end"] * 8) for m in items if m["sender"]["role"] == role]
            # Nothing after the stop... (message times count from the
            # stream's first sample, the summary from the start request,
            # which came a fraction of a second of wall time, so up to 2 s of
            # this 8x audio, later)
            assert all(e <= ms * 8 + 16000 for _, e in mine), (role, ms, mine)
            # ... and every sentence said before it was transcribed, although
            # the recogniser had not heard it when the stop came.
            said_before = [(a, b) for a, b in spans_of(parts, loops) if b <= ms * 8]
            assert len(said_before) >= len(SENTENCES), (role, ms)
            missing = [(a, b) for a, b in said_before
                       if not any(s < b and e > a for s, e in mine)]
            assert not missing, (role, ms, missing, mine)
            print(f"{role}: {ms / 1000:.1f} s received before the stop, "
                  f"{len(said_before)} sentences, {len(mine)} utterances")
    finally:
        await site.end()


@pytest_twisted.ensureDeferred
async def test_auto_start_transcribes_every_answered_call_for_its_app(tmp_path):
    from harness.daemon import write_config

    # The app is made first, as an operator would before turning auto_start on.
    path, _ = write_config(tmp_path)
    api_id, secret = await threads.deferToThread(create_app, path, None, "auto")
    site = Site()
    site_ready = site.begin(tmp_path, auto_start={
        "enabled": True, "app_id": api_id, "language": KO_LANGUAGE,
        "customer_id": "{customer_aor}", "agent_id": "agent-of-{guid}"})
    await site_ready
    try:
        auto = Client(site.a.base.rsplit(":", 1)[1], site.a.cafile, api_id, secret)
        said = speech(tmp_path)
        guid = await site.call(said, said, seconds=600)

        async def transcribed():
            answer = await auto("GET", f"/conversation/v1/conversation/messages?externalId={guid}")
            return answer.json().get("items") if answer.status_code == 200 else None
        items = await until("messages without any start-streaming", transcribed)
        senders = {(i["sender"]["role"], i["sender"]["externalId"]) for i in items}
        assert ("agent", f"agent-of-{guid}") in senders or all(
            role == "customer" for role, _ in senders)
        assert all(ext.startswith("sip:") for role, ext in senders if role == "customer")
        # The app's start/stop work on it; another app cannot see it.
        assert (await auto.stop(guid)).status_code == 200
        assert code_of(await site.b("GET", "/conversation/v1/conversation/messages"
                                    f"?externalId={guid}")) == "403-01"
        resumed = await auto.start(guid, "cust-9", "agent-9", autotranscribeParams=KO)
        assert resumed.status_code == 200, resumed.text
    finally:
        await site.end()


@pytest_twisted.ensureDeferred
async def test_health_for_a_load_balancer_without_credentials(tmp_path):
    site = await Site().begin(tmp_path, api={"public_health": True})
    try:
        probe = site.anonymous
        health = await probe("GET", "/v1/health")
        assert (health.status_code, health.json()) == (200, {"healthCheck": "SUCCESS",
                                                             "ready": True})
        assert (await probe("GET", "/openapi.yaml")).status_code == 200
        # Credentials still give the details; wrong ones are still refused.
        detailed = await site.a("GET", "/v1/health/")
        assert detailed.json()["node"] and detailed.json()["pending"] == {}
        wrong = await probe("GET", "/v1/health", headers={"asapp-api-id": site.a.api_id,
                                                          "asapp-api-secret": "wrong"})
        assert wrong.status_code == 401
        # Nothing else is public.
        assert (await probe("GET", "/conversation/v1/calls")).status_code == 401
        site.root.readiness.wait_for("test", "a stage is not ready")
        try:
            failing = await probe("GET", "/v1/health")
        finally:
            site.root.readiness.done("test")
        assert failing.status_code == 503
        assert {k: failing.json()[k] for k in ("healthCheck", "ready")} == {
            "healthCheck": "FAILURE", "ready": False}
        assert "pending" not in failing.json() and "node" not in failing.json()
    finally:
        await site.end()
