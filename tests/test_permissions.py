"""State files are private: state_dir 0700; the SQLite database, its -wal
and -shm, the key files, recordings, the export link key, the TLS key and
the webhook state file 0600 -- under a permissive umask (022), as a
service manager may leave it."""

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from harness.daemon import Daemon, write_config
from siprecd import config as configmod
from siprecd.crypto import Keyring
from siprecd.recordings import RecordingStore
from siprecd.storage.sqlite import SqliteStorage

SIPRECD = str(Path(sys.executable).parent / "siprecd")


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def umask(value):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_daemon_state_is_private(tmp_path):
    with umask(0o022):
        key = tmp_path / "storage.key"
        out = subprocess.run([SIPRECD, "storage", "keygen", str(key)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        path, written = write_config(tmp_path, storage={"encryption": {"key_file": str(key)}})
        daemon = Daemon(path).start()
    try:
        daemon.wait_ready()
        state = Path(written["state_dir"])
        db = state / "siprecd.sqlite"
        assert db.with_name("siprecd.sqlite-wal").exists()
        expected = {
            state: 0o700,
            db: 0o600,
            db.with_name("siprecd.sqlite-wal"): 0o600,
            db.with_name("siprecd.sqlite-shm"): 0o600,
            key: 0o600,
            state / "export-link.key": 0o600,
            state / "tls": 0o700,
            state / "tls" / "api-selfsigned.key": 0o600,
        }
        found = {p: mode(p) for p in expected}
        assert found == expected, {str(p): oct(m) for p, m in found.items()}
        # Nothing in state_dir is readable by others.
        for p in state.rglob("*"):
            assert not mode(p) & 0o007, (p, oct(mode(p)))
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.kill()


def test_a_key_file_readable_by_others_stops_the_daemon_with_one_line(tmp_path):
    key = tmp_path / "storage.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o644)
    path, _ = write_config(tmp_path, storage={"encryption": {"key_file": str(key)}})
    out = subprocess.run([SIPRECD, "storage", "rekey", "-c", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 78
    assert out.stderr.strip() == (f"siprecd: storage.encryption.key_file: key file {key} is "
                                  "accessible by others (mode 0644); chmod 600 it")
    with Daemon(path) as daemon:
        assert daemon.proc.wait(timeout=60) == 78
        daemon.drain_output()
        assert any("storage.encryption.key_file" in line and "chmod 600" in line
                   for line in daemon.lines), daemon.lines


@pytest_twisted.ensureDeferred
async def test_an_existing_database_readable_by_others_is_made_private(tmp_path):
    db = tmp_path / "state" / "siprecd.sqlite"
    with umask(0o022):
        storage = SqliteStorage(reactor, db)
        await storage.open()
        await storage.close()
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(db) + suffix)
        if p.exists():
            assert mode(p) == 0o600, (p, oct(mode(p)))
    assert mode(db.parent) == 0o700
    db.chmod(0o644)
    storage = SqliteStorage(reactor, db)
    await storage.open()
    assert mode(db) == 0o600
    await storage.close()


@pytest.mark.parametrize("encrypted", [False, True])
@pytest_twisted.ensureDeferred
async def test_recordings_are_private(tmp_path, encrypted):
    with umask(0o022):
        store = RecordingStore(tmp_path / "state" / "recordings", reactor,
                               keyring=Keyring([os.urandom(32)]) if encrypted else None)
        store.audio("g1", "leg-1", "customer", 0, np.ones(8000, dtype=np.int16))
        path = await store.close_leg("g1", "leg-1")
    assert path.name == ("leg-1.wav.enc" if encrypted else "leg-1.wav")
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(tmp_path / "state" / "recordings") == 0o700


async def export_one_day(tmp_path):
    """Run ``siprecd export`` under umask 022 over a day with one message,
    after disabling a webhook target; returns (config, TargetStates)."""
    from test_encryption import conversation, utterance
    from twisted.internet import threads

    from siprecd.storage.backends import create_storage
    from siprecd.webhooks.state import TargetStates

    path, _ = write_config(tmp_path)
    config = configmod.load(path)
    with umask(0o022):
        storage = create_storage(config, reactor)
        await storage.open()
        stream = await conversation(storage)
        await storage.add_message(utterance(stream, 1))
        await storage.close()
        states = TargetStates.for_config(config)
        states.disable("crm", 0, "410 Gone")
        out = await threads.deferToThread(
            subprocess.run, [SIPRECD, "export", "-c", str(path), "--date", "2023-11-14"],
            capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return config, states


@pytest_twisted.ensureDeferred
async def test_webhook_state_and_export_files_are_private(tmp_path):
    config, states = await export_one_day(tmp_path)
    assert mode(states.path) == 0o600 and mode(states.lock_path) == 0o600
    exports = config.in_state_dir(config.export.directory)
    files = [p for p in exports.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert mode(p) == 0o600, (p, oct(mode(p)))


@pytest_twisted.ensureDeferred
async def test_export_folders_are_private(tmp_path):
    config, _ = await export_one_day(tmp_path)
    exports = config.in_state_dir(config.export.directory)
    for p in exports.rglob("*"):
        if p.is_dir():
            assert mode(p) == 0o700, (p, oct(mode(p)))
    assert mode(exports) == 0o700
