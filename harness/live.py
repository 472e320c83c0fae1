"""Measuring live transcripts through a whole daemon (bench/live_bench and
tests/test_live_daemon.py).

- :func:`speech_plan` -- Korean sentences (espeak-ng) with pauses between
  them, as one stream's audio, and where each sentence starts and ends
  (the truth the latencies are measured against);
- :class:`LiveRecorder` -- an app-wide live WebSocket client that stamps
  every event with the wall time it arrived;
- :func:`utterance_stats` -- per final utterance: the first partial's
  latency after the start of speech, the final's after its end, and how
  much of the final the last partial already had.
"""

import collections
import time

import attrs
import numpy as np
from twisted.internet import defer

from siprecd.live.client import connect
from siprecd.testing.asr import korean_speech

__all__ = ["SENTENCES", "speech_plan", "dialogue_plans", "LiveRecorder", "utterance_stats",
           "percentile", "word_overlap"]

RATE = 8000
SENTENCES = (
    "안녕하세요 고객센터입니다 무엇을 도와드릴까요",
    "카드 결제가 두 번 청구된 것 같아서 전화했습니다",
    "확인해 보겠습니다 잠시만 기다려 주세요",
    "지난주 금요일에 온라인으로 주문했어요",
    "네 확인되었습니다 한 건은 취소 처리해 드리겠습니다",
    "감사합니다 좋은 하루 보내세요",
)


@attrs.frozen
class Plan:
    audio: np.ndarray
    spans: tuple          # (start ms, end ms) of each sentence on the stream


def speech_plan(directory, sentences=SENTENCES, lead=1.0, gap=1.5, threshold=400):
    """The stream's audio (int16, 8 kHz) and each sentence's span, found
    from the samples (the first and last loud sample of each)."""
    parts = [np.zeros(int(lead * RATE), dtype=np.int16)]
    spans = []
    at = len(parts[0])
    for n, text in enumerate(sentences):
        said = korean_speech(text, f"{directory}/sentence-{n}.wav")
        loud = np.nonzero(np.abs(said.astype(np.int32)) >= threshold)[0]
        first, last = (int(loud[0]), int(loud[-1])) if len(loud) else (0, len(said))
        spans.append(((at + first) * 1000 // RATE, (at + last) * 1000 // RATE))
        parts += [said, np.zeros(int(gap * RATE), dtype=np.int16)]
        at += len(said) + int(gap * RATE)
    return Plan(np.concatenate(parts), tuple(spans))


def dialogue_plans(directory, sentences=SENTENCES, lead=1.0, gap=1.0, threshold=400):
    """{"customer": Plan, "agent": Plan}: a conversation in turns, the
    customer first, each stream silent while the other party speaks (as
    on a call: one recogniser busy at a time per call)."""
    audio = {"customer": [np.zeros(int(lead * RATE), dtype=np.int16)],
             "agent": [np.zeros(int(lead * RATE), dtype=np.int16)]}
    spans = {"customer": [], "agent": []}
    at = int(lead * RATE)
    for n, text in enumerate(sentences):
        speaker, other = ("customer", "agent") if n % 2 == 0 else ("agent", "customer")
        said = korean_speech(text, f"{directory}/turn-{n}.wav")
        loud = np.nonzero(np.abs(said.astype(np.int32)) >= threshold)[0]
        first, last = (int(loud[0]), int(loud[-1])) if len(loud) else (0, len(said))
        spans[speaker].append(((at + first) * 1000 // RATE, (at + last) * 1000 // RATE))
        pause = np.zeros(int(gap * RATE), dtype=np.int16)
        audio[speaker] += [said, pause]
        audio[other] += [np.zeros(len(said), dtype=np.int16), pause]
        at += len(said) + len(pause)
    return {role: Plan(np.concatenate(audio[role]), tuple(spans[role])) for role in audio}


class LiveRecorder:
    """Every live event of an app's calls, with its arrival time (UNIX s)."""

    def __init__(self):
        self.events = []       # (time, event)
        self.connection = None
        self.subscribed = defer.Deferred()

    def __call__(self, event):
        self.events.append((time.time(), event))
        if event.get("event") == "subscribed" and not self.subscribed.called:
            self.subscribed.callback(event)

    async def connect(self, reactor, port, api_id, secret, cafile, guid=None):
        self.connection = await connect(reactor, "127.0.0.1", port, api_id, secret,
                                        guid=guid, on_event=self, cafile=str(cafile))
        await self.subscribed
        return self

    def of(self, guid):
        return [(t, e) for t, e in self.events if e.get("externalConversationId") == guid]


def word_overlap(partial, final):
    """(share of the final's words the partial had, |both| / |either|),
    words counted as multisets."""
    p, f = collections.Counter(partial.split()), collections.Counter(final.split())
    both = sum((p & f).values())
    either = sum((p | f).values())
    return (both / max(1, sum(f.values())), both / max(1, either))


def _text(event):
    return " ".join(u["text"] for u in event["autotranscribeResponse"]["utterance"])


def utterance_stats(events, media_start, spans, streaming_from):
    """One dict per final of one stream's *events* [(time, event)]:
    ``first_partial`` (s after its sentence started), ``final`` (s after
    it ended), ``recall``/``jaccard`` of its last partial against it, and
    ``partials`` (how many). A final is matched to the last sentence that
    started before its first word (+0.3 s); sentences that started before
    *streaming_from* (UNIX s) are left out."""
    partials = collections.defaultdict(list)
    out = []
    for at, event in events:
        if event["event"] == "partial" and _text(event):
            partials[event["utteranceId"]].append((at, event))
        elif event["event"] == "final":
            start = event["autotranscribeResponse"]["start"]
            started = [s for s in spans if s[0] <= start + 300]
            if not started:
                continue
            span = started[-1]
            if media_start + span[0] / 1000 < streaming_from:
                continue
            mine = partials.pop(event["messageId"], [])
            stats = {"final": at - (media_start + span[1] / 1000), "partials": len(mine),
                     "span": span}
            if mine:
                first_at, first = mine[0]
                stats["first_partial"] = first_at - (media_start + span[0] / 1000)
                # How much of that is the words themselves (the first word
                # must be heard to its end), how much the wait for the
                # recogniser and the way out.
                stats["first_word_end"] = (first["autotranscribeResponse"]["end"]
                                           - span[0]) / 1000
                stats["first_lag"] = first_at - (media_start
                                                 + first["autotranscribeResponse"]["end"] / 1000)
                stats["recall"], stats["jaccard"] = word_overlap(_text(mine[-1][1]),
                                                                 _text(event))
            out.append(stats)
    # A sentence split in two finals counts once, at its first final.
    seen, unique = set(), []
    for stats in out:
        if stats["span"] not in seen:
            seen.add(stats["span"])
            unique.append(stats)
    return unique


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
