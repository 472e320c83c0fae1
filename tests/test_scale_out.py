"""Scale-out, as it is deployed: Kamailio (the Debian package, with
contrib/kamailio/kamailio.cfg) in front of two siprecd nodes that share one
PostgreSQL, each with its own node.id, SIP, API and media ports, and an API
certificate from one test CA that the nodes also use to verify each other.

One test walks through the life of such a cluster:

1. 20 SIPREC calls (Korean speech, some on hold for a while: re-INVITEs)
   over UDP and TCP through Kamailio spread over both nodes (hash over
   Call-ID), and the calls table says which node has each.
2. start-streaming and stop-streaming sent to the node that does NOT have
   the call are forwarded to the owner: 200, and the call's utterances end
   up stored (and readable from either node).
3. The node with the first call is killed (SIGKILL) while it transcribes.
   Kamailio's OPTIONS probe marks it inactive and new calls go to the
   survivor; a Kamailio that has not probed yet fails over to the survivor
   when the dead node does not answer the INVITE (UDP: no answer; TCP:
   connection refused). The survivor keeps serving its calls (start/stop
   and utterances), every utterance the dead node had stored is still read
   through the survivor, and the dead node's calls are marked ended within
   cluster.dead_after plus a margin; the survivor sends their SBCs a BYE
   (through Kamailio, from the dialogs the dead node stored), so none of
   them streams on to a node that is gone.
4. The survivor drains (SIGUSR1): Kamailio's probe takes it out too and new
   calls are refused (503), while its calls go on to their end.

Every wait is on an event (a log line, a call being answered) or a polling
loop on the API or the database with a deadline.
"""

import re
import signal
import time

import numpy as np
import psycopg
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from harness.api import ApiClient, create_app
from harness.daemon import Daemon, write_config
from harness.kamailio import Kamailio, node_uri
from harness.pki import Authority
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech

SECRET = "scale-out-cluster-secret-0123456789"
NODES = ("node-a", "node-b")
DEAD_AFTER = 3.0            # cluster.dead_after of both nodes, seconds
REAP_MARGIN = 8.0           # ... plus heartbeats, the reaper lease, polling
CALL_SECONDS = 45.0         # long enough for everything below to happen mid-call
FIRST_CALLS = 20
TCP_CALLS = 6               # of the first calls, placed over TCP; the rest UDP


class Answered:
    """Collects guids from on_call_answered; waits for a number of them."""

    def __init__(self):
        self.guids = []
        self._waiting = []

    def __call__(self, result):
        self.guids.append(result.guid)
        for count, d in list(self._waiting):
            if len(self.guids) >= count:
                self._waiting.remove((count, d))
                d.callback(list(self.guids))

    def wait(self, count, timeout):
        if len(self.guids) >= count:
            return defer.succeed(list(self.guids))
        d = defer.Deferred()
        self._waiting.append((count, d))
        return d.addTimeout(timeout, reactor)


async def poll(what, fetch, done, timeout, interval=0.25):
    """Call blocking *fetch* in a thread until *done(value)*; the value, or
    AssertionError with the last one after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await threads.deferToThread(fetch)
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s; last: {value!r}")
        await task.deferLater(reactor, interval, lambda: None)


def calls_table(dsn, guids):
    """{guid: (node, state, end_reason)} from the shared calls table."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT guid, node, state, end_reason FROM calls WHERE guid = ANY(%s)",
            (list(guids),)).fetchall()
    return {guid: (node, state, reason) for guid, node, state, reason in rows}


def stored_messages(dsn, guid):
    """{messageId: text} of a call, straight from the shared database."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, text FROM messages WHERE call_guid = %s",
                            (guid,)).fetchall()
    return dict(rows)


def messages_of(api, guid):
    answer = api.get(f"/conversation/v1/conversation/messages?externalId={guid}")
    assert answer.status == 200, answer.body
    return {m["messageId"]: m["text"] for m in answer.body["items"]}


def status_of(api, guid):
    answer = api.get(f"/conversation/v1/conversations?externalId={guid}")
    assert answer.status == 200, answer.body
    conversations = answer.body["conversations"]
    return conversations[0]["status"] if conversations else None


def start(api, guid):
    return api.start(guid, "cust-1", "agent-1", autotranscribeParams={"language": KO_LANGUAGE})


def transcripts(answer):
    return sum(p["summary"]["transcripts"]
               for p in answer.body["autotranscribeResponse"].values())


@pytest_twisted.ensureDeferred
async def test_two_nodes_behind_kamailio(tmp_path, postgres_schema):
    dsn = postgres_schema
    ca = Authority("scale-out test CA", tmp_path / "pki")
    nodes, configs = {}, {}
    for i, name in enumerate(NODES):
        cert = ca.issue_server(("127.0.0.1", "localhost"), name=name)
        (tmp_path / name).mkdir()
        path, cfg = write_config(
            tmp_path / name,
            node={"id": name, "shutdown_grace": "2s"},
            cluster={"secret": SECRET, "ca_bundle": str(ca.certificate_path),
                     "heartbeat_interval": "500ms", "dead_after": f"{DEAD_AFTER:g}s"},
            storage={"backend": "postgresql", "postgresql": {"dsn": dsn}},
            api={"certificate": str(cert.certificate_path),
                 "private_key": str(cert.key_path)},
            # Both nodes on 127.0.0.1: media port ranges of their own.
            media={"port_min": 20000 + 5000 * i, "port_max": 24998 + 5000 * i},
        )
        configs[name] = (path, cfg)
        nodes[name] = Daemon(path)
    kamailios = []
    placing = []
    try:
        for daemon in nodes.values():
            daemon.start()
        for daemon in nodes.values():
            await threads.deferToThread(daemon.wait_ready, 120)
        # One app, in the shared database: good on every node.
        api_id, api_secret = await threads.deferToThread(create_app, configs["node-a"][0], None)
        api = {name: ApiClient(cfg["api"]["port"], ca.certificate_path, api_id, api_secret)
               for name, (_, cfg) in configs.items()}
        sip_port = {name: cfg["sip"]["udp"]["port"] for name, (_, cfg) in configs.items()}
        uri = {name: node_uri("127.0.0.1", port) for name, port in sip_port.items()}

        # The Kamailio under test: hash over Call-ID, OPTIONS every second.
        kam = Kamailio(tmp_path / "kamailio", [uri[n] for n in NODES],
                       ping_interval=1, fr_timer=1000)
        # Two that never probe and try node-a first: the only way a call
        # gets to node-b through them is failover, after node-a dies. One
        # sends the INVITE over UDP (no answer: failure_route on timeout),
        # the other over TCP (connection refused: the next node at once).
        kam_udp = Kamailio(tmp_path / "kamailio-failover-udp",
                           [(uri["node-a"], 10), (uri["node-b"], 5)],
                           algorithm=8, ping_interval=0, fr_timer=1000, defines={"UDP_MTU": 0})
        kam_tcp = Kamailio(tmp_path / "kamailio-failover-tcp",
                           [(node_uri("127.0.0.1", sip_port["node-a"], "tcp"), 10),
                            (node_uri("127.0.0.1", sip_port["node-b"], "tcp"), 5)],
                           algorithm=8, ping_interval=0, fr_timer=1000)
        kamailios += [kam, kam_udp, kam_tcp]
        for k in kamailios:
            k.start()
        for k in kamailios:
            await threads.deferToThread(k.wait_ready, 30)

        said = korean_speech("안녕하세요 카드 번호를 알려 주세요 감사합니다", tmp_path / "ko.wav")
        speech = np.concatenate([said, np.zeros(12000, dtype=np.int16)])

        def call(seconds, hold=None):
            return CallSpec(customer=speech, agent=speech[::-1].copy(), duration=seconds,
                            hold=hold)

        def place(k, specs, transport="udp", answered=None):
            d = place_calls(reactor, Target("127.0.0.1", k.port, transport), specs,
                            local_host="127.0.0.1", media_host="127.0.0.1", rate=20,
                            answer_timeout=4, on_call_answered=answered)
            placing.append(d)
            return d

        # -- 1. twenty calls through Kamailio, over both nodes ------------------
        first = Answered()
        specs = [call(CALL_SECONDS, hold=(2.0, 1.0) if i % 7 == 3 else None)
                 for i in range(FIRST_CALLS)]
        udp_calls = place(kam, specs[TCP_CALLS:], "udp", first)
        tcp_calls = place(kam, specs[:TCP_CALLS], "tcp", first)
        guids = await first.wait(FIRST_CALLS, 30)
        owners = await poll("every call in the calls table",
                            lambda: calls_table(dsn, guids),
                            lambda rows: len(rows) == FIRST_CALLS, 15)
        on = {name: [g for g in guids if owners[g][0] == name] for name in NODES}
        print({name: len(gs) for name, gs in on.items()})
        assert on["node-a"] and on["node-b"], f"the hash put every call on one node: {on}"
        assert all(state == "active" for _, state, _ in owners.values())
        routed = await threads.deferToThread(kam.wait_count, "new call .* to node ",
                                             FIRST_CALLS, 10)
        for name in NODES:
            assert sum(line.endswith(f"to node {uri[name]}") for line in routed) == len(on[name])

        # -- 2. start/stop sent to the node that does not have the call ---------
        x, y = on["node-a"][0], on["node-b"][0]
        elsewhere = {x: "node-b", y: "node-a"}
        for guid, entry in elsewhere.items():
            started = await threads.deferToThread(start, api[entry], guid)
            assert started.status == 200, (guid, entry, started.body)
            assert set(started.body["autotranscribeResponse"]) == {"customer", "agent"}
        for guid, entry in elsewhere.items():
            # Stored by the owner; read through the node that forwarded.
            await poll(f"an utterance of {guid} stored", lambda: messages_of(api[entry], guid),
                       bool, 40)
        for guid, entry in elsewhere.items():
            stopped = await threads.deferToThread(api[entry].stop, guid)
            assert stopped.status == 200, (guid, entry, stopped.body)
            count = transcripts(stopped)
            assert count >= 1
            # Both nodes read the same utterances, all that the owner counted.
            await poll(f"the {count} utterances of {guid} on both nodes",
                       lambda: [messages_of(api[n], guid) for n in NODES],
                       lambda m: m[0] == m[1] and len(m[0]) == count, 15)

        # -- 3. node-a dies mid-call while it transcribes x ---------------------
        resumed = await threads.deferToThread(start, api["node-b"], x)
        assert resumed.status == 200, resumed.body
        before_stop = await threads.deferToThread(messages_of, api["node-a"], x)
        await poll(f"a new utterance of {x} after the resume",
                   lambda: messages_of(api["node-a"], x),
                   lambda m: len(m) > len(before_stop), 40)
        stored_before_death = await threads.deferToThread(messages_of, api["node-a"], x)
        nodes["node-a"].proc.kill()
        killed_at = time.monotonic()
        nodes["node-a"].proc.wait(10)

        async def all_ended():
            """Seconds from the kill until node-b says every call of node-a ended."""
            await poll("the dead node's calls ended (seen from node-b)",
                       lambda: [status_of(api["node-b"], g) for g in on["node-a"]],
                       lambda states: set(states) == {"ended"}, DEAD_AFTER + REAP_MARGIN)
            return time.monotonic() - killed_at

        reaped = defer.ensureDeferred(all_ended())

        # Kamailio's probe takes node-a out; new calls go to node-b.
        await threads.deferToThread(kam.wait_down, uri["node-a"], 10)
        print(f"node-a inactive in Kamailio after {time.monotonic() - killed_at:.1f}s")
        states = await threads.deferToThread(kam.destinations)
        assert states[uri["node-a"]].startswith("I") and states[uri["node-b"]].startswith("A")
        late = Answered()
        late_calls = place(kam, [call(20.0, hold=(2.0, 1.0)) for _ in range(4)], "udp", late)
        failover = Answered()
        failover_udp = place(kam_udp, [call(8.0)], "udp", failover)
        failover_tcp = place(kam_tcp, [call(8.0)], "udp", failover)
        late_guids = await late.wait(4, 30)
        failover_guids = await failover.wait(2, 30)
        rows = await poll("the new calls in the calls table",
                          lambda: calls_table(dsn, late_guids + failover_guids),
                          lambda r: len(r) == 6, 15)
        assert {node for node, _, _ in rows.values()} == {"node-b"}, rows
        # ... and through the Kamailios that had not noticed, by failover.
        await threads.deferToThread(
            kam_udp.wait_for, f"node {uri['node-a']} did not answer INVITE", 5)
        await threads.deferToThread(kam_tcp.wait_for, "cannot send INVITE .* marked inactive", 5)

        # The survivor serves its calls: old (y, again) and new.
        for guid in (y, late_guids[0]):
            started = await threads.deferToThread(start, api["node-b"], guid)
            assert started.status == 200, (guid, started.body)
        await poll(f"an utterance of {late_guids[0]} stored",
                   lambda: messages_of(api["node-b"], late_guids[0]), bool, 40)
        for guid in (y, late_guids[0]):
            stopped = await threads.deferToThread(api["node-b"].stop, guid)
            assert stopped.status == 200, (guid, stopped.body)

        # node-a's calls are ended by node-b, within dead_after plus a margin.
        print(f"node-a's calls ended {await reaped:.1f}s after the kill")
        rows = await threads.deferToThread(calls_table, dsn, on["node-a"])
        assert {reason for _, state, reason in rows.values()} == {"node lost"}, rows
        gone = await threads.deferToThread(start, api["node-b"], x)
        assert (gone.status, gone.code) == (400, "400-203"), gone.body

        # No utterance is lost: all that node-a stored, read through node-b.
        after = await threads.deferToThread(messages_of, api["node-b"], x)
        assert stored_before_death.items() <= after.items()
        assert after == await threads.deferToThread(stored_messages, dsn, x)

        # -- 4. node-b drains (SIGUSR1): its OPTIONS answer 503, Kamailio takes
        # it out and refuses new calls (no node left), its calls go on. -------
        nodes["node-b"].proc.send_signal(signal.SIGUSR1)
        await threads.deferToThread(kam.wait_down, uri["node-b"], 10)
        refused = await place_calls(reactor, Target("127.0.0.1", kam.port), [call(2.0)],
                                    local_host="127.0.0.1", media_host="127.0.0.1",
                                    answer_timeout=4)
        assert refused.calls[0].status == 503, refused.format()

        # The survivor's calls went on undisturbed (hold and resume by
        # re-INVITE, BYE, all through Kamailio, draining or not); the dead
        # node's were ended by the survivor's BYE.
        results = []
        for placed in (udp_calls, tcp_calls, late_calls, failover_udp, failover_tcp):
            results += (await placed.addTimeout(CALL_SECONDS + 30, reactor)).calls
        placing.clear()
        by_guid = {r.guid: r for r in results}
        told = [g for g in on["node-a"] if by_guid[g].ended_by == "srs"]
        byes = [await threads.deferToThread(
            nodes["node-b"].wait_for,
            rf"sent BYE for call {re.escape(by_guid[g].call_id)} .* node node-a had", 10)
            for g in on["node-a"]]
        print(f"node lost: node-b sent {len(byes)} BYE for the {len(on['node-a'])} calls of "
              f"node-a; {len(told)} SBC calls ended by them")
        assert told == on["node-a"], {g: by_guid[g].problems for g in on["node-a"]}
        survivors = on["node-b"] + late_guids + failover_guids
        bad = {g: by_guid[g].problems for g in survivors if by_guid[g].problems}
        assert not bad, bad
        assert all(by_guid[g].answered for g in guids)
        for guid in late_guids:   # on node-b, through Kamailio: hold and resume
            assert by_guid[guid].hold == [("hold", 200), ("resume", 200)], by_guid[guid].hold
        await threads.deferToThread(nodes["node-b"].terminate, 30)
        assert not any("Traceback" in line for line in nodes["node-b"].lines)
    finally:
        for k in kamailios:
            await threads.deferToThread(k.terminate)
        for daemon in nodes.values():
            if daemon.proc is not None and daemon.proc.poll() is None:
                await threads.deferToThread(daemon.terminate, 30)
        for d in placing:
            await d.addErrback(lambda f: None)
