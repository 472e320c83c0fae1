"""The OpenAPI document (siprecd/api/openapi.yaml) against the live API.

The daemon's service tree runs in this process (real HTTPS with the
development certificate, real SQLite, the real Korean Vosk model); one
real SIPREC call from the simulator gives a conversation with two legs
and messages. The document is read from the server itself
(GET /openapi.yaml) and must be the packaged file.

Every answer is checked against the document with schemathesis' checks:
no 5xx, and status code, content type, headers and body as documented.
First a walk by hand through what generated data cannot reach (a
conversation before start-streaming, start, every conflict, stop with its
summary, a new leg, the messages and the conversation after the call,
another app's 403, 401 on every operation, bodies that are not JSON
objects, 413, the health 503); then
cases schemathesis generates for every operation: valid ones, and
invalid ones that the server must reject (negative_data_rejection).

schemathesis is blocking (requests): all of it runs in threads, never on
the reactor thread, where the server is.
"""

import os
import time
from importlib import resources

import hypothesis
import numpy
import pytest
import pytest_twisted
import requests
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.hypothesis import examples
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from twisted.internet import reactor, task, threads

from harness.api import create_app
from harness.inprocess import CallWatcher, start_service_tree
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech

START = "/mg-autotranscribe/v1/start-streaming"
STOP = "/mg-autotranscribe/v1/stop-streaming"
MESSAGES = "/conversation/v1/conversation/messages"
CONVERSATIONS = "/conversation/v1/conversations"
CONVERSATION = "/conversation/v1/conversations/{conversationId}"
CONVERSATION_MESSAGES = "/conversation/v1/conversations/{conversationId}/messages"
RECORDINGS = "/conversation/v1/conversations/{conversationId}/recordings"
RECORDING = "/conversation/v1/conversations/{conversationId}/recordings/{legFile}"
HEALTH = "/v1/health"
OPENAPI = "/openapi.yaml"
LIVE = "/conversation/v1/live"
FEED_LISTINGS = ("listfeeds", "listfeedversions", "listfeedformats", "listfeeddates",
                 "listfeedintervals", "listfeedfiles", "getfeedfile")
DOWNLOAD = "/fileexporter/v1/download/{file}"
INTERNAL = {("POST", "/internal/v1/start-streaming"), ("POST", "/internal/v1/stop-streaming"),
            ("POST", "/internal/v1/drain")}
OPERATIONS = {("POST", START), ("POST", STOP), ("GET", MESSAGES), ("GET", CONVERSATIONS),
              ("GET", "/conversation/v1/calls"),
              ("GET", CONVERSATION), ("GET", CONVERSATION_MESSAGES), ("GET", RECORDINGS),
              ("GET", RECORDING), ("GET", HEALTH), ("GET", OPENAPI), ("GET", DOWNLOAD),
              ("GET", LIVE)} | {
              ("POST", f"/fileexporter/v1/static/{name}") for name in FEED_LISTINGS} | INTERNAL

CLUSTER_SECRET = "schema-test-cluster-secret-0123456789"
# Not sent generated requests: draining would stop the node taking calls
# (it is checked by hand: 401 without the cluster secret).
# The live WebSocket's upgrade is not generated either: generated queries
# (any UTF-8, percent-encoded) pass the HTTP server's 16 KiB request-line
# limit, where it answers 400 and hangs up while the client still sends;
# its answers and refusals are tested in test_live_websocket.
NOT_GENERATED = {"internalDrain", "liveTranscripts"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]
# Generated cases per operation and generation mode.
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 25}
# Long enough that the start, stop and resume below all happen while the
# call is up on a loaded machine; it then ends by itself.
CALL_SECONDS = 30
# A body over api.max_body_size (64 KiB by default).
TOO_LARGE = 70 * 1024


class _SourceAddress(requests.adapters.HTTPAdapter):
    """Connections made from a given local address."""

    def __init__(self, address):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


class Live:
    """The server as schemathesis sees it: base URL, CA file, credentials;
    and what was sent, for the summary."""

    def __init__(self, port, cafile, api_id, secret, source=None):
        self.base_url = f"https://127.0.0.1:{port}"
        # From *source*, another loopback address, when given.
        self.session = requests.Session()
        if source is not None:
            adapter = _SourceAddress(source)
            self.session.mount("https://", adapter)
        self.cafile = str(cafile)
        # The app's credentials, and the cluster secret for the internal
        # routes (a node of the cluster is what sends those).
        self.headers = {"asapp-api-id": api_id, "asapp-api-secret": secret,
                        "x-siprecd-cluster-secret": CLUSTER_SECRET}
        self.credentials = (api_id, secret)
        self.schema = None
        self.statuses = {}          # "METHOD /path" -> {status: answers}

    def load_schema(self):
        """The document as the server serves it, checked against the
        OpenAPI 3.0 meta-schema. (Loaded from its text, not its URL:
        schemathesis leaves out the operation a schema was fetched from,
        and GET /openapi.yaml is one of those to check.)"""
        served = requests.get(f"{self.base_url}{OPENAPI}", headers=self.headers,
                              verify=self.cafile, timeout=30)
        assert served.status_code == 200, served.text
        assert served.headers["content-type"] == "application/yaml"
        packaged = resources.files("siprecd.api").joinpath("openapi.yaml").read_bytes()
        assert served.content == packaged
        schema = schemathesis.openapi.from_file(served.text, config=schemathesis.Config())
        schema.validate()
        # The credentials are the test's (sent with every request); that
        # each operation requires them is checked by hand. Unknown query
        # parameters are ignored by the API, as by most.
        schema.config.generation.update(with_security_parameters=False,
                                        allow_extra_parameters=False)
        self.schema = schema
        return schema

    def send(self, case, credentials=True, server_error=False):
        """Send *case* and check the answer against the document (a 5xx
        is a failure unless *server_error* is expected)."""
        headers = self.headers if credentials else None
        response = case.call(base_url=self.base_url, session=self.session, headers=headers,
                             verify=self.cafile, timeout=30)
        key = f"{case.operation.method.upper()} {case.operation.path}"
        counts = self.statuses.setdefault(key, {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        checks = [c for c in CHECKS if not (server_error and c is not_a_server_error)]
        case.validate_response(response, checks=checks, headers=headers)
        return response

    def exchange(self, method, path, expect, credentials=True, **parts):
        """One request made by hand. *expect* is its status, or "status
        code", or None for any answer the document allows. Returns the
        JSON body."""
        case = self.schema[path][method].Case(**parts)
        status, _, code = str(expect).partition(" ")
        response = self.send(case, credentials, server_error=status.startswith("5"))
        body = response.json()
        if expect is not None:
            assert response.status_code == int(status), (method, path, parts, response.text)
            if code:
                assert body["error"]["code"] == code, (method, path, parts, body)
        return body

    def exchange_raw(self, method, path, raw, expect):
        """Send the bytes *raw* as the body (what schemathesis would not
        make) and check the answer against the document."""
        case = self.schema[path][method].Case()
        response = requests.request(method, self.base_url + path, data=raw, verify=self.cafile,
                                    headers={**self.headers, "content-type": "application/json"},
                                    timeout=30)
        counts = self.statuses.setdefault(f"{method} {path}", {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=self.headers)
        status, _, code = expect.partition(" ")
        assert (response.status_code, response.json()["error"]["code"]) == (int(status), code)

    def fuzz(self):
        """Generated cases for every operation; returns how many were sent."""
        total = 0
        for result in self.schema.get_all_operations():
            operation = result.ok()
            if operation.definition.raw.get("operationId") in NOT_GENERATED:
                continue
            # The document's own examples (fields it gives no example for
            # are generated).
            for strategy in operation.get_strategies_from_examples(fill_missing=True):
                self.send(examples.generate_one(strategy))
                total += 1
            for mode, count in EXAMPLES.items():
                if mode is GenerationMode.NEGATIVE and not _can_be_negated(operation):
                    continue
                total += self._generated(operation, mode, count)
        return total

    def _generated(self, operation, mode, count):
        sent = []

        @hypothesis.settings(max_examples=count, derandomize=bool(os.environ.get("CI")),
                             database=None, deadline=None, print_blob=True,
                             suppress_health_check=list(HealthCheck),
                             phases=[hypothesis.Phase.generate])
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            self.send(case)
            sent.append(case)

        run()
        return len(sent)


def _can_be_negated(operation):
    """Whether an operation has something that can be made invalid."""
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def in_thread(func, *args, **kwargs):
    return threads.deferToThread(func, *args, **kwargs)


async def until(predicate, what, timeout=30.0, step=0.2):
    """Poll the coroutine function *predicate* until it returns something
    truthy, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await task.deferLater(reactor, step, lambda: None)


@pytest_twisted.ensureDeferred
async def test_the_live_api_matches_its_openapi_document(tmp_path):
    began = time.monotonic()
    root, written = await start_service_tree(
        tmp_path, reactor,
        api={"rate_limit": {"requests_per_second": 1000, "burst": 1000}},
        cluster={"secret": CLUSTER_SECRET})
    watcher = CallWatcher(root)
    placed = fuzzing = None
    try:
        config = tmp_path / "siprecd.yaml"
        cafile = tmp_path / "state" / "tls" / "api-selfsigned.crt"
        live = Live(written["api"]["port"], cafile, *create_app(config, label="schema"))
        other = Live(written["api"]["port"], cafile, *create_app(config, label="other"))
        # The generated cases come from an address of their own: their
        # download links carry made-up signatures, which are refused
        # credentials, and the budget of those the API keeps per address
        # would otherwise run out for the test's own requests made meanwhile.
        fuzzer = Live(written["api"]["port"], cafile, *live.credentials,
                      source="127.0.0.2")
        schema = await in_thread(live.load_schema)
        other.schema, other.statuses = schema, live.statuses
        fuzzer.schema, fuzzer.statuses = schema, live.statuses
        assert {(r.ok().method.upper(), r.ok().path)
                for r in schema.get_all_operations()} == OPERATIONS

        # -- 401 on every operation; the health 503; 413 -----------------------------
        some_id = {"conversationId": "6a0f3c2e-5b1d-4e7f-8a9b-0c1d2e3f4a5b"}
        valid = {START: {"body": {"namespace": "siprec", "guid": "g", "customerId": "c",
                                  "agentId": "a"}},
                 STOP: {"body": {"namespace": "siprec", "guid": "g"}},
                 MESSAGES: {"query": {"externalId": "g"}},
                 CONVERSATIONS: {"query": {"externalId": "g"}},
                 CONVERSATION: {"path_parameters": some_id},
                 CONVERSATION_MESSAGES: {"path_parameters": some_id},
                 RECORDINGS: {"path_parameters": some_id},
                 RECORDING: {"path_parameters": dict(some_id, legFile="x.wav")}}
        # (The live route's 401 is in test_live_websocket: one address may
        # fail authentication only so often, and this spends that budget.)
        for method, path in sorted(OPERATIONS - {("GET", DOWNLOAD), ("GET", LIVE)} - INTERNAL):
            await in_thread(live.exchange, method, path, "401 401-01", credentials=False,
                            **valid.get(path, {"body": {"feed": "utterances", "version": "1",
                                                        "format": "jsonl", "date": "2024-05-02",
                                                        "fileName": "part-0000.jsonl"}}
                                        if "/static/" in path and "listfeeds" not in path
                                        else {}))
        # A download needs no credentials, only a valid signed link.
        await in_thread(live.exchange, "GET", DOWNLOAD, "403 403-01", credentials=False,
                        path_parameters={"file": "utterances/x"},
                        query={"expires": "1", "signature": "x"})
        health = await in_thread(live.exchange, "GET", HEALTH, 200)
        # The live route answers a request that is not a WebSocket upgrade.
        await in_thread(live.exchange, "GET", LIVE, "400 400-01", query={"externalId": "g"})
        assert health["healthCheck"] == "SUCCESS" and health["ready"] is True
        root.readiness.wait_for("test", "a stage says it is not ready")
        try:
            failing = await in_thread(live.exchange, "GET", HEALTH, "503 503-01")
        finally:
            root.readiness.done("test")
        assert failing["healthCheck"] == "FAILURE" and failing["pending"] == {
            "test": "a stage says it is not ready"}
        for raw in (b"{not json", b"[1, 2]", b"[" * 5000, b'{"a":' * 3000):
            for path in (START, STOP):
                await in_thread(live.exchange_raw, "POST", path, raw, "400 400-201")
        await in_thread(live.exchange, "POST", START, "413 413-01",
                        body={"namespace": "siprec", "guid": "g" * TOO_LARGE,
                              "customerId": "c", "agentId": "a"})

        # -- a real call: its conversation before start-streaming ------------------------
        # Speech, then a pause that ends the utterance; looped for the call.
        speech = korean_speech("안녕하세요 카드 번호를 알려 주세요", tmp_path / "ko.wav")
        speech = numpy.concatenate([speech, numpy.zeros(2 * 8000, dtype=speech.dtype)])
        target = Target("127.0.0.1", written["sip"]["udp"]["port"])
        placed = place_calls(reactor, target, [CallSpec(customer=speech, agent=speech,
                                                        duration=CALL_SECONDS)],
                             media_host="127.0.0.1", local_host="127.0.0.1")
        session = await watcher.offered.get()
        guid = session.guid.value
        by_guid = {"externalId": guid}

        async def stored():
            body = await in_thread(live.exchange, "GET", CONVERSATIONS, 200, query=by_guid)
            return body["conversations"]

        (before,) = await until(stored, "the call to be stored")
        assert before["customer"] is None and before["legs"] == [] and before["agents"] == []
        assert before["status"] == "active" and before["endTimestamp"] is None
        conversation = {"conversationId": before["id"]}

        # -- start, the conflicts, stop, a new leg -----------------------------------
        def start(expect, agent="agent-1", **fields):
            body = {"namespace": "siprec", "guid": guid, "customerId": "cust-1",
                    "agentId": agent,
                    "autotranscribeParams": {"language": KO_LANGUAGE, "detailedToken": True,
                                             "redactionOutput": "redacted_and_unredacted"}}
            body.update(fields)
            return in_thread(live.exchange, "POST", START, expect, body=body)

        def stop(expect):
            return in_thread(live.exchange, "POST", STOP, expect,
                             body={"namespace": "siprec", "guid": guid})

        first = await start(200)
        assert set(first["autotranscribeResponse"]) == {"customer", "agent"}
        await start("409 409-201")
        await start("400 400-202", autotranscribeParams={"language": "xx-YY"})
        active = await in_thread(live.exchange, "GET", CONVERSATION, 200,
                                 path_parameters=conversation)
        assert active["customer"] == {"externalId": "cust-1"}
        assert active["legs"][0]["endTimestamp"] is None

        async def transcribed():
            return await root.node.storage.messages_for_guid(guid)

        await until(transcribed, "a first utterance", timeout=CALL_SECONDS)
        stopped = await stop(200)
        assert stopped["autotranscribeResponse"]["customer"]["summary"]["totalAudioBytes"] > 0
        await stop("409 409-201")
        await start("409 409-01", siprecParams={"mediaLineOrder": "AGENT_FIRST"})
        await start(200, agent="agent-2", siprecParams={"mediaLineOrder": "AGENT_FIRST"})

        # Another app may not read this conversation (api.app_isolation).
        await in_thread(other.exchange, "GET", MESSAGES, "403 403-01", query=by_guid)

        # -- generated cases, while the call runs on ------------------------------------
        # (They touch no call of the test's: the guids and ids they make up
        # are unknown to the node.)
        fuzzing = in_thread(fuzzer.fuzz)

        # -- after the call -----------------------------------------------------------
        await watcher.ended.get()
        await placed
        placed = None

        async def call_gone():
            # 409-203 while the end of the call is still being processed.
            body = await in_thread(live.exchange, "POST", STOP, None,
                                   body={"namespace": "siprec", "guid": guid})
            assert body["error"]["code"] in ("409-203", "400-203"), body
            return body["error"]["code"] == "400-203"

        await until(call_gone, "the call's end to be processed")
        items = (await in_thread(live.exchange, "GET", MESSAGES, 200, query=by_guid))["items"]
        assert items and all("tokens" in item and "unredactedText" in item for item in items)
        again = await in_thread(live.exchange, "GET", CONVERSATION_MESSAGES, 200,
                                path_parameters=conversation)
        assert again["items"] == items
        ended = await in_thread(live.exchange, "GET", CONVERSATION, 200,
                                path_parameters=conversation)
        assert ended["status"] == "ended" and ended["endTimestamp"] is not None
        assert [leg["number"] for leg in ended["legs"]] == [1, 2]
        assert all(leg["endTimestamp"] is not None for leg in ended["legs"])
        assert {item["legId"] for item in items} <= {leg["id"] for leg in ended["legs"]}
        await in_thread(live.exchange, "GET", MESSAGES, "400 400-01")
        await in_thread(live.exchange, "GET", MESSAGES, "422 422-01",
                        query={"externalId": "g" * 300})
        await in_thread(live.exchange, "GET", CONVERSATION, "422 422-01",
                        path_parameters={"conversationId": "not-a-uuid"})
        await in_thread(live.exchange, "GET", CONVERSATION_MESSAGES, "404 404-01",
                        path_parameters=some_id)

        # The routes between nodes need the cluster secret (checked here, once the
        # budget of failed authentications above has refilled).
        for method, path in sorted(INTERNAL):
            await in_thread(live.exchange, method, path, "401 401-01", credentials=False,
                            **({} if path.endswith("drain") else {"body": {
                                "app": {"apiId": "x"}, "request": {"namespace": "siprec",
                                                                   "guid": "g"}}}))

        generated = await fuzzing
        fuzzing = None
        assert {tuple(key.split(" ")) for key in live.statuses} == OPERATIONS
        total = sum(sum(counts.values()) for counts in live.statuses.values())
        print(f"\nschemathesis: {len(live.statuses)} operations, {total} requests "
              f"({generated} generated) in {time.monotonic() - began:.1f}s")
        for key, counts in sorted(live.statuses.items()):
            print(f"  {sum(counts.values()):4d}  {key}  {dict(sorted(counts.items()))}")
    finally:
        if fuzzing is not None:
            # A thread sending requests: let it finish before the node stops.
            await fuzzing.addErrback(lambda _: None)
        if placed is not None:
            for s in list(root.node.sip_server.calls.values()):
                root.node.sip_server.hang_up(s, "test over")
        await root.stopService()
        if placed is not None:
            await placed
