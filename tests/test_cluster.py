"""Two nodes sharing one PostgreSQL, in this process: heartbeats, start/stop
sent to the node that does not have the call (forwarded over internal
HTTPS to the owner), a dead node's calls ended by the survivor (and their
SBC sent a BYE from the stored dialog), a node's
own calls from before a restart ended, drain. Real sockets, real TLS with
certificates from a throwaway CA, a real SIPREC call from the simulator.
(tests/test_scale_out.py runs the same with Kamailio and subprocesses.)"""

import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from harness.api import ApiClient, create_app
from harness.inprocess import CallWatcher, start_service_tree
from harness.pki import Authority
from siprecd.cluster import ClusterService
from siprecd.storage.records import Call
from siprecd.storage.sqlite import SqliteStorage
from test_api import call, place_call

SECRET = "a-cluster-secret-for-tests"
SIPRECD = str(Path(sys.executable).parent / "siprecd")


def node_sections(name, dsn, pki):
    return {
        "node": {"id": name, "shutdown_grace": "2s"},
        "storage": {"backend": "postgresql", "postgresql": {"dsn": dsn}},
        "api": {"certificate": str(pki[name].certificate_path),
                "private_key": str(pki[name].key_path)},
        "cluster": {"secret": SECRET, "ca_bundle": str(pki["ca"]),
                    "heartbeat_interval": "0.5s", "dead_after": "3s"},
    }


@pytest_twisted.ensureDeferred
async def test_start_and_stop_through_the_node_without_the_call(tmp_path, postgres_schema):
    ca = Authority("cluster test CA", tmp_path / "pki")
    pki = {"ca": tmp_path / "pki" / "ca.pem",
           "node-a": ca.issue_server(("localhost", "127.0.0.1"), name="node-a"),
           "node-b": ca.issue_server(("localhost", "127.0.0.1"), name="node-b")}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a, cfg_a = await start_service_tree(tmp_path / "a", reactor,
                                        **node_sections("node-a", postgres_schema, pki))
    b, cfg_b = await start_service_tree(tmp_path / "b", reactor,
                                        **node_sections("node-b", postgres_schema, pki))
    placed = None
    try:
        # The nodes advertise where their API is, and see each other.
        await a.node.cluster.beat()
        live = {n.id: n.address for n in await b.node.storage.live_nodes(3000)}
        assert live["node-a"] == f"https://127.0.0.1:{cfg_a['api']['port']}"
        assert set(live) == {"node-a", "node-b"}

        api_id, secret = await threads.deferToThread(create_app, tmp_path / "a" / "siprecd.yaml")
        via_a = ApiClient(cfg_a["api"]["port"], pki["ca"], api_id, secret)
        via_b = ApiClient(cfg_b["api"]["port"], pki["ca"], api_id, secret)

        watcher = CallWatcher(a)

        class Tree:
            written = cfg_a

        placed = place_call(Tree, tmp_path, seconds=30)
        session = await watcher.offered.get()
        guid = session.guid.value
        # The other listeners of the offer run once this one returns; then
        # the call is stored (before the 200 OK), where B can find it.
        await task.deferLater(reactor, 0, lambda: None)
        await a.node.transcription.calls.conversation(guid).sessions[0].stored.wait()

        started = await call(via_b, "start", guid, autotranscribeParams={"language": "ko"})
        assert started.status == 200, started.body
        assert a.node.transcription.is_streaming(guid) and not b.node.transcription.is_active(guid)
        again = await call(via_b, "start", guid, autotranscribeParams={"language": "ko"})
        assert again.code == "409-201"          # the owner's own answer, passed on
        stopped = await call(via_b, "stop", guid)
        assert stopped.status == 200, stopped.body
        assert stopped.body["autotranscribeResponse"]["customer"]["streamId"] == \
            started.body["autotranscribeResponse"]["customer"]["streamId"]
        assert (await call(via_b, "start", "no-such-guid",
                           autotranscribeParams={"language": "ko"})).code == "400-203"
        # Without the cluster secret nobody gets in by the internal door.
        forged = ApiClient(cfg_a["api"]["port"], pki["ca"])
        answer = await call(forged, "post", "/internal/v1/stop-streaming",
                            {"app": {"apiId": api_id}, "request": {"namespace": "siprec",
                                                                   "guid": guid}},
                            headers={"x-siprecd-cluster-secret": "wrong" * 5})
        assert answer.code == "401-01"
        assert a.node.transcription.is_active(guid)

        # Drain node A: OPTIONS and new calls refused, the call goes on.
        drained = await threads.deferToThread(
            subprocess.run, [SIPRECD, "drain", "-c", str(tmp_path / "a" / "siprecd.yaml")],
            capture_output=True, text=True, timeout=30)
        assert drained.returncode == 0, drained.stderr
        assert a.node.drain.draining and a.node.sip_server.draining
        health = await call(via_a, "get", "/v1/health")
        assert health.code == "503-01" and "drain" in health.body["pending"]
        resumed = await call(via_b, "start", guid, autotranscribeParams={"language": "ko"})
        assert resumed.status == 200

        # Node A falls silent (its heartbeats stop): B ends its calls.
        reaped = defer.Deferred()
        b.node.cluster.on_reaped.add(lambda node, guids: reaped.called or reaped.callback(node))
        a.node.cluster.stopService()
        stored = await b.node.storage.get_call_by_guid(guid)
        assert stored.state == "active" and stored.node == "node-a"
        assert await reaped.addTimeout(15, reactor) == "node-a"
        ended = await b.node.storage.get_call_by_guid(guid)
        assert ended.end_reason == "node lost"
        assert guid in b.node.cluster.reaped["node-a"][1]
        answer = await call(via_b, "stop", guid)
        assert answer.code == "400-203"
        # ... and tells the SBC: the survivor sends a BYE in the dead node's
        # dialog, and the simulated SBC ends the call on it.
        summary = await placed.addTimeout(15, reactor)
        placed = None
        assert summary.calls[0].ended_by == "srs", summary.calls[0].problems
        (node, reason, statuses), = b.node.orphans.results
        assert (node, reason, list(statuses.values())) == ("node-a", "node lost", [200])
        print(f"\nnode lost: {len(statuses)} BYE sent by the survivor, answered "
              f"{list(statuses.values())}")
    finally:
        await b.stopService()
        await a.stopService()
        if placed is not None:
            await placed


@pytest_twisted.ensureDeferred
async def test_a_restarted_node_ends_the_calls_it_had(tmp_path):
    storage = SqliteStorage(reactor, tmp_path / "db.sqlite")
    await storage.open()
    try:
        await storage.upsert_call(Call("g-old", "c1", "node-a", 1))
        await storage.upsert_call(Call("g-other", "c2", "node-b", 1))
        clock = task.Clock()
        clock.advance(1000)
        cluster = ClusterService(storage, "node-a", clock, "https://a:8443", 1.0, 5.0)
        await cluster.startService()
        assert (await storage.get_call_by_guid("g-old")).end_reason == "node restarted"
        assert (await storage.get_call_by_guid("g-other")).state == "active"
        cluster.stopService()
    finally:
        await storage.close()

