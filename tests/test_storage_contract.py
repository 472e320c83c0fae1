"""The storage contract: the same tests against SQLite and PostgreSQL.

Every test gets a fresh database (a file for SQLite, a schema of the test
server for PostgreSQL). Times are passed explicitly where they matter.
"""

import uuid

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from siprecd.interfaces import IStorage, RecordNotFound, StorageError
from siprecd.storage import migrate
from siprecd.storage.postgresql import PostgresStorage
from siprecd.storage.records import (
    ACTIVE, DEAD, DELIVERED, ENDED, IN_FLIGHT, PENDING, Call, DialogRecord, Message, Stream,
)
from siprecd.storage.sqlite import SqliteStorage

DAY = 86_400_000
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


@pytest.fixture(params=["sqlite", "postgresql"])
def make_storage(request, tmp_path):
    """A factory of unopened storages, all on the same fresh database."""
    if request.param == "sqlite":
        return lambda: SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    dsn = request.getfixturevalue("postgres_schema")
    return lambda: PostgresStorage(reactor, dsn, pool_min=1, pool_max=4)


@pytest_twisted.async_yield_fixture
async def storage(make_storage):
    s = make_storage()
    await s.open()
    yield s
    await s.close()


async def a_call(storage, guid="00002542391662063156", node="node-a", started=T0, **kw):
    return await storage.upsert_call(
        Call(guid, f"call-{guid}@sbc", node, started,
             identifiers=[{"source": "call-id", "value": f"call-{guid}@sbc", "raw": "x"}], **kw),
        now=started,
    )


async def a_stream(storage, guid, role="customer", external_id="cust-1", leg=None, now=T0):
    if leg is None:
        leg = await storage.start_leg(guid, "cust-1", "agent-1", {"language": "en-US"}, now=now)
    stream = Stream(str(uuid.uuid4()), guid, leg.id, role, external_id, now, label=role)
    await storage.upsert_stream(stream, now=now)
    return stream


def a_message(stream, n, created=T0, **kw):
    return Message(str(uuid.uuid4()), stream.id, f"utterance {n}", n * 1000, n * 1000 + 800,
                   created + n, **kw)


async def a_conversation(storage, guid, messages=3, targets=("primary",), created=T0):
    await a_call(storage, guid, started=created)
    stream = await a_stream(storage, guid, now=created)
    for n in range(messages):
        await storage.add_message(a_message(stream, n, created), targets)
    return stream


# Life cycle and migrations --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_provides_the_interface_and_migrates_to_the_newest_version(storage):
    verifyObject(IStorage, storage)
    assert storage.schema_version == len(migrate.load(storage.dialect.name))


@pytest_twisted.ensureDeferred
async def test_migrations_applied_twice_change_nothing(storage, make_storage):
    stream = await a_conversation(storage, "111", messages=2)
    again = make_storage()
    assert await again.open() == storage.schema_version
    # And once more, directly, in one more transaction.
    assert await again._write(migrate.apply, migrate.load(again.dialect.name), T0) == \
        storage.schema_version
    versions = await again._read(lambda tx: tx.rows("SELECT version FROM schema_version"))
    assert sorted(r["version"] for r in versions) == list(range(1, storage.schema_version + 1))
    assert [m.sequence for m in await again.messages_for_guid("111")] == [1, 2]
    assert await again.add_message(a_message(stream, 9), ["primary"]) == 3
    await again.close()


def test_both_dialects_ship_the_same_versions():
    sqlite, postgresql = migrate.load("sqlite"), migrate.load("postgresql")
    assert [(m.version, m.name) for m in sqlite] == [(m.version, m.name) for m in postgresql]
    assert all(m.statements for m in sqlite)


@pytest_twisted.ensureDeferred
async def test_closing_waits_for_writes_in_flight(storage):
    stream = await a_conversation(storage, "222", messages=0)
    writes = [storage.add_message(a_message(stream, n), ["primary"]) for n in range(20)]
    await storage.close()
    assert sorted(await defer.gatherResults(writes)) == list(range(1, 21))
    with pytest.raises(StorageError, match="not open"):
        await storage.get_call_by_guid("222")


# Apps ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_app_secrets_are_salted_hashes_checked_for_active_apps_only(storage):
    app, secret = await storage.create_app("primary", label="crm", now=T0)
    other, other_secret = await storage.create_app("backup")
    assert app.api_id != other.api_id and secret != other_secret
    assert (app.webhook_target, app.label, app.created_ms, app.active) == ("primary", "crm", T0, True)

    stored = await storage._read(lambda tx: tx.rows("SELECT api_id, secret_hash FROM apps"))
    hashes = [r["secret_hash"] for r in stored]
    assert all(h.startswith("scrypt$") and secret not in h and other_secret not in h for h in hashes)
    assert len({h.split("$")[4] for h in hashes}) == 2  # a salt per secret

    assert await storage.verify_app_secret(app.api_id, secret) == app
    assert await storage.verify_app_secret(app.api_id, secret) == app  # cached
    assert await storage.verify_app_secret(app.api_id, other_secret) is None
    assert await storage.verify_app_secret("no-such-app", secret) is None
    assert await storage.verify_app_secret(app.api_id, "") is None

    new_secret = await storage.rotate_app_secret(app.api_id, now=T0 + 1)
    assert await storage.verify_app_secret(app.api_id, secret) is None
    rotated = await storage.verify_app_secret(app.api_id, new_secret)
    assert rotated.rotated_ms == T0 + 1

    assert await storage.revoke_app(app.api_id, now=T0 + 2) is True
    assert await storage.revoke_app(app.api_id) is False
    assert await storage.verify_app_secret(app.api_id, new_secret) is None
    assert (await storage.get_app(app.api_id)).revoked_ms == T0 + 2
    with pytest.raises(RecordNotFound):
        await storage.rotate_app_secret(app.api_id)
    assert [a.api_id for a in await storage.list_apps()] == [other.api_id]
    assert {a.api_id for a in await storage.list_apps(include_revoked=True)} == {
        app.api_id, other.api_id}
    assert await storage.get_app("nope") is None


# Calls, legs, streams ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_calls_are_kept_by_guid_with_every_identifier_seen(storage):
    first = await a_call(storage, "333", sip={"from": "sip:a@x"}, participants=[{"aor": "a"}])
    assert first.state == ACTIVE and first.conversation_id and first.ended_ms is None
    again = await storage.upsert_call(Call(
        "333", None, "node-b", T0 + 5,
        identifiers=[{"source": "x-ucid", "value": "333", "raw": "333"},
                     {"source": "call-id", "value": "call-333@sbc", "raw": "x"}],
        sip={"from": "sip:b@x"}, mixed=True,
    ), now=T0 + 5)
    assert again.conversation_id == first.conversation_id
    assert again.call_id == "call-333@sbc" and again.node == "node-b" and again.mixed
    assert again.started_ms == T0 and again.updated_ms == T0 + 5
    assert [(i["source"], i["value"]) for i in again.identifiers] == [
        ("call-id", "call-333@sbc"), ("x-ucid", "333")]
    assert again.sip == {"from": "sip:b@x"}
    assert await storage.get_call(first.conversation_id) == again
    assert await storage.get_call_by_guid("333") == again
    assert await storage.get_call_by_guid("nope") is None

    assert await storage.end_call("333", "bye", now=T0 + 10) is True
    assert await storage.end_call("333", "bye", now=T0 + 11) is False
    ended = await storage.get_call_by_guid("333")
    assert (ended.state, ended.ended_ms, ended.end_reason) == (ENDED, T0 + 10, "bye")
    # A new recording session for the same guid reopens the conversation.
    reopened = await a_call(storage, "333", started=T0 + 20)
    assert (reopened.state, reopened.ended_ms, reopened.conversation_id) == (
        ACTIVE, None, first.conversation_id)


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_calls_are_ended(storage):
    await a_call(storage, "1", node="dead")
    await a_call(storage, "2", node="dead")
    await a_call(storage, "3", node="alive")
    await storage.end_call("2", "bye", now=T0 + 1)
    assert await storage.end_calls_of_node("dead", "node died", now=T0 + 5) == ["1"]
    assert (await storage.get_call_by_guid("1")).end_reason == "node died"
    assert (await storage.get_call_by_guid("3")).state == ACTIVE


def a_dialog(call_id, node="node-a", **kw):
    fields = dict(
        call_id=call_id, local_tag="srs1", remote_tag="src1", node=node, guid=f"g-{call_id}",
        transport="UDP", local_uri="<sip:srs@192.0.2.1>;tag=srs1",
        remote_uri="<sip:src@192.0.2.10>;tag=src1", remote_target="sip:src@192.0.2.10:5060",
        route_set=["<sip:proxy.example:5060;lr>"], local_seq=17, remote_seq=1,
        source="192.0.2.10:5060", local_address="192.0.2.1:5070")
    fields.update(kw)
    return DialogRecord(**fields)


@pytest_twisted.ensureDeferred
async def test_dialogs_are_kept_updated_forgotten_and_taken_once(storage):
    await storage.save_dialog(a_dialog("c1"), now=T0)
    await storage.save_dialog(a_dialog("c2", remote_tag=""), now=T0 + 1)
    await storage.save_dialog(a_dialog("c3", node="node-b"), now=T0 + 2)
    await storage.save_dialog(a_dialog("c4"), now=T0 + 50)
    # An update (re-INVITE: a new target, more CSeq) keeps the row and its age.
    await storage.save_dialog(a_dialog("c1", remote_target="sip:src@192.0.2.11:5062",
                                       local_seq=19, remote_seq=2), now=T0 + 60)
    assert await storage.forget_dialog("c2", "srs1", None) is True
    assert await storage.forget_dialog("c2", "srs1", None) is False
    # A restarted node takes those stored before it started, once.
    taken = await storage.take_dialogs_of_node("node-a", before_ms=T0 + 10)
    assert [d.call_id for d in taken] == ["c1"]
    c1 = taken[0]
    assert (c1.remote_target, c1.local_seq, c1.remote_seq) == ("sip:src@192.0.2.11:5062", 19, 2)
    assert c1.route_set == ["<sip:proxy.example:5060;lr>"] and c1.created_ms == T0
    assert (c1.local_uri, c1.remote_uri, c1.transport, c1.secure) == (
        "<sip:srs@192.0.2.1>;tag=srs1", "<sip:src@192.0.2.10>;tag=src1", "UDP", False)
    assert await storage.take_dialogs_of_node("node-a", before_ms=T0 + 10) == []
    # A dead node's are all taken by whoever reaps it, once.
    assert [d.call_id for d in await storage.take_dialogs_of_node("node-a")] == ["c4"]
    assert [d.call_id for d in await storage.take_dialogs_of_node("node-b")] == ["c3"]
    assert await storage.take_dialogs_of_node("node-b") == []
    await storage.ping()


@pytest_twisted.ensureDeferred
async def test_legs_and_streams(storage):
    with pytest.raises(RecordNotFound):
        await storage.start_leg("nope", "c", "a")
    await a_call(storage, "444")
    leg1 = await storage.start_leg("444", "cust", "agent-1", {"language": "en-US"}, now=T0 + 1)
    customer = Stream(str(uuid.uuid4()), "444", leg1.id, "customer", "cust", T0 + 1,
                      params={"redactionOutput": "redacted"})
    agent = Stream(str(uuid.uuid4()), "444", leg1.id, "agent", "agent-1", T0 + 1)
    await storage.upsert_stream(customer)
    await storage.upsert_stream(agent)
    await storage.upsert_stream(customer)  # idempotent
    leg2 = await storage.start_leg("444", "cust", "agent-2", now=T0 + 2)
    assert (leg1.number, leg2.number) == (1, 2)
    legs = await storage.legs_for_guid("444")
    assert [(leg.id, leg.ended_ms) for leg in legs] == [(leg1.id, T0 + 2), (leg2.id, None)]
    assert legs[0].params == {"language": "en-US"} and legs[1].agent_id == "agent-2"

    assert await storage.update_stream_stats(customer.id, {"totalAudioBytes": 160}) is True
    assert await storage.update_stream_stats("nope", {}) is False
    streams = await storage.streams_for_guid("444")
    assert [s.id for s in streams] == [agent.id, customer.id]  # by leg, then creation, role
    assert streams[1].stats == {"totalAudioBytes": 160}
    assert streams[1].params == {"redactionOutput": "redacted"}

    with pytest.raises(RecordNotFound):
        await storage.upsert_stream(Stream(str(uuid.uuid4()), "444", "no-leg", "agent", "a", T0))
    # Several streams in one role and leg: a conference's further parties,
    # and the streams of every SIPREC session that shares the guid.
    third = Stream(str(uuid.uuid4()), "444", leg1.id, "customer", "cust", T0 + 5, label="3")
    await storage.upsert_stream(third)
    assert third.id in [s.id for s in await storage.streams_for_guid("444")]


# Messages --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_message_and_its_outbox_rows_are_stored_together(storage):
    await a_call(storage, "555")
    stream = await a_stream(storage, "555")
    tokens = [{"content": "my", "start": 0, "end": 200, "confidence": 0.9}]
    first = a_message(stream, 0, tokens=tokens, unredacted_text="my PIN is 1234",
                      client_ms=T0 - 5, language="en-US")
    assert await storage.add_message(first, ["primary", "backup", "primary"]) == 1
    assert await storage.add_message(a_message(stream, 1), []) == 2
    # The same message again (a retry): stored once, same sequence.
    assert await storage.add_message(first, ["primary", "backup"]) == 1

    messages = await storage.messages_for_guid("555")
    assert [m.sequence for m in messages] == [1, 2]
    m = messages[0]
    assert (m.id, m.text, m.unredacted_text, m.tokens, m.start_ms, m.end_ms) == (
        first.id, "utterance 0", "my PIN is 1234", tokens, 0, 800)
    assert (m.created_ms, m.client_ms, m.language, m.guid, m.role, m.external_id) == (
        T0, T0 - 5, "en-US", "555", "customer", "cust-1")
    assert m.leg_id == (await storage.legs_for_guid("555"))[0].id
    assert messages[1].tokens is None and messages[1].unredacted_text is None

    rows = await storage._read(lambda tx: tx.rows(
        "SELECT message_pk, target, state, sequence FROM outbox ORDER BY id"))
    assert [(r["target"], r["state"], r["sequence"]) for r in rows] == [
        ("primary", PENDING, 1), ("backup", PENDING, 1)]

    with pytest.raises(RecordNotFound):
        await storage.add_message(a_message(Stream("nope", "555", "x", "agent", "a", T0), 5),
                                  ["primary"])
    assert len(await storage.messages_for_guid("555")) == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_writers_get_distinct_gapless_sequences(storage):
    await a_call(storage, "666")
    leg = await storage.start_leg("666", "c", "a")
    streams = [await a_stream(storage, "666", role, leg=leg) for role in ("customer", "agent")]
    writes = [storage.add_message(a_message(s, n), ["primary"]) for n in range(40) for s in streams]
    sequences = await defer.gatherResults(writes)
    assert sorted(sequences) == sorted(list(range(1, 41)) * 2)
    messages = await storage.messages_for_guid("666")
    for s in streams:
        mine = [m.sequence for m in messages if m.stream_id == s.id]
        assert mine == list(range(1, 41))  # stored order is sequence order


@pytest_twisted.ensureDeferred
async def test_messages_for_guid_spans_legs_in_order_with_a_limit(storage):
    await a_call(storage, "777")
    first = await a_stream(storage, "777")
    await storage.add_message(a_message(first, 0), ())
    second = await a_stream(storage, "777")  # a new leg
    await storage.add_message(a_message(second, 1), ())
    await storage.add_message(a_message(first, 2), ())
    messages = await storage.messages_for_guid("777")
    assert [(m.stream_id, m.sequence) for m in messages] == [
        (first.id, 1), (second.id, 1), (first.id, 2)]
    assert len({m.leg_id for m in messages}) == 2
    assert len(await storage.messages_for_guid("777", limit=2)) == 2
    assert await storage.messages_for_guid("nope") == []


@pytest_twisted.ensureDeferred
async def test_messages_for_day_pages_through_one_utc_day(storage):
    day_start = 1_700_006_400_000  # 2023-11-15T00:00:00Z
    await a_call(storage, "888")
    stream = await a_stream(storage, "888")
    created = [day_start - 1, day_start, day_start + 5, day_start + 5, day_start + 7,
               day_start + DAY - 1, day_start + DAY]
    for n, at in enumerate(created):
        await storage.add_message(
            Message(str(uuid.uuid4()), stream.id, f"m{n}", 0, 1, at), ())
    seen, after = [], None
    while True:
        page = await storage.messages_for_day("2023-11-15", after=after, limit=2)
        if not page:
            break
        assert len(page) <= 2
        seen += page
        after = page[-1]
    assert [m.text for m in seen] == ["m1", "m2", "m3", "m4", "m5"]
    import datetime
    assert [m.text for m in await storage.messages_for_day(datetime.date(2023, 11, 14))] == ["m0"]


# Outbox ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_outbox_delivers_each_stream_in_order_one_at_a_time(storage):
    one = await a_conversation(storage, "901", messages=3, targets=("primary", "backup"))
    two = await a_conversation(storage, "902", messages=2, targets=("primary",))
    now = T0 + 1000

    claimed = await storage.claim_due("node-a", 100, now=now)
    heads = sorted((i.message.stream_id, i.target, i.message.sequence) for i in claimed)
    assert heads == sorted([(one.id, "primary", 1), (one.id, "backup", 1), (two.id, "primary", 1)])
    item = next(i for i in claimed if i.message.stream_id == one.id and i.target == "primary")
    assert (item.state, item.attempts, item.claimed_by) == (IN_FLIGHT, 1, "node-a")
    assert item.message.text == "utterance 0" and item.message.guid == "901"
    # Nothing more is due while the heads are in flight.
    assert await storage.claim_due("node-b", 100, now=now) == []

    assert await storage.mark_delivered(item.id, now=now + 1) is True
    (nxt,) = await storage.claim_due("node-b", 100, now=now + 2)
    assert (nxt.message.stream_id, nxt.target, nxt.message.sequence) == (one.id, "primary", 2)

    # A failure waits for its next attempt, and holds back its stream.
    await storage.mark_failed(nxt.id, now + 5000, "HTTP 503")
    assert await storage.claim_due("node-a", 100, now=now + 4999) == []
    (retry,) = await storage.claim_due("node-a", 100, now=now + 5000)
    assert (retry.id, retry.attempts, retry.last_error) == (nxt.id, 2, "HTTP 503")


@pytest_twisted.ensureDeferred
async def test_claims_of_a_dead_claimer_expire_and_a_restarted_node_releases_its_own(storage):
    await a_conversation(storage, "903", messages=2)
    (item,) = await storage.claim_due("node-a", 10, now=T0, lease=30_000)
    assert await storage.claim_due("node-b", 10, now=T0 + 29_999) == []
    (again,) = await storage.claim_due("node-b", 10, now=T0 + 30_000)
    assert (again.id, again.claimed_by, again.attempts) == (item.id, "node-b", 2)

    assert await storage.release_claims("node-b", now=T0 + 30_001) == 1
    (third,) = await storage.claim_due("node-a", 10, now=T0 + 30_001)
    assert third.id == item.id


@pytest_twisted.ensureDeferred
async def test_dead_letters_can_be_listed_and_replayed(storage):
    stream = await a_conversation(storage, "904", messages=3, targets=("primary", "backup"))
    for _ in range(2):
        for i in await storage.claim_due("n", 10, now=T0 + 10):
            await storage.mark_failed(i.id, T0, f"gave up on {i.target}", dead=i.target == "primary")
    dead = await storage.dead_letters()
    assert [(d.target, d.message.sequence, d.state) for d in dead] == [
        ("primary", 1, DEAD), ("primary", 2, DEAD)]
    assert dead[0].last_error == "gave up on primary"
    assert await storage.dead_letters(target="backup") == []
    # A dead row does not hold its stream back.
    (head,) = [i for i in await storage.claim_due("n", 10, now=T0 + 10) if i.target == "primary"]
    assert head.message.sequence == 3

    assert await storage.replay(ids=[dead[1].id], now=T0 + 20) == 1
    assert await storage.replay(ids=[]) == 0
    assert [d.id for d in await storage.dead_letters()] == [dead[0].id]
    assert await storage.replay(target="primary", now=T0 + 20) == 1
    assert await storage.dead_letters() == []
    await storage.mark_delivered(head.id)
    claimed = [i for i in await storage.claim_due("n", 10, now=T0 + 20) if i.target == "primary"]
    assert [(i.message.stream_id, i.message.sequence, i.attempts) for i in claimed] == [
        (stream.id, 1, 1)]


@pytest_twisted.ensureDeferred
async def test_outbox_counts_say_what_each_target_still_owes(storage):
    assert await storage.outbox_counts() == {}
    await a_conversation(storage, "905", messages=3, targets=("primary", "backup"))
    (first,) = [i for i in await storage.claim_due("n", 10, now=T0 + 10)
                if i.target == "primary"]
    counts = await storage.outbox_counts()
    assert counts["primary"] == {"waiting": 3, "inFlight": 1, "dead": 0,
                                 "oldestWaitingMs": T0}
    await storage.mark_failed(first.id, T0 + 100, "503 from the receiver")
    assert (await storage.outbox_counts())["primary"]["waiting"] == 3     # still owed
    await storage.mark_failed(first.id, T0, "gave up", dead=True)
    for i in await storage.claim_due("n", 10, now=T0 + 10):
        await storage.mark_delivered(i.id)
    counts = await storage.outbox_counts()
    assert counts["primary"] == {"waiting": 1, "inFlight": 0, "dead": 1,
                                 "oldestWaitingMs": T0 + 2}
    # backup: its first row is still being sent (claimed first), the rest wait behind it.
    assert counts["backup"] == {"waiting": 3, "inFlight": 1, "dead": 0, "oldestWaitingMs": T0}


@pytest_twisted.ensureDeferred
async def test_nodes_claiming_at_once_never_share_a_row_or_a_stream(storage):
    streams = []
    for n in range(10):
        streams.append(await a_conversation(storage, f"95{n}", messages=3))
    delivered = {s.id: [] for s in streams}
    for _ in range(3):
        rounds = await defer.gatherResults(
            [storage.claim_due(f"node-{k}", 4, now=T0 + 10_000) for k in range(4)])
        claimed = [i for r in rounds for i in r]
        assert len({i.id for i in claimed}) == len(claimed)
        assert len({i.message.stream_id for i in claimed}) == len(claimed)
        assert len(claimed) == 10
        for i in claimed:
            delivered[i.message.stream_id].append(i.message.sequence)
            await storage.mark_delivered(i.id)
    assert all(seqs == [1, 2, 3] for seqs in delivered.values())
    rows = await storage._read(lambda tx: tx.rows("SELECT DISTINCT state FROM outbox"))
    assert [r["state"] for r in rows] == [DELIVERED]


# Retention -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retention_purges_only_long_ended_calls_in_batches(storage):
    retention = 7 * DAY
    now = T0 + 30 * DAY
    await a_conversation(storage, "old-1", messages=5, targets=("primary", "backup"))
    await a_conversation(storage, "old-2", messages=4)
    await a_conversation(storage, "recent", messages=2)
    await a_conversation(storage, "active", messages=2)  # started long ago, still going
    await storage.end_call("old-1", "bye", now=now - retention - 10)
    await storage.end_call("old-2", "bye", now=now - retention)
    await storage.end_call("recent", "bye", now=now - retention + 1)

    results = []
    while True:
        result = await storage.purge_expired(now, retention, batch_size=3)
        if not result:
            break
        assert result.messages <= 3
        results.append(result)
    assert len(results) >= 3
    assert sum(r.messages for r in results) == 9
    assert sorted(g for r in results for g in r.guids) == ["old-1", "old-2"]

    for guid in ("old-1", "old-2"):
        assert await storage.get_call_by_guid(guid) is None
        assert await storage.messages_for_guid(guid) == []
        assert await storage.legs_for_guid(guid) == []
        assert await storage.streams_for_guid(guid) == []
    for guid in ("recent", "active"):
        assert len(await storage.messages_for_guid(guid)) == 2
        assert len(await storage.streams_for_guid(guid)) == 1
    rows = await storage._read(lambda tx: tx.rows("SELECT COUNT(*) AS n FROM outbox"))
    assert rows[0]["n"] == 4


# Audit, nodes, leases, export runs ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_audit_log(storage):
    await storage.record_audit("app.created", app_id="app1", now=T0)
    await storage.record_audit("start-streaming", app_id="app1", guid="g1",
                               detail={"agentId": "a"}, now=T0 + 1)
    await storage.record_audit("stop-streaming", app_id="app2", guid="g1", now=T0 + 2)
    entries = await storage.audit_log()
    assert [(e.action, e.at_ms) for e in entries] == [
        ("stop-streaming", T0 + 2), ("start-streaming", T0 + 1), ("app.created", T0)]
    assert [e.action for e in await storage.audit_log(guid="g1", app_id="app1")] == [
        "start-streaming"]
    assert (await storage.audit_log(guid="g1"))[1].detail == {"agentId": "a"}
    assert len(await storage.audit_log(limit=1)) == 1


@pytest_twisted.ensureDeferred
async def test_node_heartbeats_and_leases(storage):
    await storage.heartbeat_node("a", "https://10.0.0.1:8444", now=T0)
    await storage.heartbeat_node("b", now=T0)
    await storage.heartbeat_node("a", now=T0 + 20_000)
    live = await storage.live_nodes(15_000, now=T0 + 25_000)
    assert [(n.id, n.address, n.started_ms, n.heartbeat_ms) for n in live] == [
        ("a", "https://10.0.0.1:8444", T0, T0 + 20_000)]

    assert await storage.try_lease("retention", "a", 1000, now=T0) is True
    assert await storage.try_lease("retention", "b", 1000, now=T0 + 500) is False
    assert await storage.try_lease("retention", "a", 1000, now=T0 + 900) is True  # renewed
    assert await storage.try_lease("retention", "b", 1000, now=T0 + 1901) is True
    assert await storage.try_lease("export", "a", 1000, now=T0 + 1901) is True


@pytest_twisted.ensureDeferred
async def test_one_export_run_per_feed_and_day_at_a_time(storage):
    run = await storage.start_export_run("utterances", "2024-05-01", "a", now=T0)
    assert run is not None
    assert await storage.start_export_run("utterances", "2024-05-01", "b", now=T0 + 1) is None
    other = await storage.start_export_run("utterances", "2024-05-02", "b", now=T0 + 1)
    assert other is not None
    assert await storage.finish_export_run(run, 1234, {"files": ["a.jsonl"]}, now=T0 + 2)
    rerun = await storage.start_export_run("utterances", "2024-05-01", "b", now=T0 + 3)
    assert rerun is not None
    # A run whose node died is abandoned after stale_after.
    assert await storage.start_export_run("utterances", "2024-05-01", "a", now=T0 + 4,
                                          stale_after=10) is None
    late = await storage.start_export_run("utterances", "2024-05-01", "a", now=T0 + 100,
                                          stale_after=10)
    assert late is not None
    runs = await storage.export_runs(feed="utterances", day="2024-05-01")
    assert [(r.id, r.state) for r in runs] == [(late, "running"), (rerun, "failed"), (run, "done")]
    assert (runs[2].rows, runs[2].detail, runs[2].finished_ms) == (1234, {"files": ["a.jsonl"]},
                                                                    T0 + 2)
    assert runs[1].error.startswith("abandoned")
    await storage.finish_export_run(other, 0, error="disk full", now=T0 + 5)
    assert (await storage.export_runs(day="2024-05-02"))[0].state == "failed"


@pytest_twisted.ensureDeferred
async def test_a_version_1_database_keeps_its_rows_through_the_streams_migration(tmp_path):
    """SQLite rebuilds the streams table to drop a constraint: its rows and
    the messages that refer to them must all still be there."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    first = migrate.load("sqlite")[0]
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        for statement in first.statements:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                     "name TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1, 'initial', 0)")
        conn.execute("INSERT INTO calls (guid, conversation_id, call_id, identifiers, node, "
                     "state, mixed, started_ms, updated_ms, sip, participants) VALUES "
                     "('g1', 'c1', 'x@y', '[]', 'n', 'active', 0, 1, 1, '{}', '[]')")
        conn.execute("INSERT INTO legs (id, call_guid, number, customer_id, agent_id, params, "
                     "started_ms) VALUES ('l1', 'g1', 1, 'c', 'a', '{}', 1)")
        conn.execute("INSERT INTO streams (id, call_guid, leg_id, role, created_ms, updated_ms) "
                     "VALUES ('s1', 'g1', 'l1', 'customer', 1, 1)")
        conn.execute("INSERT INTO messages (id, stream_id, call_guid, leg_id, sequence, text, "
                     "start_ms, end_ms, created_ms) VALUES ('m1', 's1', 'g1', 'l1', 1, 'hi', "
                     "0, 10, 2)")
    storage = SqliteStorage(reactor, path)
    assert await storage.open() == len(migrate.load("sqlite"))     # every migration since 1
    try:
        assert [s.id for s in await storage.streams_for_guid("g1")] == ["s1"]
        assert [m.id for m in await storage.messages_for_guid("g1")] == ["m1"]
        await storage.upsert_stream(Stream("s2", "g1", "l1", "customer", "c", 5))
        assert len(await storage.streams_for_guid("g1")) == 2
    finally:
        await storage.close()
