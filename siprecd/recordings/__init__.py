"""Consented call audio: one stereo WAV per leg (customer left, agent right).

Audio is recorded only for windows whose start-streaming said
``audioRecordingAllowed: true``, and only what passed the open gate; the
rest of the leg is silence. Each channel is on its own stream's timeline
(frame *n* is sample *n* of that stream, the same clock as an utterance's
``start``/``end``), so redacted spans found later by
:mod:`siprecd.redact` are silenced exactly where their words were.

Files live in ``<recordings.directory>/<guid>/<leg id>.wav`` (8 kHz, 16-bit,
2 channels). While a leg is being recorded the file is ``.wav.part``: the
header sizes are written when it is closed (at the next leg or the end of
the call), then it is renamed, so a finished name is always a complete
WAV. A ``.part`` left by a crash is finished at the next start
(:meth:`RecordingStore.recover`). Sparse writes leave unrecorded stretches
as holes in the file, so a long IVR prefix costs no disk.

All file I/O runs on a thread, one operation at a time per file, never on
the reactor thread; memory per leg is bounded by the batch size (1 s per
channel).

With a key in ``storage.encryption`` (see :mod:`siprecd.crypto`), a
finished leg is encrypted as it is closed: ``<leg id>.wav.enc`` (AES-256-GCM
in 64 KiB chunks) replaces the ``.part``, and the plain file is removed.
The ``.part`` of a leg still being recorded is plain: redacted spans are
silenced in it after the fact, which needs random access to the audio.
:meth:`RecordingStore.open` reads either kind; :meth:`RecordingStore.rekey`
encrypts plain recordings and re-encrypts those under older keys.
"""

import os
import shutil
import struct
from pathlib import Path

import numpy as np
from twisted.internet import defer, threads
from twisted.logger import Logger

from siprecd.crypto import SUFFIX, Keyring

__all__ = ["RecordingStore", "CHANNELS", "wav_header"]

SAMPLE_RATE = 8000
CHANNELS = {"customer": 0, "agent": 1}
FRAME_BYTES = 4                 # 2 channels x 16 bit
HEADER_BYTES = 44
BATCH = SAMPLE_RATE             # samples per channel gathered before a write


def wav_header(frames):
    data = frames * FRAME_BYTES
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, SAMPLE_RATE,
                                    SAMPLE_RATE * FRAME_BYTES, FRAME_BYTES, 16)
            + b"data" + struct.pack("<I", data))


def _overlay(path, channel, frame, samples):
    """Write *samples* (int16; None for silence of *frame_count*) into one
    channel of the frames starting at *frame*, keeping the other channel."""
    samples, count = samples if isinstance(samples, tuple) else (samples, len(samples))
    offset = HEADER_BYTES + frame * FRAME_BYTES
    with open(path, "r+b") as f:
        f.seek(offset)
        existing = f.read(count * FRAME_BYTES)
        block = np.zeros((count, 2), dtype="<i2")
        have = len(existing) // FRAME_BYTES
        if have:
            block[:have] = np.frombuffer(existing[:have * FRAME_BYTES], dtype="<i2").reshape(-1, 2)
        block[:, channel] = 0 if samples is None else samples
        f.seek(offset)
        f.write(block.tobytes())


def _finish(part, final, keyring=None):
    """Write the header sizes from the data written, fsync, rename (or,
    with *keyring*, encrypt to ``final.enc`` and remove the plain file)."""
    size = os.path.getsize(part)
    frames = max(0, size - HEADER_BYTES) // FRAME_BYTES
    with open(part, "r+b") as f:
        f.truncate(HEADER_BYTES + frames * FRAME_BYTES)
        f.seek(0)
        f.write(wav_header(frames))
        f.flush()
        os.fsync(f.fileno())
    if keyring is None:
        os.replace(part, final)
    else:
        _encrypt(keyring, part, final)
    return frames


def _encrypted_name(path):
    return Path(str(path) + SUFFIX)


def _encrypt(keyring, plain, final, source=None):
    """Encrypt *plain* (or the file object *source* of *plain*'s size) to
    ``final.enc`` through a temporary name, then remove *plain*."""
    target = _encrypted_name(final)
    temporary = target.with_name(target.name + ".tmp")
    if source is None:
        keyring.encrypt_file(plain, temporary)
    else:
        keyring.encrypt_stream(source, source.size, temporary)
    os.replace(temporary, target)
    if source is None or str(plain) != str(target):
        try:
            os.unlink(plain)
        except FileNotFoundError:
            pass
    return target


class _Leg:
    """One leg's recording in progress."""

    def __init__(self, directory, guid, leg_id):
        self.dir = Path(directory) / guid
        self.final = self.dir / f"{leg_id}.wav"
        self.part = self.dir / f"{leg_id}.wav.part"
        self.pending = {}          # channel -> (first frame, [arrays], count)
        self.queue = defer.succeed(None)
        self.failed = False
        self.frames = 0

    def create(self):
        # mkdir(parents=True) gives only the last folder the mode.
        self.dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(wav_header(0))


class RecordingStore:
    """Where the transcription service puts consented audio."""

    log = Logger()

    def __init__(self, directory, reactor, keyring=None):
        self.directory = Path(directory)
        self.reactor = reactor
        # A siprecd.crypto.Keyring: finished legs are encrypted with it.
        self.keyring = keyring
        self._legs = {}            # (guid, leg id) -> _Leg

    @classmethod
    def from_config(cls, config, reactor):
        from siprecd.crypto import keyring_for

        return cls(config.in_state_dir(config.recordings.directory), reactor,
                   keyring=keyring_for(config))

    # -- recording --------------------------------------------------------------------

    def audio(self, guid, leg_id, role, position, samples):
        """Samples of *role*'s stream, at *position* on its timeline."""
        leg = self._leg(guid, leg_id)
        if leg is None or leg.failed:
            return
        channel = CHANNELS.get(role, 0)
        samples = np.asarray(samples, dtype=np.int16)
        first, parts, count = leg.pending.get(channel, (position, [], 0))
        if parts and first + count != position:
            self._write(leg, channel)
            first, parts, count = position, [], 0
        parts.append(samples)
        count += len(samples)
        leg.pending[channel] = (first, parts, count)
        leg.frames = max(leg.frames, position + len(samples))
        if count >= BATCH:
            self._write(leg, channel)

    def silence(self, guid, leg_id, role, start_ms, end_ms):
        """Silence *role*'s channel between two times of its timeline (a
        redacted span); audio still gathered in memory is written first, so
        the silencing comes after it."""
        leg = self._legs.get((guid, leg_id))
        if leg is None or leg.failed:
            return
        channel = CHANNELS.get(role, 0)
        self._write(leg, channel)
        first = max(0, int(start_ms) * SAMPLE_RATE // 1000)
        last = min(leg.frames, -(-int(end_ms) * SAMPLE_RATE // 1000))
        if last > first:
            self._queue(leg, _overlay, leg.part, channel, first, (None, last - first))

    def close_leg(self, guid, leg_id):
        """Finish one leg's file; fires with its path, or None."""
        leg = self._legs.pop((guid, leg_id), None)
        if leg is None:
            return defer.succeed(None)
        for channel in list(leg.pending):
            self._write(leg, channel)
        if leg.failed:
            return leg.queue.addCallback(lambda _: None)

        def done(frames):
            self.log.info("recording of guid {guid} leg {leg_id} saved: {seconds:.1f} s",
                          guid=guid, leg_id=leg_id, seconds=frames / SAMPLE_RATE)
            return leg.final if self.keyring is None else _encrypted_name(leg.final)

        d = self._queue(leg, _finish, leg.part, leg.final, self.keyring)
        return d.addCallback(lambda frames: done(frames) if frames is not None else None)

    def close_call(self, guid):
        """Finish every leg of *guid* being recorded."""
        legs = [leg_id for g, leg_id in self._legs if g == guid]
        return defer.gatherResults([self.close_leg(guid, leg_id) for leg_id in legs],
                                   consumeErrors=True)

    def _leg(self, guid, leg_id):
        leg = self._legs.get((guid, leg_id))
        if leg is None:
            leg = self._legs[(guid, leg_id)] = _Leg(self.directory, guid, leg_id)
            self._queue(leg, leg.create)
        return leg

    def _write(self, leg, channel):
        entry = leg.pending.pop(channel, None)
        if entry is None or not entry[1]:
            return
        first, parts, _ = entry
        samples = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._queue(leg, _overlay, leg.part, channel, first, samples)

    def _queue(self, leg, function, *args):
        def run(_):
            if leg.failed:
                return None
            return threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), function, *args)

        def failed(failure):
            if not leg.failed:
                leg.failed = True
                # The call goes on; only its recording is lost (disk full...).
                self.log.error("recording {path} failed, no more audio is kept for this leg: "
                               "{error}", path=str(leg.part), error=failure.getErrorMessage())
            return None

        leg.queue = leg.queue.addCallback(run).addErrback(failed)
        return leg.queue

    # -- after the call ---------------------------------------------------------------

    def files(self, guid):
        """{leg id: path} of the finished recordings of *guid* (``.wav``, or
        ``.wav.enc`` when encrypted; see :meth:`open`)."""
        folder = self.directory / guid
        if not _safe_name(guid) or not folder.is_dir():
            return {}
        found = {p.name[:-4]: p for p in sorted(folder.glob("*.wav"))}
        # An encrypted one wins (a plain one beside it is a rekey cut short).
        found.update({p.name[:-8]: p for p in sorted(folder.glob("*.wav" + SUFFIX))})
        return found

    @staticmethod
    def encrypted(path):
        return str(path).endswith(".wav" + SUFFIX)

    def size(self, path):
        """The WAV size of a finished recording (blocking: reads a header)."""
        return Keyring.file_size(path) if self.encrypted(path) else Path(path).stat().st_size

    def open(self, path):
        """A binary file object reading a finished recording's WAV bytes,
        with ``size`` (blocking). For an encrypted one, a decrypting reader
        (siprecd.crypto.EncryptedFile: each chunk authenticated before it is
        read; DecryptError otherwise)."""
        if self.encrypted(path):
            if self.keyring is None:
                from siprecd.crypto import DecryptError

                raise DecryptError(f"{path} is encrypted and no key is configured in "
                                   "storage.encryption")
            return self.keyring.open_file(path)
        f = open(path, "rb")
        f.size = os.fstat(f.fileno()).st_size
        return f

    def rekey(self):
        """Encrypt the finished plain recordings and re-encrypt those under
        older keys with the first key (on a thread); fires with the number
        of files rewritten."""
        if self.keyring is None:
            return defer.fail(ValueError("no key is configured in storage.encryption"))
        active = {g for g, _ in self._legs}

        def work():
            done = 0
            if not self.directory.is_dir():
                return 0
            for folder in sorted(self.directory.iterdir()):
                if not folder.is_dir() or folder.name in active:
                    continue
                for plain in sorted(folder.glob("*.wav")):
                    _encrypt(self.keyring, plain, plain)
                    done += 1
                for path in sorted(folder.glob("*.wav" + SUFFIX)):
                    if Keyring.file_key_id(path) == self.keyring.primary_id:
                        continue
                    with self.keyring.open_file(path) as source:
                        _encrypt(self.keyring, path, Path(str(path)[:-len(SUFFIX)]), source)
                    done += 1
            return done

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work)

    def purge(self, now, retention):
        """Remove the recordings of calls whose last file was finished more
        than *retention* seconds before *now* (the transcripts' retention;
        run on every node, since each keeps its own files). Fires with the
        number of calls removed."""
        active = {g for g, _ in self._legs}

        def work():
            removed = 0
            if not self.directory.is_dir():
                return 0
            for folder in self.directory.iterdir():
                if not folder.is_dir() or folder.name in active:
                    continue
                try:
                    newest = max((p.stat().st_mtime for p in folder.iterdir()), default=0)
                except OSError:
                    continue
                if newest < now - retention:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            return removed

        def told(removed):
            if removed:
                self.log.info("retention: removed the recordings of {calls} calls",
                              calls=removed)
            return removed

        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), work).addCallback(told)

    def recover(self):
        """Finish the ``.part`` files a crash left behind (on a thread)."""
        def work():
            done = 0
            for stale in self.directory.glob("*/*.wav.enc.tmp"):
                stale.unlink(missing_ok=True)     # a crash while encrypting
            for part in self.directory.glob("*/*.wav.part"):
                try:
                    _finish(part, part.with_suffix(""), self.keyring)
                    done += 1
                except OSError as e:
                    self.log.warn("cannot finish the recording {path}: {error}",
                                  path=str(part), error=str(e))
            return done

        if not self.directory.is_dir():
            return defer.succeed(0)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work)


def _safe_name(name):
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name
