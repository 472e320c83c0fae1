"""Consented recordings: stereo WAV per leg, on the streams' timelines,
redacted spans silenced, crash recovery and retention (real files, the
reactor's thread pool)."""

import os
import time
import wave

import numpy as np
import pytest_twisted
from twisted.internet import reactor

from siprecd.recordings import RecordingStore
from test_transcribe_service import (  # noqa: F401 (storage: a fixture)
    GUID, PIN_WORDS, Line, fake_backend, make_service, messages, offered, pin_audio, start,
    storage,
)


def read_wav(path):
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames


def ramp(n, start=1):
    return (np.arange(start, start + n) % 30000).astype(np.int16)


@pytest_twisted.ensureDeferred
async def test_two_channels_on_their_timelines_with_a_span_silenced(tmp_path):
    store = RecordingStore(tmp_path / "rec", reactor)
    customer, agent = ramp(20000), -ramp(20000)
    # Delivered in pieces, as the media plane does, agent starting later.
    for at in range(0, 20000, 160):
        store.audio("g1", "leg-1", "customer", at, customer[at:at + 160])
    for at in range(0, 12000, 160):
        store.audio("g1", "leg-1", "agent", 8000 + at, agent[at:at + 160])
    store.silence("g1", "leg-1", "customer", 500, 1000)       # ms
    path = await store.close_leg("g1", "leg-1")
    assert path == tmp_path / "rec" / "g1" / "leg-1.wav"
    assert not (tmp_path / "rec" / "g1" / "leg-1.wav.part").exists()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    frames = read_wav(path)
    assert len(frames) == 20000
    expected = customer.copy()
    expected[4000:8000] = 0
    assert np.array_equal(frames[:, 0], expected)
    assert np.array_equal(frames[:8000, 1], np.zeros(8000, dtype=np.int16))
    assert np.array_equal(frames[8000:20000, 1], agent[:12000])
    assert store.files("g1") == {"leg-1": path}


@pytest_twisted.ensureDeferred
async def test_a_late_start_leaves_a_hole_not_data(tmp_path):
    store = RecordingStore(tmp_path / "rec", reactor)
    hour = 8000 * 3600
    store.audio("g2", "leg-1", "customer", hour, ramp(8000))
    path = await store.close_leg("g2", "leg-1")
    frames = read_wav(path)
    assert len(frames) == hour + 8000
    assert not frames[:hour].any() and frames[hour:, 0].any()
    # An hour of silence before it takes no disk: the file is sparse.
    assert os.stat(path).st_blocks * 512 < 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_a_part_file_left_by_a_crash_is_finished_at_start(tmp_path):
    store = RecordingStore(tmp_path / "rec", reactor)
    store.audio("g3", "leg-1", "agent", 0, ramp(9000))
    # Written out (one batch), never closed: as after SIGKILL.
    await store._legs[("g3", "leg-1")].queue
    part = tmp_path / "rec" / "g3" / "leg-1.wav.part"
    assert part.exists()
    fresh = RecordingStore(tmp_path / "rec", reactor)
    assert await fresh.recover() == 1
    frames = read_wav(tmp_path / "rec" / "g3" / "leg-1.wav")
    assert np.array_equal(frames[:8000, 1], ramp(8000))


@pytest_twisted.ensureDeferred
async def test_retention_removes_old_calls_only(tmp_path):
    store = RecordingStore(tmp_path / "rec", reactor)
    for guid in ("old", "new"):
        store.audio(guid, "leg-1", "customer", 0, ramp(800))
        await store.close_leg(guid, "leg-1")
    week = 7 * 86400
    old = time.time() - week - 60
    os.utime(tmp_path / "rec" / "old" / "leg-1.wav", (old, old))
    assert await store.purge(time.time(), week) == 1
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["new"]


@pytest_twisted.ensureDeferred
async def test_the_pipeline_records_only_when_allowed_and_silences_the_pin(storage, tmp_path):
    store = RecordingStore(tmp_path / "rec", reactor)
    service = make_service(storage, fake_backend(words=PIN_WORDS), recordings=store)
    session = await offered(service)
    await start(service, audio_recording_allowed=True, detailed_token=True,
                redaction_output="redacted_and_unredacted")
    audio = pin_audio()
    Line(service, session, 0).play(audio)
    Line(service, session, 1).play(audio)
    await service.stop(GUID)
    service.call_ended(session, "bye")
    await service.drain()
    (leg_id, path), = store.files(GUID).items()
    frames = read_wav(path)
    (customer,) = [m for m in await messages(storage) if m.role == "customer"]
    assert customer.text == "my pin is ####"
    pin = customer.tokens[3]
    first, last = pin["start"] * 8, pin["end"] * 8
    assert not frames[first:last, 0].any()             # the PIN is gone
    assert frames[:first, 0].any()                     # "my pin is" is there
    assert np.array_equal(frames[:len(audio), 1][:first], audio[:first])


@pytest_twisted.ensureDeferred
async def test_nothing_is_recorded_without_consent(storage, tmp_path):
    store = RecordingStore(tmp_path / "rec", reactor)
    service = make_service(storage, fake_backend(words=PIN_WORDS), recordings=store)
    session = await offered(service)
    await start(service)
    Line(service, session, 0).play(pin_audio())
    await service.stop(GUID)
    service.call_ended(session, "bye")
    await service.drain()
    assert store.files(GUID) == {}
    assert not (tmp_path / "rec").exists()
