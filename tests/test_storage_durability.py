"""SIGKILL while utterances are being written: after a restart every
committed message is there with its outbox rows, nothing is half-written,
and writing resumes where it stopped."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from siprecd.storage.postgresql import PostgresStorage
from siprecd.storage.records import Message
from siprecd.storage.sqlite import SqliteStorage

STREAMS = 4
TARGETS = ("primary", "backup")
KILL_AFTER = 1000  # committed messages

# Writes utterances with their outbox rows as fast as it can, on STREAMS
# streams at once, and prints "<stream> <sequence> <message id>" after
# each commit.
WRITER = """
import sys, uuid
from twisted.internet import defer, task
from siprecd.storage.records import Call, Message, Stream

async def main(reactor, backend, where, streams):
    if backend == "sqlite":
        from siprecd.storage.sqlite import SqliteStorage
        storage = SqliteStorage(reactor, __import__("pathlib").Path(where))
    else:
        from siprecd.storage.postgresql import PostgresStorage
        storage = PostgresStorage(reactor, where, pool_min=int(streams), pool_max=int(streams))
    await storage.open()
    await storage.upsert_call(Call("durable", "cid", "writer", 0))
    ids = []
    for n in range(int(streams)):
        if n % 2 == 0:  # a leg has one stream per role
            leg = await storage.start_leg("durable", "c", f"agent-{n}")
        stream = Stream(str(uuid.uuid4()), "durable", leg.id, ("customer", "agent")[n % 2],
                        f"party-{n}", 0, label=str(n))
        await storage.upsert_stream(stream)
        ids.append(stream.id)
    print("ready", flush=True)

    async def write(stream_id):
        n = 0
        while True:
            m = Message(str(uuid.uuid4()), stream_id, f"utterance {n} " + "w" * 200,
                        n * 1000, n * 1000 + 900, 1_700_000_000_000 + n,
                        tokens=[{"content": "w", "start": 0, "end": 1, "confidence": 1.0}],
                        unredacted_text=f"unredacted {n}")
            seq = await storage.add_message(m, ["primary", "backup"])
            sys.stdout.write(f"{stream_id} {seq} {m.id}\\n")  # one write: one whole line
            sys.stdout.flush()
            n += 1

    await defer.gatherResults([defer.ensureDeferred(write(s)) for s in ids])

task.react(lambda r, *a: defer.ensureDeferred(main(r, *a)), sys.argv[1:])
"""


def run_and_kill(tmp_path, backend, where):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), backend, where, str(STREAMS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    printed = []
    deadline = time.monotonic() + 120
    try:
        while len(printed) < KILL_AFTER:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"writer died or stalled ({proc.poll()}): {proc.stderr.read()}")
                continue
            if line != "ready\n":
                printed.append(line.split())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    reader.join(timeout=30)
    while not lines.empty():  # flushed to the pipe before the kill: committed too
        line = lines.get()
        if line.endswith("\n"):  # a line cut short by the kill tells nothing
            printed.append(line.split())
    assert proc.returncode == -signal.SIGKILL
    return printed


async def check_and_resume(storage, printed):
    stored = await storage.messages_for_guid("durable", limit=1_000_000)
    by_id = {m.id: m for m in stored}
    for stream_id, seq, message_id in printed:
        m = by_id[message_id]  # every committed message is there...
        assert (m.stream_id, m.sequence) == (stream_id, int(seq))
        n = m.sequence - 1
        # ...complete...
        assert m.text == f"utterance {n} " + "w" * 200 and m.unredacted_text == f"unredacted {n}"
        assert m.tokens == [{"content": "w", "start": 0, "end": 1, "confidence": 1.0}]
        assert (m.start_ms, m.end_ms) == (n * 1000, n * 1000 + 900)
    # ...and nothing is half-written: at most one message per stream was
    # committed but not yet printed; sequences have no gaps; every stored
    # message has exactly its outbox rows.
    assert len(stored) - len(printed) <= STREAMS
    streams = await storage.streams_for_guid("durable")
    assert len(streams) == STREAMS
    for stream in streams:
        mine = sorted(m.sequence for m in stored if m.stream_id == stream.id)
        assert mine == list(range(1, len(mine) + 1))
        assert stream.last_sequence == len(mine)
    outbox = await storage._read(lambda tx: tx.rows(
        "SELECT m.id AS id, o.target AS target, o.state AS state"
        " FROM outbox o JOIN messages m ON m.pk = o.message_pk"))
    per_message = {}
    for row in outbox:
        assert row["state"] == "pending"
        per_message.setdefault(row["id"], []).append(row["target"])
    assert set(per_message) == set(by_id)
    assert all(sorted(t) == sorted(TARGETS) for t in per_message.values())

    # Work resumes where it stopped.
    for stream in streams:
        last = max(m.sequence for m in stored if m.stream_id == stream.id)
        again = Message("resumed-" + stream.id, stream.id, "after restart", 0, 1, 0)
        assert await storage.add_message(again, TARGETS) == last + 1
    claimed = await storage.claim_due("restarted", 100, now=2_000_000_000_000)
    assert {(i.message.stream_id, i.message.sequence) for i in claimed} == {
        (s.id, 1) for s in streams}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest_twisted.ensureDeferred
async def test_sigkill_while_writing_loses_nothing_committed(backend, tmp_path, request):
    if backend == "sqlite":
        where = str(tmp_path / "state" / "siprecd.sqlite")
        make = lambda: SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")  # noqa: E731
    else:
        where = request.getfixturevalue("postgres_schema")
        make = lambda: PostgresStorage(reactor, where)  # noqa: E731
    printed = run_and_kill(tmp_path, backend, where)
    assert len(printed) >= KILL_AFTER
    if backend == "sqlite":
        # The killed writer left its write-ahead log behind, uncheckpointed.
        assert os.path.exists(where + "-wal")
    storage = make()
    await storage.open()
    try:
        await check_and_resume(storage, printed)
    finally:
        await storage.close()
