"""The sans-IO parts of transcription: segmentation, the timeline map, and
number formatting. No recogniser, no reactor."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.asr.results import Token
from siprecd.numbers import format_numbers, number_language
from siprecd.transcribe.segment import FRAME, Feed, Finish, Segmenter
from siprecd.transcribe.timeline import Timeline

RATE = 8000


def loud(seconds, amplitude=8000, frequency=440.0):
    n = int(round(seconds * RATE))
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(n) / RATE)).astype(np.int16)


def quiet(seconds, noise=0.0, seed=0):
    n = int(round(seconds * RATE))
    if not noise:
        return np.zeros(n, dtype=np.int16)
    return np.random.default_rng(seed).normal(0, noise, n).astype(np.int16)


def push_all(segmenter, audio, sizes=(160,), start=0):
    """Push *audio* in pieces cycling through *sizes*; all actions in order."""
    out, pos, i = [], 0, 0
    while pos < len(audio):
        size = sizes[i % len(sizes)]
        out += segmenter.push(start + pos, audio[pos:pos + size])
        pos += size
        i += 1
    return out


def feeds(actions):
    return [a for a in actions if isinstance(a, Feed)]


def finishes(actions):
    return [(a.reason, a.position) for a in actions if isinstance(a, Finish)]


def check_contiguous_runs(actions):
    """Between two Finishes, Feeds continue each other exactly."""
    expected = None
    for a in actions:
        if isinstance(a, Finish):
            expected = None
        else:
            assert expected is None or a.position == expected
            expected = a.position + len(a)


# -- fixed chunks --------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=20))
def test_fed_in_fixed_chunks_whatever_the_delivery(sizes):
    audio = loud(4.0)
    s = Segmenter(chunk=0.2, max_utterance=300)
    actions = push_all(s, audio, sizes) + s.close()
    fed = feeds(actions)
    assert all(len(f) == 1600 for f in fed[:-1])
    assert np.array_equal(np.concatenate([f.samples for f in fed]), audio)
    check_contiguous_runs(actions)
    # The same audio is cut the same way however it was delivered.
    reference = Segmenter(chunk=0.2, max_utterance=300)
    expected = feeds(push_all(reference, audio, (len(audio),)) + reference.close())
    assert [(f.position, len(f)) for f in fed] == [(f.position, len(f)) for f in expected]


# -- where utterances end ------------------------------------------------------------


def test_trailing_silence_ends_the_utterance():
    audio = np.concatenate([loud(1.0), quiet(0.8), loud(0.5), quiet(0.3), loud(0.5), quiet(1.0)])
    s = Segmenter(endpoint=0.5, skip_after=5.0)
    actions = push_all(s, audio)
    # 1.0 s of speech + 0.5 s of silence; the 0.3 s pause does not end one.
    # The second: 0.5 s + 0.3 s pause + 0.5 s of speech, then 0.5 s.
    assert finishes(actions) == [("silence", 12000), ("silence", 8000 * 3.1 + 4000)]
    check_contiguous_runs(actions)


def test_endpoint_silence_is_configurable():
    audio = np.concatenate([loud(1.0), quiet(0.8), loud(0.5), quiet(2.0)])
    s = Segmenter(endpoint=1.0, skip_after=5.0)
    assert finishes(push_all(s, audio)) == [("silence", int(8000 * 3.3))]


def test_max_utterance_ends_long_speech():
    s = Segmenter(max_utterance=1.0, endpoint=0.5)
    actions = push_all(s, loud(3.5))
    assert finishes(actions) == [("max-length", 8000), ("max-length", 16000),
                                 ("max-length", 24000)]
    check_contiguous_runs(actions)


def test_quiet_noise_is_silence_and_speech_is_not():
    s = Segmenter(threshold=-45.0, endpoint=0.5, skip_after=5.0)
    audio = np.concatenate([quiet(1.0, noise=30), loud(0.5, amplitude=1500), quiet(1.0, noise=30)])
    assert finishes(push_all(s, audio)) == [("silence", 8000 * 1.5 + 4000)]


def test_partial_frames_across_pieces():
    """Frames are on the stream's grid even when pieces are not."""
    audio = np.concatenate([loud(1.0), quiet(1.0)])
    for sizes in ((7,), (333, 12), (FRAME * 3 + 1,)):
        s = Segmenter(endpoint=0.5, skip_after=5.0)
        assert finishes(push_all(s, audio, sizes)) == [("silence", 12000)]


# -- long silences ------------------------------------------------------------------


def long_silence_audio(noise=0.0):
    return np.concatenate([quiet(0.3, noise, 1), loud(1.0), quiet(4.0, noise, 2), loud(1.0),
                           quiet(0.7, noise, 3), loud(0.4), quiet(3.0, noise, 4), loud(0.6)])


@pytest.mark.parametrize("noise", [0.0, 40.0])
def test_long_silence_resets_and_is_skipped(noise):
    audio = long_silence_audio(noise)
    s = Segmenter(endpoint=0.5, skip_after=1.0, preroll=0.5, chunk=0.2)
    actions = push_all(s, audio) + s.close()
    check_contiguous_runs(actions)
    speech2 = 8000 * 5.3
    speech4 = 8000 * (5.3 + 1.0 + 0.7 + 0.4 + 3.0)
    assert finishes(actions) == [
        ("silence", 8000 * 1.3 + 4000),
        ("reset", speech2 - 4000),
        ("silence", 8000 * 6.3 + 4000),
        ("silence", 8000 * 7.4 + 4000),
        ("reset", speech4 - 4000),
    ]
    # After a reset, the recogniser gets the preroll and the speech on a
    # fresh chunk grid.
    after = actions[actions.index(Finish(int(speech2 - 4000), "reset")) + 1]
    assert after.position == speech2 - 4000
    # Skipped: each long silence less what was fed before it (endpoint,
    # then up to skip_after) and the preroll.
    assert s.stats["skipped"] == int(8000 * (4.0 - 1.0 - 0.5) + 8000 * (3.0 - 1.0 - 0.5))
    assert s.stats["fed"] + s.stats["skipped"] == len(audio)


@pytest.mark.parametrize("noise", [0.0, 40.0])
def test_skipping_changes_nothing_after_a_reset(noise):
    """With and without skipping, the same Finishes come at the same
    places, and from each reset to the Finish after it the recogniser is
    given the very same audio in the same chunks: the utterance after a
    long silence cannot differ. (What differs is only how much of the
    silence before the reset it was given.)"""
    audio = long_silence_audio(noise)

    def after_resets(skip):
        s = Segmenter(skip_silence=skip)
        actions = push_all(s, audio, (160, 480, 320)) + s.close()
        runs, current = [], None
        for a in actions:
            if isinstance(a, Finish):
                if a.reason == "reset":
                    current = []
                    runs.append(current)
                else:
                    current = None
            elif current is not None:
                current.append((a.position, a.samples.tobytes()))
        return finishes(actions), runs, s.stats

    skipped_finishes, skipped, skipped_stats = after_resets(True)
    kept_finishes, kept, kept_stats = after_resets(False)
    assert skipped_finishes == kept_finishes
    assert len(skipped) == 2 and all(skipped)
    assert skipped == kept
    assert skipped_stats["skipped"] > 0 and kept_stats["skipped"] == 0


def test_leading_silence_is_skipped_too():
    # A window starts as in a long silence: all but the preroll of the
    # silence before the first speech is skipped, and a recogniser that
    # was given nothing is not reset.
    s = Segmenter(skip_after=1.0, preroll=0.5)
    actions = push_all(s, np.concatenate([quiet(5.0), loud(1.0)]))
    assert finishes(actions) == []
    assert feeds(actions)[0].position == 8000 * 4.5
    assert s.stats["skipped"] == 8000 * 4.5


def test_a_window_that_hears_no_speech_feeds_nothing():
    s = Segmenter(skip_after=1.0, preroll=0.5)
    actions = push_all(s, quiet(10.0)) + s.close()
    assert actions == []
    assert s.stats["fed"] == 0


def test_close_feeds_the_rest_but_not_a_silent_preroll():
    s = Segmenter(chunk=0.2)
    actions = push_all(s, np.concatenate([loud(0.25), quiet(0.05)]))
    assert sum(len(f) for f in feeds(actions)) == 1600
    rest = s.close()
    assert [(a.position, len(a)) for a in rest] == [(1600, 800)]
    s = Segmenter(chunk=0.2, skip_after=1.0)
    push_all(s, quiet(3.0))
    assert s.close() == []


def test_a_gap_ends_the_utterance_and_the_next_speech_starts_afresh():
    s = Segmenter()
    actions = s.push(0, loud(0.5)) + s.push(40000, loud(0.5)) + s.close()
    # The gap's Finish already left the recogniser fresh: no second reset.
    assert finishes(actions) == [("gap", 4000)]
    fed = feeds(actions)
    assert [f.position for f in fed] == [0, 1600, 3200, 40000, 41600, 43200]


# -- timeline ---------------------------------------------------------------------------


def test_timeline_maps_runs_exactly():
    t = Timeline(8000)
    t.fed_at(800, 1600)        # recogniser 0.0-0.2 s is the stream's 0.1-0.3 s
    t.fed_at(2400, 1600)       # continues: same run
    t.fed_at(80000, 800)       # after a skip: 0.4-0.5 s is 10.0-10.1 s
    assert t.fed == 4000
    assert t.ms(0.0) == 100
    assert t.ms(0.35) == 450
    assert t.ms(0.4) == 10000              # a start at the boundary: the later run
    assert t.ms(0.4, end=True) == 500      # an end at the boundary: the earlier one
    assert t.ms(0.45) == 10050
    assert t.ms(9.0, end=True) == 10100    # clamped to what was fed


def test_timeline_needs_audio():
    with pytest.raises(ValueError):
        Timeline().ms(0.1)


# -- numbers --------------------------------------------------------------------------------


def tokens(text):
    return [Token(w, i * 100, i * 100 + 80, 0.9 - i * 0.01) for i, w in enumerate(text.split())]


def contents(ts):
    return [t.content for t in ts]


@pytest.mark.parametrize("spoken,written", [
    ("my pin is one two three four", "my pin is 1234"),
    ("i have twenty two dollars and fifty cents", "i have 22 dollars and 50 cents"),
    ("one of them", "one of them"),
    ("call five five five one two one two please", "call 5551212 please"),
    ("two hundred and five", "205"),
    ("one point five", "1.5"),
    ("twenty two three", "22 3"),
])
def test_english_numbers(spoken, written):
    assert " ".join(contents(format_numbers(tokens(spoken), "en-US"))) == written


def test_number_tokens_span_their_words():
    out = format_numbers(tokens("pay twenty two now"), "en-us")
    assert out[1] == Token("22", 100, 280, pytest.approx(0.88))
    out = format_numbers(tokens("pin one two three"), "en-us")
    assert out[1] == Token("123", 100, 380, pytest.approx(0.87))


def test_spanish_numbers_and_other_languages():
    assert contents(format_numbers(tokens("tengo veinte dos"), "es-US"))[1] == "20"
    assert contents(format_numbers(tokens("twenty two"), "ko")) == ["twenty", "two"]
    assert number_language("EN_gb") == "en" and number_language("ko") is None
