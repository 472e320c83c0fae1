"""An SRTP call transcribed end to end: the simulator offers SDES-SRTP
(RTP/SAVP, a=crypto) to the daemon's service tree in this process, sends
Korean speech as SRTP, and the real Korean Vosk model transcribes it into
SQLite storage -- the same wiring as tests/test_transcribe_siprec.py.

Decryption must change nothing: the words stored are exactly those a bare
recogniser gives for the same G.711-quantised audio, and the streams'
stats count every packet decrypted and no failure. With a wrong key on
the sending side nothing at all is transcribed, and every packet is
counted as an authentication failure. No key ever shows in a log event.
"""

import base64
import random
import socket

import numpy as np
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from harness.inprocess import start_service_tree
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.simulator import rtp as simulator_rtp
from siprecd.testing.asr import KO_LANGUAGE, ko_model_dir
from siprecd.transcribe import TranscriptionService
from test_transcribe_service import silence
from test_transcribe_siprec import SPEED, StartOnOffer, g711, time_difference, words_of
from test_transcribe_vosk import (  # noqa: F401 (backend, speech: fixtures)
    MAX_TIME_DIFFERENCE_MS, backend, conversation, recognise_directly, speech,
)

SHA1_80 = "AES_CM_128_HMAC_SHA1_80"


def two_sides(speech, customer_gaps, agent_gaps, sentences=None):
    sentences = speech if sentences is None else speech[:sentences]
    customer = conversation(sentences, customer_gaps)
    agent = conversation(sentences[::-1], agent_gaps)
    n = max(len(customer), len(agent))
    n += -n % 160
    return (np.concatenate([customer, silence((n - len(customer)) / 8000)]),
            np.concatenate([agent, silence((n - len(agent)) / 8000)]))


class Watch:
    """What the test needs from inside the tree: each call's SRTP choices
    when offered, its media stats just before its streams close, and every
    log event as text."""

    def __init__(self, root):
        self.keying = []
        self.stats = {}
        self.log_text = []
        media = root.node.media
        offered, ended = media.call_offered, media.call_ended

        def call_offered(session):
            self.keying.append([stream.srtp for stream in session.streams])
            return offered(session)

        def call_ended(session, reason):
            self.stats[session.call_id] = {sid.audio_index: s
                                           for sid, s in media.stats(session.call_id).items()}
            return ended(session, reason)

        media.call_offered, media.call_ended = call_offered, call_ended
        globalLogPublisher.addObserver(self._observe)

    def _observe(self, event):
        self.log_text.append((formatEvent(event) or "") + " " + repr(event))

    def stop(self):
        globalLogPublisher.removeObserver(self._observe)

    def secrets(self):
        """Every key of every call, as base64 and as hex."""
        found = []
        for streams in self.keying:
            for choice in streams:
                if choice is not None:
                    ours = base64.b64decode(choice.answer.split("inline:")[1])
                    for key in (choice.remote.key, ours):
                        found += [base64.b64encode(key).decode(), key.hex()]
        return found


def free_media_ports(count=16):
    """(port_min, port_max) of *count* UDP ports free on loopback, away from
    the default range (a bench may hold it)."""
    for _ in range(100):
        base = random.randrange(30000, 39000, 2)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base, base + count - 1
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free block of UDP ports")


async def srtp_call(tmp_path, backend, spec):
    """Place *spec* at a fresh in-process tree with a TranscriptionService
    that starts on offer; returns (stored messages, summary, Watch)."""
    root, cfg = await start_service_tree(
        tmp_path, reactor, asr={"models": {KO_LANGUAGE: str(ko_model_dir())}},
        media=dict(zip(("port_min", "port_max"), free_media_ports()), srtp="required"))
    watch = Watch(root)
    try:
        for stage in root:
            if getattr(stage, "name", None) == "asr" and getattr(stage, "starting", None):
                await stage.starting
        service = TranscriptionService.from_config(root.config, root.node.storage, backend, reactor)
        root.node.media.consumer = service
        listeners = root.node.sip_server.listener.listeners
        listeners[:] = [x for x in listeners if not isinstance(x, TranscriptionService)]
        listeners += [service, StartOnOffer(service)]
        summary = await place_calls(
            reactor, Target("127.0.0.1", cfg["sip"]["udp"]["port"], "udp"), [spec],
            speed=SPEED, seed=1, local_host="127.0.0.1", media_host="127.0.0.1")
        assert summary.ok, summary.format()
        await service.drain()
        (call,) = summary.calls
        found = await root.node.storage.messages_for_guid(call.guid)
        return found, summary, watch
    finally:
        watch.stop()
        await root.stopService()


@pytest_twisted.ensureDeferred
async def test_an_srtp_call_is_transcribed_end_to_end(tmp_path, backend, speech):
    customer, agent = two_sides(speech, [0.5, 0.8, 2.0, 1.2, 0.9], [1.0, 1.0, 1.0, 2.0, 1.0])
    spec = CallSpec(customer=customer, agent=agent, codec="PCMU", srtp=True, rtcp=True)
    found, summary, watch = await srtp_call(tmp_path, backend, spec)
    (call,) = summary.calls
    assert [s.srtp_suite for s in call.streams] == [SHA1_80, SHA1_80]

    # The words: exactly what the same audio, quantised, gives directly.
    for role, audio in (("customer", customer), ("agent", agent)):
        got = words_of(found, role)
        reference = await recognise_directly(backend, g711(audio))
        assert got and [w[0] for w in got] == [w[0] for w in reference], role
        assert time_difference(reference, got) <= MAX_TIME_DIFFERENCE_MS
        print(f"{role}: {len(got)} words through SIPREC/SRTP/G.711, all equal to the "
              f"quantised audio recognised directly")

    # The streams' stats: every packet decrypted, nothing refused.
    (keying,) = watch.keying
    assert [choice.suite.name for choice in keying] == [SHA1_80, SHA1_80]
    stats = watch.stats[call.call_id]
    for index, sent in enumerate(call.streams):
        s = stats[index]
        assert s["srtp"] is True and s["srtp_suite"] == SHA1_80
        # The BYE goes out right after the last packets, on another socket:
        # the streams may close before the last few are read. (The RTP
        # receiver's own count lags by what its last batch holds.)
        assert sent.packets - 5 <= s["srtp_packets"] <= sent.packets
        assert sent.packets - 50 <= s["packets"] <= s["srtp_packets"]
        assert sent.rtcp_packets - 1 <= s["srtcp_packets"] <= sent.rtcp_packets
        assert (s["srtp_auth_failures"], s["srtp_replays"], s["srtp_errors"]) == (0, 0, 0)
        assert (s["srtcp_auth_failures"], s["srtcp_errors"]) == (0, 0)
        print(f"stream {index}: {s['srtp_packets']} SRTP and {s['srtcp_packets']} SRTCP "
              f"packets decrypted, no failures")

    # Keys: never in a log line.
    keys = watch.secrets()
    assert len(keys) == 8  # two streams, the SRC's key and ours, base64 and hex
    assert watch.log_text
    leaks = [line for line in watch.log_text if any(k in line for k in keys)]
    assert not leaks, leaks[:3]


@pytest_twisted.ensureDeferred
async def test_a_wrong_key_transcribes_nothing_and_counts_failures(tmp_path, backend, speech,
                                                                   monkeypatch):
    # The simulator offers one key and encrypts with another.
    right_sender = simulator_rtp.srtp_sender
    monkeypatch.setattr(simulator_rtp, "srtp_sender",
                        lambda suite, key: right_sender(suite, bytes(b ^ 0x5A for b in key)))
    customer, agent = two_sides(speech, [0.5, 0.5], [0.5, 0.5], sentences=2)
    spec = CallSpec(customer=customer, agent=agent, codec="PCMU", srtp=True, rtcp=True)
    found, summary, watch = await srtp_call(tmp_path, backend, spec)
    (call,) = summary.calls
    assert found == []
    stats = watch.stats[call.call_id]
    for index, sent in enumerate(call.streams):
        s = stats[index]
        assert sent.packets > 0
        assert sent.packets - 5 <= s["srtp_auth_failures"] <= sent.packets
        assert sent.rtcp_packets - 1 <= s["srtcp_auth_failures"] <= sent.rtcp_packets
        assert s["srtcp_auth_failures"] > 0
        assert s["srtp_packets"] == s["packets"] == s["audio_ms"] == 0
        print(f"stream {index}: {s['srtp_auth_failures']} SRTP and "
              f"{s['srtcp_auth_failures']} SRTCP packets failed authentication; "
              f"nothing transcribed")
