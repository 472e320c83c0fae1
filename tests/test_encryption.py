"""Encryption at rest (siprecd.crypto): keys, stored unredacted text and
tokens on SQLite and PostgreSQL, recordings, key rotation with
``siprecd storage rekey``, the API serving encrypted recordings, and a
running daemon whose log never holds the digits or the key."""

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from harness.daemon import Daemon, write_config
from siprecd import config as configmod
from siprecd.crypto import (
    DecryptError,
    EncryptionKeyError,
    Keyring,
    key_id,
    keyring_from_config,
    new_key_text,
    parse_key,
    read_key_file,
    write_key_file,
)
from siprecd.interfaces import StorageError
from siprecd.recordings import RecordingStore
from siprecd.storage.postgresql import PostgresStorage
from siprecd.storage.records import Call, Message, Stream
from siprecd.storage.sqlite import SqliteStorage

SIPRECD = str(Path(sys.executable).parent / "siprecd")
T0 = 1_700_000_000_000
CARD = "4111 1111 1111 1111"
KEY1, KEY2 = os.urandom(32), os.urandom(32)


def keyfile(path, key, mode=0o600):
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(mode)
    return path


# -- keys ---------------------------------------------------------------------------------


def test_keys_in_hex_or_base64_and_their_ids():
    key = os.urandom(32)
    for text in (key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
                 base64.urlsafe_b64encode(key).decode().rstrip("="), f"  {key.hex()}\n"):
        assert parse_key(text) == key
    assert parse_key(new_key_text()) != parse_key(new_key_text())
    for bad in ("", "abc", os.urandom(16).hex(), base64.b64encode(os.urandom(31)).decode(),
                "z" * 64):
        with pytest.raises(EncryptionKeyError, match="32-byte key"):
            parse_key(bad)
    assert key_id(key) == key_id(key) and len(key_id(key)) == 16
    assert key_id(key) not in (key.hex(), base64.b64encode(key).decode())
    ring = Keyring([key])
    assert key.hex() not in repr(ring) and "Keyring" in repr(ring)


def test_key_files_must_be_private_and_keygen_makes_them_so(tmp_path):
    made = tmp_path / "k1"
    kid = write_key_file(made)
    assert oct(made.stat().st_mode & 0o777) == "0o600"
    assert key_id(read_key_file(made)) == kid
    with pytest.raises(EncryptionKeyError, match="exists"):
        write_key_file(made)
    loose = keyfile(tmp_path / "loose", KEY1, 0o644)
    with pytest.raises(EncryptionKeyError, match="accessible by others.*chmod 600"):
        read_key_file(loose)
    with pytest.raises(EncryptionKeyError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_config_keys_env_then_files_first_encrypts(tmp_path):
    f1, f2 = keyfile(tmp_path / "new.key", KEY1), keyfile(tmp_path / "old.key", KEY2)
    cfg = configmod.from_dict({"storage": {"encryption": {"key_files": [str(f1), str(f2)]}}})
    ring = keyring_from_config(cfg.storage.encryption)
    assert ring.primary_id == key_id(KEY1) and set(ring.ids) == {key_id(KEY1), key_id(KEY2)}
    cfg = configmod.from_dict({"storage": {"encryption": {"key_env": "MY_KEY",
                                                           "key_file": str(f2)}}})
    ring = keyring_from_config(cfg.storage.encryption, environ={"MY_KEY": KEY1.hex()})
    assert ring.primary_id == key_id(KEY1)
    with pytest.raises(configmod.ConfigError) as e:
        keyring_from_config(cfg.storage.encryption, environ={})
    assert e.value.key_path == "storage.encryption.key_env"
    assert "MY_KEY is not set" in str(e.value)
    cfg = configmod.from_dict({"storage": {"encryption": {"key_files": [str(f1), "/nope"]}}})
    with pytest.raises(configmod.ConfigError) as e:
        keyring_from_config(cfg.storage.encryption)
    assert e.value.key_path == "storage.encryption.key_files[1]"
    assert keyring_from_config(configmod.from_dict({}).storage.encryption) is None


def test_values_are_bound_to_their_context_and_authenticated():
    ring = Keyring([KEY1])
    value = ring.encrypt_text(f"my card is {CARD}", b"row-1")
    assert value.startswith(f"enc:v1:{key_id(KEY1)}:") and "4111" not in value
    assert ring.encrypt_text("same", b"c") != ring.encrypt_text("same", b"c")   # fresh nonce
    assert ring.decrypt_text(value, b"row-1") == f"my card is {CARD}"
    with pytest.raises(DecryptError, match="fails authentication"):
        ring.decrypt_text(value, b"row-2")
    flipped = value[:-3] + ("A" if value[-3] != "A" else "B") + value[-2:]
    with pytest.raises(DecryptError, match="fails authentication"):
        ring.decrypt_text(flipped, b"row-1")
    with pytest.raises(DecryptError, match="not configured"):
        Keyring([KEY2]).decrypt_text(value, b"row-1")
    assert Keyring([KEY2, KEY1]).decrypt_text(value, b"row-1") == f"my card is {CARD}"
    assert issubclass(DecryptError, StorageError)


# -- storage: SQLite and PostgreSQL -------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def make_storage(request, tmp_path):
    """make(keys) -> an unopened storage with those keys, on one fresh database."""
    if request.param == "sqlite":
        def make(keys=()):
            s = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
            s.keyring = Keyring(keys) if keys else None
            return s
    else:
        dsn = request.getfixturevalue("postgres_schema")

        def make(keys=()):
            s = PostgresStorage(reactor, dsn, pool_min=1, pool_max=2)
            s.keyring = Keyring(keys) if keys else None
            return s
    return make


async def conversation(storage, guid="g-enc"):
    await storage.upsert_call(Call(guid, f"{guid}@sbc", "node-a", T0), now=T0)
    leg = await storage.start_leg(guid, "cust-1", "agent-1", {}, now=T0)
    stream = Stream(str(uuid.uuid4()), guid, leg.id, "customer", "cust-1", T0,
                    params={"redactionOutput": "redacted_and_unredacted", "detailedToken": True})
    await storage.upsert_stream(stream, now=T0)
    return stream


def utterance(stream, n, unredacted=True):
    tokens = [{"content": w, "start": i, "end": i + 1, "confidence": 1.0}
              for i, w in enumerate(["card", "####"] if not unredacted else ["card", CARD])]
    return Message(str(uuid.uuid4()), stream.id, "my card is ####", n * 1000, n * 1000 + 900,
                   T0 + n, unredacted_text=f"my card is {CARD}" if unredacted else None,
                   tokens=tokens)


async def raw_rows(storage):
    def read(tx):
        return tx.rows("SELECT id, text, unredacted_text, tokens FROM messages ORDER BY pk")
    return await storage._read(read)


@pytest_twisted.ensureDeferred
async def test_unredacted_text_and_its_tokens_are_stored_encrypted(make_storage):
    storage = make_storage([KEY1])
    await storage.open()
    try:
        stream = await conversation(storage)
        with_text = utterance(stream, 1)
        redacted_only = utterance(stream, 2, unredacted=False)
        await storage.add_message(with_text, ["primary"])
        await storage.add_message(redacted_only, ["primary"])
        rows = await raw_rows(storage)
        assert CARD not in json.dumps(rows[0], default=str)
        assert rows[0]["unredacted_text"].startswith(f"enc:v1:{key_id(KEY1)}:")
        tokens = storage.dialect.unjson(rows[0]["tokens"])
        assert isinstance(tokens, str) and tokens.startswith("enc:v1:")
        # Redacted tokens say no more than the (plain) redacted text: plain.
        assert rows[1]["unredacted_text"] is None
        assert storage.dialect.unjson(rows[1]["tokens"])[1]["content"] == "####"
        # Read back in the clear by every reader: GET messages, export, outbox.
        (m1, m2) = await storage.messages_for_guid("g-enc")
        assert m1.unredacted_text == f"my card is {CARD}" and m1.tokens == with_text.tokens
        assert m2.tokens == redacted_only.tokens
        day = await storage.messages_for_day("2023-11-14")
        assert day[0].unredacted_text == f"my card is {CARD}"
        claimed = await storage.claim_due("node-a", 10, now=T0 + 10)
        assert claimed[0].message.tokens == with_text.tokens
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_swapped_or_changed_values_are_a_storage_error_never_garbage(make_storage):
    storage = make_storage([KEY1])
    await storage.open()
    try:
        stream = await conversation(storage)
        first, second = utterance(stream, 1), utterance(stream, 2)
        await storage.add_message(first)
        await storage.add_message(second)
        rows = await raw_rows(storage)

        def swap(tx):
            tx.execute("UPDATE messages SET unredacted_text = ? WHERE id = ?",
                       (rows[1]["unredacted_text"], rows[0]["id"]))
        await storage._write(swap)
        with pytest.raises(StorageError, match=f"unredacted_text of message {first.id} fails "
                                               "authentication") as e:
            await storage.messages_for_guid("g-enc")
        assert CARD not in str(e.value) and KEY1.hex() not in str(e.value)
        # A value under a key that is no longer configured: said so.
        await storage.close()
        storage = make_storage([KEY2])
        await storage.open()
        with pytest.raises(StorageError, match=f"key {key_id(KEY1)}, which is not configured"):
            await storage.messages_for_guid("g-enc")
        await storage.close()
        storage = make_storage()
        await storage.open()
        with pytest.raises(StorageError, match="no key is configured"):
            await storage.messages_for_guid("g-enc")
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_without_a_key_nothing_changes(make_storage):
    storage = make_storage()
    await storage.open()
    try:
        stream = await conversation(storage)
        await storage.add_message(utterance(stream, 1))
        (row,) = await raw_rows(storage)
        assert row["unredacted_text"] == f"my card is {CARD}"
        (m,) = await storage.messages_for_guid("g-enc")
        assert m.unredacted_text == f"my card is {CARD}"
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_rotation_then_rekey_in_batches(make_storage):
    # Written in plain (no key yet), then under KEY1, then KEY2 is added first.
    storage = make_storage()
    await storage.open()
    stream = await conversation(storage)
    plain = [utterance(stream, n) for n in range(3)]
    for m in plain:
        await storage.add_message(m)
    await storage.close()
    storage = make_storage([KEY1])
    await storage.open()
    under_old = [utterance(stream, n) for n in range(3, 7)]
    for m in under_old:
        await storage.add_message(m)
    await storage.close()
    storage = make_storage([KEY2, KEY1])
    await storage.open()
    try:
        newer = utterance(stream, 9)
        await storage.add_message(newer)
        kinds = [Keyring.key_id_of(r["unredacted_text"]) for r in await raw_rows(storage)]
        assert kinds == [None] * 3 + [key_id(KEY1)] * 4 + [key_id(KEY2)]
        # Both keys decrypt meanwhile.
        assert all(m.unredacted_text == f"my card is {CARD}"
                   for m in await storage.messages_for_guid("g-enc"))
        after, rewritten, batches = 0, 0, 0
        while after is not None:
            after, changed = await storage.rekey_messages(after, 3)
            rewritten += changed
            batches += 1
        assert (rewritten, batches) == (7, 3)
        rows = await raw_rows(storage)
        assert {Keyring.key_id_of(r["unredacted_text"]) for r in rows} == {key_id(KEY2)}
        assert {Keyring.key_id_of(storage.dialect.unjson(r["tokens"])) for r in rows} == \
            {key_id(KEY2)}
        assert (await storage.rekey_messages(0, 100)) == (None, 0)
    finally:
        await storage.close()
    # The old key can go now.
    storage = make_storage([KEY2])
    await storage.open()
    try:
        got = await storage.messages_for_guid("g-enc")
        assert [m.tokens for m in got] == [m.tokens for m in plain + under_old + [newer]]
    finally:
        await storage.close()


# -- recordings -----------------------------------------------------------------------------


def ramp(n):
    return (np.arange(1, n + 1) % 30000).astype(np.int16)


async def record(store, guid, leg="leg-1", seconds=3, offset=0):
    samples = ramp(8000 * seconds)
    for at in range(0, len(samples), 160):
        store.audio(guid, leg, "customer", offset + at, samples[at:at + 160])
    return await store.close_leg(guid, leg)


@pytest_twisted.ensureDeferred
async def test_recordings_are_encrypted_when_closed_and_read_back(tmp_path):
    plain_store = RecordingStore(tmp_path / "plain", reactor)
    store = RecordingStore(tmp_path / "enc", reactor, keyring=Keyring([KEY1]))
    plain_path = await record(plain_store, "g1")
    path = await record(store, "g1")
    assert path.name == "leg-1.wav.enc" and not (path.parent / "leg-1.wav.part").exists()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    clear = plain_path.read_bytes()
    sealed = path.read_bytes()
    assert clear[44:1000] not in sealed and b"RIFF" not in sealed
    assert store.files("g1") == {"leg-1": path}
    assert store.size(path) == len(clear)
    with store.open(path) as f:
        assert f.size == len(clear) and f.read() == clear
    # Unrecorded stretches stay small: an hour of silence first.
    hour = 8000 * 3600
    long_path = await record(store, "g2", seconds=1, offset=hour)
    assert long_path.stat().st_size < 2 * 1024 * 1024 < store.size(long_path)
    # A changed byte anywhere after the header: refused, not garbage.
    damaged = bytearray(sealed)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(DecryptError, match="fails authentication"), store.open(path) as f:
        f.read()
    # Without the key it is refused up front.
    with pytest.raises(DecryptError, match="no key"):
        RecordingStore(tmp_path / "enc", reactor).open(path)


@pytest_twisted.ensureDeferred
async def test_a_crash_leaves_a_part_that_is_encrypted_at_the_next_start(tmp_path):
    store = RecordingStore(tmp_path / "rec", reactor, keyring=Keyring([KEY1]))
    store.audio("g3", "leg-1", "agent", 0, ramp(9000))
    await store._legs[("g3", "leg-1")].queue
    (tmp_path / "rec" / "g3" / "leg-1.wav.enc.tmp").write_bytes(b"half")
    fresh = RecordingStore(tmp_path / "rec", reactor, keyring=Keyring([KEY1]))
    assert await fresh.recover() == 1
    assert sorted(p.name for p in (tmp_path / "rec" / "g3").iterdir()) == ["leg-1.wav.enc"]
    with fresh.open(tmp_path / "rec" / "g3" / "leg-1.wav.enc") as f:
        data = f.read()
    frames = np.frombuffer(data[44:], dtype="<i2").reshape(-1, 2)
    assert np.array_equal(frames[:8000, 1], ramp(8000))


@pytest_twisted.ensureDeferred
async def test_rekey_encrypts_plain_recordings_and_re_encrypts_old_ones(tmp_path):
    plain = await record(RecordingStore(tmp_path / "rec", reactor), "g4")
    clear = plain.read_bytes()
    old = await record(RecordingStore(tmp_path / "rec", reactor, keyring=Keyring([KEY1])), "g5")
    store = RecordingStore(tmp_path / "rec", reactor, keyring=Keyring([KEY2, KEY1]))
    assert await store.rekey() == 2
    assert await store.rekey() == 0
    assert not plain.exists()
    for guid in ("g4", "g5"):
        (path,) = store.files(guid).values()
        assert Keyring.file_key_id(path) == key_id(KEY2)
        with RecordingStore(tmp_path / "rec", reactor, keyring=Keyring([KEY2])).open(path) as f:
            assert f.read() == clear
    assert old.exists()          # the same name, now under KEY2


# -- the CLI and the API, on a real service tree ----------------------------------------------


def run_cli(*args, env=None):
    return subprocess.run([SIPRECD, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def test_keygen_and_rekey_commands(tmp_path):
    key = tmp_path / "keys" / "new.key"
    key.parent.mkdir()
    out = run_cli("storage", "keygen", str(key))
    assert out.returncode == 0, out.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert key_id(read_key_file(key)) in out.stdout
    assert run_cli("storage", "keygen", str(key)).returncode == 1
    path, _ = write_config(tmp_path, storage={"encryption": {"key_file": str(key)}})
    out = run_cli("storage", "rekey", "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert "database: 0 message(s) re-encrypted" in out.stdout
    (tmp_path / "p").mkdir()
    plain, _ = write_config(tmp_path / "p")
    out = run_cli("storage", "rekey", "-c", str(plain))
    assert out.returncode == 1 and "no key is configured" in out.stderr


@pytest_twisted.ensureDeferred
async def test_the_api_serves_encrypted_recordings_decrypted(tmp_path):
    from twisted.internet import threads

    from harness.api import ApiClient, create_app
    from harness.inprocess import start_service_tree

    key = keyfile(tmp_path / "storage.key", KEY1)
    root, written = await start_service_tree(tmp_path, reactor, storage={
        "encryption": {"key_file": str(key)}})
    try:
        storage = root.node.storage
        assert storage.keyring.primary_id == key_id(KEY1)
        stream = await conversation(storage, "g-api")
        path = await record(root.node.recordings, "g-api", leg=stream.leg_id, seconds=5)
        assert path.name.endswith(".wav.enc")
        with root.node.recordings.open(path) as f:
            clear = f.read()
        client = ApiClient(written["api"]["port"], tmp_path / "state" / "tls" /
                           "api-selfsigned.crt", *create_app(tmp_path / "siprecd.yaml"))
        call = await storage.get_call_by_guid("g-api")
        base = f"/conversation/v1/conversations/{call.conversation_id}/recordings"
        listed = await threads.deferToThread(client.get, base)
        (item,) = listed.body["recordings"]
        assert item["bytes"] == len(clear) and item["durationMs"] == 5000
        wav = await threads.deferToThread(client.get, item["url"])
        assert wav.status == 200 and wav.headers["content-type"] == "audio/wav"
        assert wav.body == clear
        # A damaged file: an error answer (headers not sent yet), logged.
        sealed = bytearray(path.read_bytes())
        sealed[10] ^= 1             # in the header's key id
        path.write_bytes(bytes(sealed))
        answer = await threads.deferToThread(client.get, item["url"])
        assert (answer.status, answer.code) == (500, "500-01")
    finally:
        await root.stopService()


# -- a running daemon: nothing sensitive in its log -------------------------------------------


def test_daemon_log_never_holds_the_digits_or_the_key(tmp_path):
    """A daemon with a key stores unredacted text with a card number (through
    the storage its own CLI uses), serves it, then meets a storage error on
    it (a value moved to another row) and a recording it cannot decrypt.
    Its whole log, at debug level, is searched for the digits and the key."""
    from harness.api import ApiClient, create_app

    key_text = new_key_text()
    key = tmp_path / "storage.key"
    key.write_text(key_text + "\n")
    key.chmod(0o600)
    raw_key = parse_key(key_text)
    path, written = write_config(tmp_path, storage={"encryption": {"key_file": str(key)}},
                                 logging={"level": "debug"})
    daemon = Daemon(path).start()
    try:
        daemon.wait_ready()
        daemon.wait_for(r"encrypted at rest with key " + key_id(raw_key))
        # Utterances with a card number, written by a second process (as the
        # CLI writes) into the daemon's own database.
        script = f"""
import sys, uuid
from twisted.internet import task, defer
from siprecd import config
from siprecd.storage.backends import create_storage
from siprecd.storage.records import Call, Message, Stream
async def main(reactor):
    cfg = config.load({str(path)!r})
    s = create_storage(cfg, reactor)
    await s.open()
    await s.upsert_call(Call("g-log", "g-log@sbc", "elsewhere", {T0}), now={T0})
    await s.end_call("g-log", "bye", now={T0} + 5)
    leg = await s.start_leg("g-log", "cust-1", "agent-1", {{}}, now={T0})
    st = Stream(str(uuid.uuid4()), "g-log", leg.id, "customer", "cust-1", {T0},
                params={{"redactionOutput": "redacted_and_unredacted"}})
    await s.upsert_stream(st, now={T0})
    for n in range(2):
        await s.add_message(Message(str(uuid.uuid4()), st.id, "my card is ####", n, n + 1,
                                    {T0} + n, unredacted_text="my card is {CARD}"))
    await s.close()
task.react(lambda r: defer.ensureDeferred(main(r)))
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        client = ApiClient(written["api"]["port"], tmp_path / "state" / "tls" /
                           "api-selfsigned.crt", *create_app(path))
        answer = client.get("/conversation/v1/conversation/messages?externalId=g-log")
        assert answer.status == 200
        assert {i.get("unredactedText") for i in answer.body["items"]} == {f"my card is {CARD}"}
        # The storage error: one row's value moved to the other row.
        import sqlite3

        db = sqlite3.connect(tmp_path / "state" / "siprecd.sqlite")
        values = [r[0] for r in db.execute("SELECT unredacted_text FROM messages ORDER BY pk")]
        assert all(v.startswith("enc:v1:") for v in values)
        with db:
            db.execute("UPDATE messages SET unredacted_text = ? WHERE pk = "
                       "(SELECT MIN(pk) FROM messages)", (values[1],))
        db.close()
        answer = client.get("/conversation/v1/conversation/messages?externalId=g-log")
        # The client is told that much; which row and key, only the log.
        assert answer.status == 503 and "cannot be read" in answer.body["error"]["message"]
        assert "fails authentication" not in answer.body["error"]["message"]
        daemon.wait_for("fails authentication")
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.kill()
    log = "\n".join(daemon.lines)
    assert "storage: unredacted text and recordings are encrypted" in log
    forbidden = [CARD, CARD.replace(" ", ""), "4111", key_text, raw_key.hex(),
                 base64.urlsafe_b64encode(raw_key).decode().rstrip("=")]
    for secret in forbidden:
        assert secret not in log, secret
    assert "Traceback" not in log


def test_without_a_key_the_daemon_warns_at_start(tmp_path):
    path, _ = write_config(tmp_path, api={"enabled": False})
    with Daemon(path) as daemon:
        daemon.wait_ready()
        line = daemon.wait_for("no encryption key")
        assert "stored in plain form" in line
        daemon.terminate()
