"""The File Exporter end to end through real HTTPS: a transcribed SIPREC
call (simulator, Korean speech, the real Korean Vosk model), the day built
with ``siprecd export`` as an operator would, the listings, a signed link
from getfeedfile, the download without credentials, and the rows checked
against GET messages. Signed links that were tampered with or have expired
are refused."""

import csv
import datetime
import io
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest_twisted
from twisted.internet import reactor, threads

from harness.api import ApiClient
from harness.inprocess import CallWatcher
from siprecd.export.signing import load_key, sign
from siprecd.testing.asr import KO_LANGUAGE
from test_api import call, place_call, start_tree

SIPRECD = str(Path(sys.executable).parent / "siprecd")
LISTINGS = "/fileexporter/v1/static/"


def post(client, name, body=None):
    return call(client, "post", LISTINGS + name, body or {})


@pytest_twisted.ensureDeferred
async def test_calls_to_export_to_signed_download_match_get_messages(tmp_path):
    tree = await start_tree(tmp_path)
    watcher = CallWatcher(tree.root)
    placed = None
    try:
        app = tree.app
        placed = place_call(tree, tmp_path, seconds=12)
        session = await watcher.offered.get()
        guid = session.guid.value
        started = await call(app, "start", guid, autotranscribeParams={"language": KO_LANGUAGE})
        assert started.status == 200, started.body
        await watcher.ended.get()
        await placed
        placed = None
        await tree.root.node.transcription.drain()       # the last utterances stored
        messages = (await call(
            app, "get", f"/conversation/v1/conversation/messages?externalId={guid}")).body["items"]
        assert messages, "a 12 s call with speech gives utterances"

        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        built = await threads.deferToThread(
            subprocess.run, [SIPRECD, "export", "-c", str(tree.path), "--date", today],
            capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stderr
        assert f"{len(messages)} rows" in built.stdout + built.stderr

        assert (await post(app, "listfeeds")).body == {"feeds": ["utterances"]}
        versions = (await post(app, "listfeedversions", {"feed": "utterances"})).body
        assert versions == {"versions": ["1"]}
        formats = (await post(app, "listfeedformats",
                              {"feed": "utterances", "version": "version=1"})).body
        assert formats == {"formats": ["jsonl", "csv"]}
        where = {"feed": "utterances", "version": "1", "format": "format=jsonl"}
        dates = (await post(app, "listfeeddates", where)).body["dates"]
        assert today in dates
        where["date"] = f"dt={today}"
        intervals = (await post(app, "listfeedintervals", where)).body["intervals"]
        assert intervals and all(i.startswith("hr=") for i in intervals)

        rows = []
        for fmt in ("jsonl", "csv"):
            for interval in intervals:
                spot = dict(where, format=fmt, interval=interval)
                files = (await post(app, "listfeedfiles", spot)).body["files"]
                for name in files:
                    got = await post(app, "getfeedfile", dict(spot, fileName=name))
                    assert got.status == 200, got.body
                    url = urlsplit(got.body["url"])
                    # The link works without credentials, until it expires.
                    anyone = ApiClient(tree.port, tree.cert)
                    data = await call(anyone, "get", f"{url.path}?{url.query}")
                    assert data.status == 200
                    raw = data.body if isinstance(data.body, bytes) else json.dumps(data.body)
                    text = raw.decode() if isinstance(raw, bytes) else raw
                    if fmt == "jsonl":
                        rows += [json.loads(line) for line in text.splitlines() if line]
                    else:
                        csv_rows = list(csv.DictReader(io.StringIO(text)))
                        assert [r["messageId"] for r in csv_rows] == \
                            [r["messageId"] for r in rows[-len(csv_rows):]]
        mine = [r for r in rows if r["externalConversationId"] == guid]
        assert [r["messageId"] for r in mine] == [m["messageId"] for m in messages]
        for row, message in zip(mine, messages):
            assert row["text"] == message["text"]
            assert (row["startMs"], row["endMs"]) == (message["start"], message["end"])
            assert row["role"] == message["sender"]["role"]
            assert row["senderExternalId"] == message["sender"]["externalId"]
            assert row["createdTimestamp"] == message["createdTimestamp"]

        # -- signed links refused ---------------------------------------------------------
        spot = dict(where, interval=intervals[0])
        name = (await post(app, "listfeedfiles", spot)).body["files"][0]
        url = urlsplit((await post(app, "getfeedfile", dict(spot, fileName=name))).body["url"])
        anyone = ApiClient(tree.port, tree.cert)
        query = parse_qs(url.query)
        other_path = url.path.replace("format%3Djsonl", "format%3Dcsv").replace(".jsonl", ".csv")
        assert other_path != url.path
        tampered_path = await call(anyone, "get", f"{other_path}?{url.query}")
        assert (tampered_path.status, tampered_path.code) == (403, "403-01")
        assert "(path)" in tampered_path.body["error"]["message"]
        later = dict(query, expires=[str(int(query["expires"][0]) + 3600)])
        tampered_expiry = await call(anyone, "get", f"{url.path}?{urlencode(later, doseq=True)}")
        assert (tampered_expiry.status, tampered_expiry.code) == (403, "403-01")
        assert "(expiry)" in tampered_expiry.body["error"]["message"]
        key = load_key(tmp_path / "state" / "export-link.key", create=False)
        decoded = "/fileexporter/v1/download/" + url.path.split("/fileexporter/v1/download/")[1]
        from urllib.parse import unquote

        past = sign(unquote(decoded), int(reactor.seconds()) - 10, key)
        expired = await call(anyone, "get", f"{url.path}?{urlencode(past)}")
        assert (expired.status, expired.code) == (403, "403-01")
        assert "(expired)" in expired.body["error"]["message"]
        unsigned = await call(anyone, "get", url.path)
        assert (unsigned.status, unsigned.code) == (403, "403-01")

        # -- bad listing requests -------------------------------------------------------
        bad = await post(app, "listfeeddates", dict(where, format="format=../../etc"))
        assert (bad.status, bad.code) == (400, "400-01")
        missing = await post(app, "listfeedintervals", dict(where, date="dt=1999-01-01"))
        assert (missing.status, missing.code) == (404, "404-01")
        no_body = await call(app, "post", LISTINGS + "listfeedversions", raw=b"{oops")
        assert (no_body.status, no_body.code) == (400, "400-01")
    finally:
        if placed is not None:
            for s in list(tree.root.node.sip_server.calls.values()):
                tree.root.node.sip_server.hang_up(s, "test over")
        await tree.root.stopService()
        if placed is not None:
            await placed
