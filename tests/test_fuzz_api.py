"""Fuzzing the HTTPS API of a running daemon: random JSON values and raw
bytes POSTed to start-streaming, stop-streaming and every File Exporter
endpoint, some of them naming a call that is really in progress (placed
by the ``siprecd-src`` simulator).

Every answer is 2xx or 4xx (never 5xx, never a dropped connection), every
non-2xx answer is the error envelope with a code that matches its status,
and afterwards the daemon still answers /v1/health and SIP OPTIONS with
nothing unhandled in its log. The schemathesis run (tests/test_api_schema.py)
checks the same endpoints against the OpenAPI document; this one sends
what no schema describes.
"""

import collections
import http.client
import json
import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import drills
from harness.api import create_app
from harness.daemon import write_config

START = "/mg-autotranscribe/v1/start-streaming"
STOP = "/mg-autotranscribe/v1/stop-streaming"
EXPORTER = [f"/fileexporter/v1/static/{name}" for name in (
    "listfeeds", "listfeedversions", "listfeedformats", "listfeeddates", "listfeedintervals",
    "listfeedfiles", "getfeedfile")]
PATHS = [START, STOP, *EXPORTER]
KEYS = ["namespace", "guid", "customerId", "agentId", "autotranscribeParams", "siprecParams",
        "language", "detailedToken", "audioRecordingAllowed", "redactionOutput",
        "mediaLineOrder", "feed", "version", "format", "date", "interval", "fileName"]
VALUES = ["siprec", "twilio", "utterances", "1", "version=1", "jsonl", "csv", "format=csv",
          "2024-05-02", "dt=2024-05-02", "hr=02", "part-0000.jsonl", "../../etc/passwd",
          "en-US", "ko", "redacted", "redacted_and_unredacted", "AGENT_FIRST", "CUSTOMER_FIRST",
          "", " ", "\u0000", "\ud7ff", "💥" * 10, "x" * 5000]
ENVELOPE_CODE = re.compile(r"^(\d{3})-\d{2,3}$")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon (drill ASR: no model to load) with a call in progress."""
    tmp = tmp_path_factory.mktemp("api-fuzz")
    with pytest.MonkeyPatch.context() as mp:
        # The daemon and the siprecd CLI find the drill ASR backend.
        mp.setenv("PYTHONPATH", drills.plugin_pythonpath(tmp / "plugins"))
        path, cfg = write_config(tmp, asr={"backend": "drill"}, media=drills.media_ports(),
                                 api={"rate_limit": {"requests_per_second": 100000,
                                                     "burst": 100000}})
        d = drills.DrillDaemon(path).start()
        src = None
        try:
            d.wait_ready(60)
            api_id, secret = create_app(path)
            src = subprocess.Popen(
                [str(Path(sys.executable).parent / "siprecd-src"), "-t", "tcp", "--duration",
                 "60", "--local-host", "127.0.0.1", "--rtp-ports", "40000-40999",
                 f"127.0.0.1:{cfg['sip']['tcp']['port']}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in src.stdout:
                found = re.search(r"answered: guid (\S+)", line)
                if found:
                    break
            else:
                raise RuntimeError("the simulator's call was not answered")
            client = Client(cfg["api"]["port"], tmp / "state" / "tls" / "api-selfsigned.crt",
                            api_id, secret)
            yield d, cfg, client, found.group(1)
            client.close()
        finally:
            if src is not None:
                src.kill()
                src.wait(10)
            d.kill()


class Client:
    """A keep-alive HTTPS client (a fuzz run sends hundreds of requests)."""

    def __init__(self, port, cafile, api_id, secret):
        self.port = port
        self.context = ssl.create_default_context(cafile=str(cafile))
        self.context.check_hostname = False
        self.headers = {"asapp-api-id": api_id, "asapp-api-secret": secret,
                        "content-type": "application/json"}
        self.conn = None

    def post(self, path, body):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                                        context=self.context)
            try:
                self.conn.request("POST", path, body=body, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server may close a kept-alive connection between two
                # requests; a request that was refused is sent again once.
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("connection", "").lower() == "close":
                self.close()
            return response.status, data
        raise AssertionError("not reached")

    def get(self, path):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                           context=self.context)
        try:
            conn.request("GET", path, headers=self.headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


SEEN = collections.Counter()


def check(status, data):
    SEEN[status] += 1
    assert 200 <= status < 500, (status, data[:300])
    body = json.loads(data)
    if status >= 300:
        error = body["error"]
        assert set(error) >= {"requestId", "message", "code"}, body
        assert ENVELOPE_CODE.match(error["code"]) and error["code"][:3] == str(status), body
    else:
        assert isinstance(body, dict)


def json_values(guid):
    scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
               | st.floats(allow_nan=False) | st.sampled_from(VALUES + [guid])
               | st.text(max_size=40))
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), inner, max_size=6),
        max_leaves=20)


RAW = [b"", b"{", b"{}", b"[]", b"null", b"1e999999", b"-0", b'"\\ud800"', b"{\"guid\": 1}",
       b"\xff\xfe{}", b"{\"a\": " * 500 + b"1" + b"}" * 500, b"[" * 10000, b"\x00" * 64,
       b'{"namespace": "siprec", "guid": "x", "guid": "y"}']

FUZZ = settings(max_examples=500, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def test_random_json_and_raw_bytes_get_answers_not_errors(daemon):
    d, cfg, client, guid = daemon

    @FUZZ
    @given(st.sampled_from(PATHS), json_values(guid))
    def random_json(path, value):
        check(*client.post(path, json.dumps(value).encode()))

    @FUZZ
    @given(st.sampled_from(PATHS), st.binary(max_size=2000) | st.sampled_from(RAW))
    def raw_bytes(path, body):
        check(*client.post(path, body))

    @settings(FUZZ, max_examples=300)
    @given(st.sampled_from(PATHS), st.fixed_dictionaries(
        {"namespace": st.just("siprec"), "guid": st.just(guid)},
        optional={k: json_values(guid) for k in KEYS[2:]}))
    def near_valid(path, value):
        check(*client.post(path, json.dumps(value).encode()))

    random_json()
    raw_bytes()
    near_valid()

    print(f"API fuzz: {sum(SEEN.values())} requests, statuses {dict(sorted(SEEN.items()))}")
    # The fuzz reached past validation: calls were started and stopped.
    assert {200, 400, 409} <= set(SEEN), SEEN
    status, body = client.get("/v1/health")
    assert status == 200, body
    assert drills.sip_options("127.0.0.1", cfg["sip"]["udp"]["port"]) == 200
    bad = [line for line in d.take() if re.search(r"Traceback|Unhandled|#critical\]", line)]
    assert bad == []
