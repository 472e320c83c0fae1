"""Drills: the disk under SQLite fills up; PostgreSQL restarts and drops
connections in the middle of a call.

Both run the daemon's service tree in this process (the real tree, real
sockets, real storage; harness.inprocess) so that they can wait
on each utterance being stored (the transcription service's ``on_stored``
hook) rather than on log lines at debug level.

The disk is a real tmpfs when this process may mount one (root with
CAP_SYS_ADMIN); otherwise, or with ``SIPRECD_DRILL_NO_TMPFS=1``, SQLite's
``max_page_count`` stands in for it. PostgreSQL is a cluster of the drills'
own (``SIPRECD_DRILL_POSTGRES_PORT``, default 55442), stopped at the end.
"""

import os
import re

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from harness import drills
from harness.api import ApiClient
from harness.inprocess import start_service_tree

STORE_FAILED = r"storing an utterance of stream \S+ failed"
LOST = r"utterance \S+ of stream \S+ could not be stored"


class Stored:
    """Every utterance the tree stores, as it is stored."""

    def __init__(self, root):
        self.messages = []
        self._waiters = []
        service = root.node.transcription

        def on_stored(message, now_ms):
            self.messages.append(message)
            for waiter in list(self._waiters):
                count, d = waiter
                if len(self.messages) >= count:
                    self._waiters.remove(waiter)
                    reactor.callLater(0, d.callback, list(self.messages))

        service.on_stored.add(on_stored)

    def wait(self, count, timeout=30.0):
        """Fires once *count* utterances in all have been stored."""
        if len(self.messages) >= count:
            return defer.succeed(list(self.messages))
        d = defer.Deferred()
        self._waiters.append((count, d))
        return d.addTimeout(timeout, reactor)


async def start_tree(tmp_path, receiver, **sections):
    root, cfg = await start_service_tree(
        tmp_path, reactor, asr={"backend": "drill"}, media=drills.media_ports(),
        webhooks={"targets": {"crm": {"url": receiver.url("/hook"),
                                      "ca_bundle": str(tmp_path / "pki" / "ca.pem")}},
                  "backoff_initial": "0.2s", "backoff_max": "1s", "poll_interval": "0.5s"},
        **sections)
    app, secret = await root.node.storage.create_app("crm")
    state = root.config.state_dir
    api = ApiClient(cfg["api"]["port"], state / "tls" / "api-selfsigned.crt", app.api_id, secret)
    return root, cfg, api


async def still_answering(cfg, api, guid):
    """SIP OPTIONS over UDP and TCP, /v1/health and GET messages; returns
    (statuses, the messages listed)."""
    udp = await threads.deferToThread(drills.sip_options, "127.0.0.1", cfg["sip"]["udp"]["port"])
    tcp = await threads.deferToThread(drills.sip_options, "127.0.0.1", cfg["sip"]["tcp"]["port"],
                                      "tcp")
    health = await threads.deferToThread(api.get, "/v1/health")
    listed = await threads.deferToThread(
        api.get, f"/conversation/v1/conversation/messages?externalId={guid}")
    return (udp, tcp, health.status, listed.status), listed.body.get("items", [])


def check_stored(found, seen):
    """Every utterance seen stored is there, unchanged; sequences have no
    gaps. Returns the ids missing."""
    by_id = {m.id: m for m in found}
    missing = [m.id for m in seen if m.id not in by_id or by_id[m.id].text != m.text]
    for stream in {m.stream_id for m in found}:
        sequences = sorted(m.sequence for m in found if m.stream_id == stream)
        assert sequences == list(range(1, len(sequences) + 1)), sequences
    return missing


# -- disk full ------------------------------------------------------------------------


class PageLimit:
    """Where no tmpfs can be mounted: SQLite's max_page_count on the
    daemon's writer connection caps the file exactly as a full disk would
    (SQLITE_FULL), as tests/test_storage_failures.py does."""

    def __init__(self, storage):
        self.storage = storage

    async def fill(self):
        pages = await self.storage._write(lambda tx: tx.value("PRAGMA page_count"))
        await self.storage._write(lambda tx: tx.execute(f"PRAGMA max_page_count = {pages}"))

    async def free(self):
        await self.storage._write(lambda tx: tx.execute("PRAGMA max_page_count = 1073741823"))


@pytest.fixture
def disk(tmp_path):
    """A real small file system for the state folder when this process
    may mount one (root with CAP_SYS_ADMIN, as in the CI container); else
    None, and the drill caps SQLite's file size instead."""
    possible, why = drills.SmallDisk.possible()
    if os.environ.get("SIPRECD_DRILL_NO_TMPFS"):
        possible, why = False, "SIPRECD_DRILL_NO_TMPFS is set"
    if not possible:
        print(f"disk-full drill: no tmpfs ({why}); using SQLite's max_page_count")
        yield None
        return
    small = drills.SmallDisk(tmp_path / "disk", size_mb=24).mount()
    try:
        yield small
    finally:
        small.unmount()


@pytest_twisted.ensureDeferred
async def test_disk_full_under_sqlite(tmp_path, disk, asr_plugin, authority, receiver):
    """Promise: when the disk under SQLite fills up in the middle of a
    transcribed call, the utterances stored before stay, each failing write
    is logged clearly and retried, the daemon keeps answering SIP (UDP and
    TCP) and the API (health, messages), and storing resumes when space
    comes back. Measured too: what a full disk lasting longer than the
    retries (0.5+1+2+4 s) costs."""
    sections = {"state_dir": str(disk.path / "state")} if disk is not None else {}
    with drills.LogWatch(reactor) as logs:
        root, cfg, api = await start_tree(tmp_path, receiver, **sections)
        stored = Stored(root)
        filler = disk if disk is not None else PageLimit(root.node.storage)
        how = (f"a {disk.size_mb} MiB tmpfs under state_dir filled to the last byte"
               if disk is not None else "SQLite max_page_count = current size")
        placed = None
        try:
            guid, placed = await drills.place_call(reactor, cfg["sip"]["tcp"]["port"], 90.0)
            started = await threads.deferToThread(api.start, guid, "cust-1", "agent-1")
            assert started.status == 200, started.body
            before = await stored.wait(3)

            # Short outage: full until the first failed write is logged and
            # SIP and the API have been asked, then space again.
            mark = len(logs.events)
            await defer.maybeDeferred(filler.fill)
            # (With max_page_count a write fails only once the file must
            # grow: a few utterances later than on a full disk.)
            failed = await logs.wait_for(STORE_FAILED, timeout=40, after=mark)
            during, listed = await still_answering(cfg, api, guid)
            await defer.maybeDeferred(filler.free)
            at_free = len(stored.messages)
            after_short = await stored.wait(at_free + 3)
            assert [e for e in logs.events[mark:] if "could not be stored" in e[2]] == []

            # Long outage: full until an utterance has been refused five
            # times (~7.5 s: past what retries used to cover).
            mark = len(logs.events)
            await defer.maybeDeferred(filler.fill)
            long_line = await logs.wait_for(r"trying again in \S+ s \(attempt 5\)", timeout=60,
                                            after=mark)
            during_long, _ = await still_answering(cfg, api, guid)
            await defer.maybeDeferred(filler.free)
            count = len(stored.messages)
            await stored.wait(count + 2)
            # siprecd hangs up (BYE): the call's end and its stats are stored too.
            await root.node.sip_server.hang_up(root.node.calls.get(guid), "drill over")
            summary = await placed.addTimeout(30, reactor)
            placed = None
            await root.node.transcription.drain()
            found = await root.node.storage.messages_for_guid(guid)
            streams = await root.node.storage.streams_for_guid(guid)
        finally:
            if placed is not None:
                placed.cancel()
            await root.stopService()

    state = str(root.config.state_dir)

    def said(event):
        return re.sub(r"[0-9a-f-]{36}", "<id>", event[2].replace(state, "<state_dir>"))

    missing = check_stored(found, stored.messages)
    listed_ids = {m["messageId"] for m in listed}
    lost_lines = logs.matching(LOST)
    retry_lines = logs.matching(STORE_FAILED)
    lost_stats = sum((s.stats or {}).get("lostTranscripts", 0) for s in streams)
    heartbeat = logs.matching(r"cluster: heartbeat failed")
    outcome_lost = logs.matching(r"could not be stored: .*lease runs out")
    drills.record(
        f"disk full under SQLite ({how}) mid-call: a short outage, then one longer than the "
        "store retries",
        f"failed writes logged as warnings and retried 0.5/1/2/4/8 s then every 10 s "
        f"('{said(failed)}'); "
        f"SIP OPTIONS UDP/TCP, /v1/health, GET messages answered {during} while full "
        f"(short) and {during_long} (long); {len(before)} utterances stored before the fill "
        f"all listed while full and kept; storing resumed when space came back "
        f"({len(after_short) - at_free} more at once); {len(retry_lines)} retry warnings, "
        f"{len(heartbeat)} heartbeat warnings, {len(outcome_lost)} webhook outcomes not "
        f"recordable (those rows wait for their 60 s lease, then are sent again)",
        f"nothing stored before was lost ({len(missing)} missing); short outage: nothing; "
        f"long outage (> 7.5 s, retries go on with capped backoff: '{said(long_line)}'): "
        f"{len(lost_lines)} utterances dropped, lostTranscripts {lost_stats} in the stream "
        f"stats")
    assert missing == []
    assert set(m.id for m in before) <= listed_ids
    assert during == (200, 200, 200, 200)
    assert during_long == (200, 200, 200, 200)
    assert lost_lines == [] and lost_stats == 0
    assert summary.calls[0].answered and summary.calls[0].ended_by == "srs"


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drill_postgres():
    """The drills' own cluster (scripts/test-postgres on its own port and
    folder): restarting it disturbs no other test running at the time."""
    server = drills.DrillPostgres()
    server.start()
    yield server
    server.stop()


@pytest_twisted.ensureDeferred
async def test_postgresql_restarted_and_connections_killed_mid_call(
        tmp_path, drill_postgres, asr_plugin, authority, receiver):
    """Promise: when PostgreSQL restarts in the middle of a transcribed call
    (pg_ctl restart -m fast), and again when its connections are killed
    (pg_terminate_backend), the call goes on, no stored utterance is lost,
    the writes in flight are retried, later utterances are stored once the
    database is back, and every stored utterance is delivered to the
    webhook."""
    dsn = await threads.deferToThread(drill_postgres.database)
    try:
        with drills.LogWatch(reactor) as logs:
            root, cfg, api = await start_tree(
                tmp_path, receiver,
                storage={"backend": "postgresql",
                         "postgresql": {"dsn": dsn, "pool_min": 2, "pool_max": 4}})
            stored = Stored(root)
            placed = None
            try:
                guid, placed = await drills.place_call(reactor, cfg["sip"]["tcp"]["port"], 14.0)
                started = await threads.deferToThread(api.start, guid, "cust-1", "agent-1")
                assert started.status == 200, started.body
                before = await stored.wait(3)
                await threads.deferToThread(drill_postgres.restart)
                after_restart = await stored.wait(len(stored.messages) + 3)
                killed = await threads.deferToThread(drill_postgres.terminate, dsn)
                after_kill = await stored.wait(len(stored.messages) + 3)
                status = await threads.deferToThread(
                    drills.sip_options, "127.0.0.1", cfg["sip"]["udp"]["port"])
                summary = await placed.addTimeout(40, reactor)
                placed = None
                await root.node.transcription.drain()
                found = await root.node.storage.messages_for_guid(guid)
                call = await root.node.storage.get_call_by_guid(guid)
                await receiver.wait_for(lambda r: {x.json["messageId"] for x in r.accepted}
                                    >= {m.id for m in found}, timeout=30)
            finally:
                if placed is not None:
                    placed.cancel()
                await root.stopService()
    finally:
        await threads.deferToThread(drill_postgres.drop, dsn)

    missing = check_stored(found, stored.messages)
    lost = logs.matching(LOST)
    retried = logs.matching(STORE_FAILED)
    errors = [e for e in logs.events if e[0] in ("error", "critical")]
    reconnects = logs.matching(r"postgresql storage: .*; retrying in")
    drills.record(
        "PostgreSQL restarted (pg_ctl restart -m fast) and then its connections killed "
        "(pg_terminate_backend) mid-call",
        f"call went on to its own BYE ({summary.calls[0].bye_status}); {len(before)} "
        f"utterances stored before the restart, {len(after_restart) - len(before)} more "
        f"after it, {len(after_kill) - len(after_restart)} more after {killed} connections "
        f"were killed; {len(reconnects)} storage-level retries logged"
        f"{' (e.g. ' + repr(reconnects[0][2][:140]) + ')' if reconnects else ''}, "
        f"{len(retried)} utterance store retries; call ended in the database "
        f"({call.state}, {call.end_reason!r}); all {len(found)} stored utterances delivered "
        f"to the webhook; OPTIONS {status}; {len(errors)} error lines",
        f"nothing: {len(missing)} stored utterances missing, {len(lost)} dropped")
    assert missing == [] and lost == []
    assert summary.ok, summary.format()
    assert call.state == "ended" and status == 200
    assert killed >= 1
    assert errors == [], errors
