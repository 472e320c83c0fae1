"""No orphaned dialogs (siprecd.orphans, siprecd.siprec.orphans): each
answered call's dialog is stored, and a BYE built from it goes where
RFC 3261 sends requests in a dialog, retried a bounded number of times,
when the node that had the call restarted or is lost.

On task.Clock with the SIP endpoint's output kept (SentMessages), and the
cluster's hook with real SQLite; the daemon-level drills are in
tests/drills/test_drill_orphans.py.
"""

import attrs
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import Logger

from siprecd.cluster import ClusterService
from siprecd.orphans import DialogKeeper, OrphanReaper, dialog_record
from siprecd.siprec.orphans import CSEQ_MARGIN, OrphanedDialogs
from siprecd.sip.endpoint import Source
from siprecd.sip.message import make_response
from siprecd.storage.records import DialogRecord
from siprecd.storage.sqlite import SqliteStorage
from test_siprec_server import Harness


class Kept:
    """TEST DOUBLE of the storage methods DialogKeeper uses."""

    def __init__(self):
        self.rows = {}

    def save_dialog(self, record, now=None):
        self.rows[record.key] = record
        return defer.succeed(None)

    def forget_dialog(self, call_id, local_tag, remote_tag):
        return defer.succeed(self.rows.pop((call_id, local_tag, remote_tag or ""), None)
                             is not None)


class Listeners:
    """The registry and the keeper, as the node chains them."""

    def __init__(self, *listeners):
        self.listeners = listeners

    def call_offered(self, session):
        return defer.gatherResults([defer.maybeDeferred(lst.call_offered, session)
                                    for lst in self.listeners])

    def call_updated(self, session):
        for lst in self.listeners:
            lst.call_updated(session)

    def call_ended(self, session, reason):
        for lst in self.listeners:
            lst.call_ended(session, reason)


def test_an_answered_call_has_its_dialog_stored_until_it_ends():
    from siprecd.calls import CallRegistry

    kept = Kept()
    h = Harness(listener=Listeners(CallRegistry(), DialogKeeper(kept, "node-a")))
    sample, ok = h.established(
        headers=[("Record-Route", "<sip:proxy.example:5060;lr>")])
    (record,) = kept.rows.values()
    assert (record.call_id, record.local_tag, record.remote_tag) == (
        sample.call_id, ok.to.tag, "src1")
    assert record.route_set == ["<sip:proxy.example:5060;lr>"]
    assert record.remote_target == "sip:src@192.0.2.10:5060"
    assert (record.transport, record.source, record.node) == ("UDP", "192.0.2.10:5060", "node-a")
    assert record.guid == sample.guid
    h.request("BYE", call_id=sample.call_id, cseq=5, to_tag=ok.to.tag)
    assert kept.rows == {}


def _record(h, **kw):
    sample, ok = h.established(headers=[("Record-Route", "<sip:proxy.example:5099;lr>")])
    session = next(iter(h.server.calls.values()))
    record = dialog_record(session, "node-a")
    # The call is gone from this process: a restart forgets it.
    h.server.calls.clear()
    h.wire.pop()
    return sample, ok, attrs.evolve(record, **kw)


def test_the_bye_goes_in_the_dialog_through_its_route_and_its_answer_ends_it():
    h = Harness()
    sample, ok, record = _record(h)
    events = []
    orphans = OrphanedDialogs(h.endpoint, h.clock, h.config)
    orphans.log = Logger(observer=events.append)
    done = orphans.hang_up(record, "node restarted")
    ((destination, bye),) = h.wire.sent
    h.wire.sent.clear()
    assert destination == ("UDP", "proxy.example", 5099)
    assert bye.method == "BYE" and bye.call_id == sample.call_id
    assert bye.uri == "sip:src@192.0.2.10:5060"
    assert bye.headers.get("Route") == "<sip:proxy.example:5099;lr>"
    assert bye.from_.tag == ok.to.tag and bye.to.tag == "src1"
    assert bye.cseq == (record.local_seq + CSEQ_MARGIN + 1, "BYE")
    h.endpoint.receive(make_response(bye, 200), Source("UDP", "192.0.2.99", 5099))
    assert done.called and done.result == 200
    assert len(events) == 1 and "answered 200" in events[0]["outcome"]
    assert orphans.counters == {"dialogs": 1, "byes_sent": 1, "answered": 1, "unanswered": 0}


def test_an_unanswered_bye_is_sent_again_a_bounded_number_of_times():
    h = Harness()
    _, _, record = _record(h, route_set=[])
    orphans = OrphanedDialogs(h.endpoint, h.clock, h.config, attempts=3, backoff=2.0)
    done = orphans.hang_up(record, "node lost")
    cseqs = set()
    for _ in range(200):
        h.clock.advance(1.0)
        cseqs |= {m.cseq[0] for _, m in h.wire.sent}
    assert done.called and done.result == 408
    assert len(cseqs) == 3                        # three transactions, each retransmitted
    assert orphans.counters["byes_sent"] == 3 and orphans.counters["unanswered"] == 1
    assert all(dest == ("UDP", "192.0.2.10", 5060) for dest, _ in h.wire.sent)


def test_over_tcp_the_bye_goes_to_the_remote_target_not_the_old_connection():
    h = Harness()
    _, _, record = _record(h, route_set=[], transport="TCP",
                           remote_target="sip:src@192.0.2.10:5080;transport=tcp",
                           source="192.0.2.10:40123")
    OrphanedDialogs(h.endpoint, h.clock, h.config).hang_up(record, "node restarted")
    ((destination, bye),) = h.wire.sent
    assert destination == ("TCP", "192.0.2.10", 5080)
    assert bye.top_via.transport == "TCP"


@pytest_twisted.ensureDeferred
async def test_a_restart_and_a_dead_node_hand_their_dialogs_to_the_reaper(tmp_path):
    storage = SqliteStorage(reactor, tmp_path / "db.sqlite")
    await storage.open()
    try:
        clock = task.Clock()
        clock.advance(2_000_000)
        base = dict(local_tag="t", remote_tag="r", guid="g", transport="UDP",
                    local_uri="<sip:srs@h>;tag=t", remote_uri="<sip:src@h>;tag=r",
                    remote_target="sip:src@192.0.2.10", route_set=[], local_seq=1,
                    remote_seq=1, source="192.0.2.10:5060", local_address="192.0.2.1:5070")
        await storage.save_dialog(DialogRecord(call_id="old", node="node-a", **base),
                                  now=1_000_000_000)
        await storage.save_dialog(DialogRecord(call_id="dead", node="node-b", **base),
                                  now=1_000_000_000)

        class Hanger:
            def __init__(self):
                self.asked = []

            def hang_up_all(self, records, reason):
                self.asked.append((reason, [r.call_id for r in records]))
                return defer.succeed({r.call_id: 200 for r in records})

        hanger = Hanger()
        reaper = OrphanReaper(storage, hanger)
        gone = []

        def node_gone(*args):
            d = reaper.node_gone(*args)
            gone.append(d)
            return d

        cluster = ClusterService(storage, "node-a", clock, "https://a:8443", 1.0, 5.0,
                                 monotonic=clock.seconds, on_node_gone=(node_gone,))
        await cluster.startService()
        await defer.gatherResults(gone)
        assert hanger.asked == [("node restarted", ["old"])]
        # node-b is seen, then falls silent: the reaper takes its dialogs.
        await storage.heartbeat_node("node-b", "https://b:8443")
        await cluster.beat()
        clock.advance(6.0)
        await cluster.beat()
        await defer.gatherResults(gone)
        assert hanger.asked[1] == ("node lost", ["dead"])
        cluster.stopService()
    finally:
        await storage.close()

