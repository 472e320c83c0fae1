"""Which recogniser call runs next when streams share a few threads
(siprecd.asr.scheduling) and what the pipeline asks for (deadlines, lag).

The pipelines are real (StreamPipeline with a real Segmenter); the
recognisers are the FakeRecognizer TEST DOUBLE and their threads the
ClockWorkers TEST DOUBLE on a task.Clock, which take calls from the real
DeadlineQueue: every call takes the clock time a cost function says, so
who waits behind whom is exact and repeatable.
"""

import numpy as np
import pytest
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from siprecd.asr.scheduling import DeadlineQueue, ScheduledPool
from siprecd.testing.asr import ClockWorkers, FakeRecognizer
from siprecd.transcribe.pipeline import StreamPipeline
from siprecd.transcribe.segment import Segmenter

RATE = 8000
PIECE = 160          # 20 ms, as the media plane hands audio out
CHUNK = 1600         # the segmenter's 0.2 s chunk


def speech(seconds, seed=0):
    """Loud audio (a word to the double) that differs from stream to stream."""
    n = int(round(seconds * RATE))
    rng = np.random.default_rng(seed)
    tone = 8000 * np.sin(2 * np.pi * 440.0 * np.arange(n) / RATE)
    return (tone + rng.normal(0, 50, n)).clip(-32768, 32767).astype(np.int16)


def silence(seconds):
    return np.zeros(int(round(seconds * RATE)), dtype=np.int16)


class Stream:
    """One stream: its pipeline, its recogniser and what it was given."""

    def __init__(self, clock, workers, n, max_lag=1.0):
        self.n = n
        self.recognizer = FakeRecognizer(language="ko", workers=workers, endpoint=30.0)
        self.recognizer.n = n
        self.utterances = []
        self.pipeline = StreamPipeline(
            self.recognizer, Segmenter(endpoint=0.3, skip_silence=False),
            self.utterances.append, clock=clock, max_lag=max_lag,
            log_context={"stream_id": f"stream-{n}"})
        self.audio = []
        self.position = 0

    def give(self, samples):
        self.pipeline.pcm(self.position, samples)
        self.audio.append(samples)
        self.position += len(samples)


def play(clock, streams, audios, seconds_after=10.0):
    """Each stream's audio in 20 ms pieces at real-time pace on *clock*,
    then time for the workers to finish."""
    length = max(len(a) for a in audios)
    for at in range(0, length, PIECE):
        for stream, audio in zip(streams, audios):
            if at < len(audio):
                stream.give(audio[at:at + PIECE])
        clock.advance(PIECE / RATE)
    for stream in streams:
        stream.pipeline.close()
    for _ in range(int(seconds_after * 100)):
        clock.advance(0.01)


def test_deadline_queue_gives_the_earliest_first_and_equal_ones_in_order():
    queue = DeadlineQueue()
    for deadline, job in [(5.0, "e"), (1.0, "a"), (3.0, "c1"), (3.0, "c2"), (2.0, "b"),
                          (3.0, "c3")]:
        queue.put(deadline, job)
    assert queue.earliest() == 1.0
    assert [queue.pop() for _ in range(len(queue))] == ["a", "b", "c1", "c2", "c3", "e"]
    assert queue.earliest() is None


class _HeldPool:
    """TEST DOUBLE of a ThreadPool whose threads run what was given them
    only when the test says so; *max* threads."""

    def __init__(self, max):
        self.max = max
        self.waiting = []

    def callInThread(self, function, *args):
        self.waiting.append((function, args))

    def run_one(self):
        function, args = self.waiting.pop(0)
        function(*args)


class _SameThread:
    def callFromThread(self, function, *args):
        function(*args)


def test_scheduled_pool_runs_each_call_once_due_first_when_a_thread_takes_it():
    # A pool whose threads are held: the calls queued meanwhile run in
    # deadline order once threads take them up, each exactly once.
    pool = _HeldPool(2)
    scheduled = ScheduledPool(_SameThread(), pool)
    ran, answers = [], []
    for deadline, name in [(3.0, "late"), (1.0, "urgent"), (2.0, "soon"), (1.0, "urgent-2")]:
        scheduled.submit(deadline, lambda name=name: ran.append(name) or name).addCallback(
            answers.append)

    def failing():
        raise ValueError("the recogniser failed")

    failures = []
    scheduled.submit(0.5, failing).addErrback(lambda f: failures.append(f.value))
    while pool.waiting:
        pool.run_one()
    assert ran == ["urgent", "urgent-2", "soon", "late"]
    assert answers == ran
    assert [str(e) for e in failures] == ["the recogniser failed"]
    assert len(scheduled.queue) == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_background_work_runs_only_when_no_stream_waits_and_a_thread_stays_free(threads):
    pool = _HeldPool(threads)
    scheduled = ScheduledPool(_SameThread(), pool)
    ran = []
    for n in range(3):
        scheduled.background(lambda n=n: ran.append(f"warm-{n}"))
    # One background call at a time at most here (it may use all but one
    # thread; with one thread, the idle one).
    assert len(pool.waiting) == 1
    # A stream's call while the background one runs: it is not held back
    # by the background work queued behind it.
    scheduled.submit(0.0, lambda: ran.append("stream"))
    assert len(pool.waiting) == 2
    pool.run_one()                   # warm-0 ends: the stream's call waits, so no warm-1
    assert ran == ["warm-0"] and len(pool.waiting) == 1
    pool.run_one()                   # the stream's call; then warm-1 may start
    assert ran == ["warm-0", "stream"] and len(pool.waiting) == 1
    pool.run_one()
    pool.run_one()
    assert ran == ["warm-0", "stream", "warm-1", "warm-2"] and not pool.waiting


def test_background_work_may_use_every_thread_but_one():
    pool = _HeldPool(4)
    scheduled = ScheduledPool(_SameThread(), pool)
    for n in range(5):
        scheduled.background(lambda: None)
    assert len(pool.waiting) == 3
    pool.run_one()
    assert len(pool.waiting) == 3


def test_with_every_thread_but_one_busy_background_work_waits():
    pool = _HeldPool(2)
    scheduled = ScheduledPool(_SameThread(), pool)
    ran = []

    def stream_call():
        # While this runs on one of the two threads, background work is
        # given: the other thread is kept free for the streams.
        scheduled.background(lambda: ran.append("warm"))
        ran.append(("stream", len(pool.waiting)))

    scheduled.submit(0.0, stream_call)
    pool.run_one()
    assert ran == [("stream", 0)] and len(pool.waiting) == 1  # started once it ended
    pool.run_one()
    assert ran == [("stream", 0), "warm"]


class FirstComeWorkers(ClockWorkers):
    """ClockWorkers that ignore deadlines: first come, first served (what a
    plain thread pool's queue does), to compare with."""

    def submit(self, deadline, *args):
        return super().submit(None, *args)


def lags_with_one_slow_call(workers_class):
    """Eight streams on two workers; a chunk costs 0.04 s of a worker, so
    together they use 0.8 of the two. Stream 0's first call is slow
    (1.5 s: a recogniser's first seconds, or a burst of decoding), which
    puts it 1.5 s behind. Each stream's lag, sampled every 20 ms, as
    {stream: [(time, lag)]}; and the streams."""
    clock = task.Clock()
    first_call = {}

    def cost(recognizer, kind, nbytes):
        if recognizer.n == 0 and not first_call:
            first_call[0] = True
            return 1.5
        return 0.04 if kind == "accept" else 0.02

    workers = workers_class(clock, 2, cost)
    streams = [Stream(clock, workers, n) for n in range(8)]
    audios = [speech(6.0, seed=n) for n in range(8)]
    lags = {n: [] for n in range(8)}
    for at in range(0, len(audios[0]), PIECE):
        for stream, audio in zip(streams, audios):
            stream.give(audio[at:at + PIECE])
        clock.advance(PIECE / RATE)
        for stream in streams:
            lags[stream.n].append((clock.seconds(), stream.pipeline.lag()))
    for stream in streams:
        stream.pipeline.close()
    for _ in range(1000):
        clock.advance(0.01)
    # Order within every stream, and exactly once: the recogniser was
    # given the stream's audio as it came.
    for stream, audio in zip(streams, audios):
        assert bytes(stream.recognizer.fed) == audio.tobytes()
    return lags


def caught_up_at(lags, within=0.5):
    """When the lag came back within *within* for good."""
    last_over = max((t for t, lag in lags if lag > within), default=0.0)
    return last_over


def test_a_stream_behind_catches_up_before_others_newer_audio():
    # Earliest deadline first, stream 0's queued chunks go before the
    # others' newer ones: it is back within half a second of real time
    # about a second after the slow call, sooner than first come first
    # served gets it there, and every other stream stays within the lag
    # goal (1 s) meanwhile.
    lags = lags_with_one_slow_call(ClockWorkers)
    fifo = lags_with_one_slow_call(FirstComeWorkers)
    assert max(lag for _, lag in lags[0]) > 1.4          # it was behind
    print(f"stream 0 back within 0.5 s at {caught_up_at(lags[0]):.2f} s (deadlines), "
          f"{caught_up_at(fifo[0]):.2f} s (first come, first served)")
    assert caught_up_at(lags[0]) <= 2.8
    assert caught_up_at(lags[0]) < caught_up_at(fifo[0])
    assert max(lag for n in range(1, 8) for _, lag in lags[n]) <= 1.0


def test_the_end_of_an_utterance_goes_before_other_streams_audio():
    # Four streams whose chunks keep both workers busy (each 0.09 s, four
    # streams' 0.2 s chunks: 0.9 of two workers). Stream 0 speaks 1 s and
    # falls silent; the Finish that ends its utterance runs before the
    # others' chunks that were queued before it.
    clock = task.Clock()
    workers = ClockWorkers(clock, 2, lambda r, kind, n: 0.09 if kind == "accept" else 0.05)
    streams = [Stream(clock, workers, n) for n in range(4)]
    audios = [np.concatenate([speech(1.0, seed=0), silence(3.0)])] + [
        speech(4.0, seed=n) for n in range(1, 4)]
    play(clock, streams, audios)
    finishes = [(started, deadline) for started, _, r, kind, deadline in workers.ran
                if r.n == 0 and kind == "finish"]
    assert finishes
    started, deadline = finishes[0]
    # Every other stream's chunk started after the finish had a deadline
    # later than it: none was preferred over it.
    others_after = [d for s, _, r, kind, d in workers.ran if r.n != 0 and s >= started]
    assert others_after and all(d >= deadline for d in others_after)
    # From when it was decided, it waited only for the stream's own last
    # chunk (urgent too: a worker to come free, then its run) and one more
    # worker to come free.
    assert started - deadline <= 3 * 0.09 + 1e-9
    assert len(streams[0].utterances) == 1
    for stream, audio in zip(streams, audios):
        # In order, once; of the silence at the end, what the segmenter
        # still held back when the window closed (its preroll) was not fed.
        fed = bytes(stream.recognizer.fed)
        assert fed == audio.tobytes()[:len(fed)]
        assert len(fed) >= 2 * (len(audio) - RATE // 2)


def test_a_stream_behind_is_named_once_in_a_warning_and_when_it_caught_up():
    clock = task.Clock()
    slow = {"on": True}
    workers = ClockWorkers(clock, 1, lambda r, kind, n: 0.5 if slow["on"] else 0.01)
    stream = Stream(clock, workers, 7, max_lag=1.0)
    seen = []

    def observer(event):
        if "transcribe.pipeline" in event.get("log_namespace", ""):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        audio = speech(4.0)
        for at in range(0, len(audio), PIECE):
            stream.give(audio[at:at + PIECE])
            clock.advance(PIECE / RATE)
            if at > 2 * RATE:
                slow["on"] = False
        for _ in range(300):
            clock.advance(0.01)
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [e for e in seen if e["log_level"] == LogLevel.warn
                and "behind real time" in e["log_format"]]
    caught_up = [e for e in seen if "caught up" in e["log_format"]
                 and e.get("stream_id") == "stream-7"]
    assert len(warnings) == 1 and warnings[0]["stream_id"] == "stream-7"
    assert warnings[0]["lag"] > 1.0
    assert caught_up
    assert not stream.pipeline.late and stream.pipeline.lag() == 0.0
