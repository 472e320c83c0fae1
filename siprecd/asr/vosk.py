"""The local Vosk backend (``asr.backend: vosk``).

One Vosk model per language (``asr.models``: language -> a folder name in
``asr.models_dir``, or a path; relative paths are taken in models_dir),
loaded once when the backend starts and shared by every stream; one
``KaldiRecognizer`` per stream, with word times.

Languages come up one by one (``ILanguageStates``): the backend is ready,
and ``start()`` fires, as soon as one language's model is loaded; the
others go on loading, or fetching, in the background. A language whose
model is missing or unusable is refused (``LanguageUnavailable``, with the
reason) while the others work. ``start()`` fails only when no language
can be served, with one line saying what to do.

A model given by name that is not in models_dir is fetched there first
when ``asr.download`` is on (``siprecd.asr.models``: Vosk's model list
and zip files, from Vosk's own address or ``asr.download_url``), on a
thread of its own with progress in the log; the other languages and the
rest of the node do not wait for it.

All Vosk work (loading, recognising, freeing) runs on a dedicated thread
pool of ``asr.threads`` threads, never on the reactor thread: Vosk
releases the GIL while it computes, so the threads really run in
parallel, and a slow recogniser never delays SIP or RTP. A recogniser
takes one call at a time (a second one raises ``RecognizerBusy``, see
``siprecd.asr.common``), so each stream's audio is recognised in order
while different streams share the pool. Which stream's call a free
thread takes next is decided by deadline (``siprecd.asr.scheduling``):
the oldest audio first, and the finish of an utterance before audio that
can still wait.

Warm recognisers are kept for the next stream. With a model whose graph
is composed as it is used (``graph/HCLr.fst`` with ``Gr.fst``, as small
Vosk models are), a new ``KaldiRecognizer`` builds its part of the graph
during its first seconds of speech and costs two to four times what it
costs afterwards (Korean model: 0.62 processor seconds per audio second
during the first five seconds of speech, 0.15 later); a stream that takes
over a recogniser of a finished one skips that. Up to
``asr.spare_recognizers`` per language are kept, each reset by
``FinalResult()`` before it is handed on (nothing of the last stream's
audio remains; its cached graph is not audio) and retired after
``RETIRE_AFTER`` seconds of audio, as its cache grows slowly with use.
Words and times do not depend on which recogniser a stream got;
confidences may differ in the second decimal, as the graph's states are
numbered in the order they were first needed.

With ``asr.warm_spares`` (on by default) the spares are not left to the
first streams: once a model is loaded (after the probe), new recognisers
are made and given ``WARM_SECONDS`` of speech-like sound
(``siprecd.asr.probe``) one after the other until there are
``asr.spare_recognizers``, and each spare a stream takes is replaced the
same way (at the sample rate it was taken at). A recogniser warmed so
costs 0.26 during the first five seconds of speech instead of 0.62, and
the first utterance of a call is not late. Warming is background work
for the pool (``ScheduledPool.background``: it takes a thread only when
no stream's call waits and another thread stays free) and is not counted
in the recognition cost.

Every call's processor time (of the thread that ran it) is added to
``costs`` (``siprecd.asr.cost.CostMeter``): what a second of audio costs
per language, which admission turns into how many streams are kept in
real time. It is seeded by ``asr.capacity.cost`` when given, else by a
probe when a model has loaded: a new recogniser is warmed as a spare is
(ten seconds of speech-like sound, ``siprecd.asr.probe``), then given ten
seconds of other speech-like sound, whose processor time is the seed (on
the Korean test model 0.23, where speech it has not heard costs 0.26 on
a warm spare during a stream's first five seconds and 0.15-0.19 later;
on a new recogniser the probe would say 0.5); it then becomes a spare.
New and warm recognisers are measured alike: the figure is what the
node's streams cost as they come, some on new recognisers, most on spares.
"""

import functools
import threading
from pathlib import Path

import vosk
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from siprecd.asr import models as modelfiles
from siprecd.asr.common import (
    AsrNotReady, LanguageUnavailable, OneCallAtATime, Waiters, languages_of, normalise_language,
)
from siprecd.asr.cost import CostMeter, thread_seconds
from siprecd.asr.probe import speechlike
from siprecd.asr.results import from_vosk_json, partial_from_vosk_json
from siprecd.asr.scheduling import ScheduledPool
from siprecd.interfaces import (
    IASRBackend, IDeadlineRecognizer, ILanguageStates, IPartialResults, IRecognitionCosts,
)
from siprecd.structure import ConfigError

__all__ = ["VoskBackend", "VoskRecognizer", "ModelNotFound", "ModelUnusable", "MODEL_LIST"]

MODEL_LIST = modelfiles.MODEL_LIST_PAGE
# A progress line at most every this many seconds, and at each tenth.
PROGRESS_EVERY = 15.0
# A recogniser given this much audio is freed rather than kept as a spare.
RETIRE_AFTER = 3600.0
# The probe: seconds of speech-like sound given to a warmed recogniser.
PROBE_SECONDS = 10.0
# Speech-like sound given to each spare made ahead of the streams
# (asr.warm_spares), in calls of WARM_STEP seconds: short, as a stream's
# call may have to wait for the one under way (15-30 ms of processor).
WARM_SECONDS = 10.0
WARM_STEP = 0.1
# Spares are made at this rate at start; later, at the rates streams take.
WARM_RATE = 8000


class ModelNotFound(ConfigError):
    """No model where the configuration says (and none could be fetched)."""


class ModelUnusable(ConfigError):
    """Something is there, but Vosk cannot load it as a model."""


def _is_name(value):
    """A bare model name (what Vosk's model list knows), not a path."""
    return "/" not in value and "\\" not in value and not value.startswith((".", "~"))


def _mib(count):
    return f"{count / 2**20:.1f} MiB"


@implementer(IASRBackend, ILanguageStates, IRecognitionCosts)
class VoskBackend:
    """Local Vosk recognition on a dedicated thread pool; see the module doc."""

    log = Logger()
    name = "vosk"

    def __init__(self, reactor, models, models_dir, threads=2, download=False,
                 download_url=None, spare_recognizers=4, cost=None, probe=False,
                 partial_word_times=False, warm_spares=False):
        self._reactor = reactor
        # Word times in interim results (asr.partial_word_times).
        self.partial_word_times = partial_word_times
        self.models_dir = Path(models_dir)
        self.threads = threads
        self.download = download
        self.download_url = download_url
        self.spare_recognizers = spare_recognizers
        # Make and warm spares ahead of the streams (asr.warm_spares).
        self.warm_spares = warm_spares
        self._warming = set()        # (tag, rate) with a spare being warmed
        self._warm_logged = set()    # (tag, rate) whose spares were all warm once
        self.warmed = 0              # spares made ahead so far
        # What a second of audio costs, per language; *cost* seeds every one.
        self.costs = CostMeter(default=cost)
        self.probe = probe and cost is None
        self._spares = {}            # (tag, sample rate) -> [_Kaldi], warm and idle
        self._spares_lock = threading.Lock()
        self._scheduled = None
        # tag -> (key as written in asr.models, folder name or path)
        self._wanted = languages_of(models)
        self._models = {}
        self._states = {tag: ("waiting", str(self.model_path(tag))) for tag in self._wanted}
        self._failures = {}          # tag -> ConfigError, until logged or reported
        self._pool = None
        self._shutdown_trigger = None
        self._in_flight = Waiters()
        self._stopping = False
        self._cancel = threading.Event()
        self._first = None           # start()'s Deferred
        self._progress_shown = {}    # tag -> (tenth, time) of the last progress line
        self.ready = False

    @classmethod
    def from_config(cls, config, reactor):
        asr = config.asr
        capacity = asr.capacity
        return cls(reactor, asr.models, config.in_state_dir(asr.models_dir), asr.threads,
                   asr.download, asr.download_url, spare_recognizers=asr.spare_recognizers,
                   cost=capacity.cost, probe=capacity.enabled and capacity.probe,
                   partial_word_times=asr.partial_word_times, warm_spares=asr.warm_spares)

    # Where models are -------------------------------------------------------

    def model_path(self, language):
        """The folder the model for *language* is looked for in."""
        _, value = self._wanted[normalise_language(language)]
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.models_dir / path

    def describe(self):
        """What start() is doing, for the readiness report."""
        if not self._wanted:
            return "no Vosk models configured"
        parts = []
        for tag in sorted(self._wanted):
            state, detail = self._states[tag]
            if state in ("waiting", "loading"):
                parts.append(f"{tag} from {self.model_path(tag)}")
            elif state == "fetching":
                parts.append(f"{tag}: {detail}")
        if not parts:
            return "Vosk models: " + ", ".join(f"{t} {self._states[t][0]}"
                                              for t in sorted(self._wanted))
        return "loading Vosk models: " + ", ".join(parts)

    def cost(self, language):
        """Processor seconds per second of audio in *language* (IRecognitionCosts)."""
        return self.costs.cost(normalise_language(language))

    def language_states(self):
        return {tag: {"state": state, "detail": detail}
                for tag, (state, detail) in sorted(self._states.items())}

    # IASRBackend -------------------------------------------------------------

    def languages(self):
        return sorted(self._wanted)

    def start(self):
        if not self._wanted:
            return defer.fail(ConfigError(
                "no language configured; map a language to a model, e.g. "
                "en-us: vosk-model-small-en-us-0.15", "asr.models"))
        self._stopping = False
        self._cancel.clear()
        if self._pool is None:
            # Kaldi's LOG lines go to stderr, bypassing our logging; keep
            # its warnings and errors.
            vosk.SetLogLevel(-1)
            self._pool = ThreadPool(minthreads=0, maxthreads=self.threads, name="siprecd-asr")
            self._pool.start()
            self._scheduled = ScheduledPool(self._reactor, self._pool)
            # Pool threads are not daemons: stop them with the reactor even
            # when stop() is never called.
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._pool.stop)
        self._first = defer.Deferred()
        for tag in sorted(self._wanted):
            defer.ensureDeferred(self._bring_up(tag))
        return self._first

    async def _bring_up(self, tag):
        """Fetch (when it must and may) and load one language's model."""
        written, value = self._wanted[tag]
        key = f"asr.models.{written}"
        path = self.model_path(tag)
        try:
            if not path.is_dir():
                if not (self.download and _is_name(value)):
                    raise ModelNotFound(self._missing(path, value), key)
                await self._fetch(tag, value, key)
                if self._stopping:
                    return
                self.log.info("asr: fetched the {language} model into {path}",
                              language=tag, path=str(path))
            self._states[tag] = ("loading", str(path))
            model = await self._run(self._open, path, key)
        except ConfigError as e:
            self._unavailable(tag, e)
        except Exception as e:  # a bug, not a missing model: say so, keep the rest going
            self.log.failure("asr: loading the {language} model failed", language=tag)
            self._unavailable(tag, ConfigError(f"loading failed: {e}", key))
        else:
            if self._stopping:
                return
            self._models[tag] = model
            self._states[tag] = ("ready", str(path))
            self.log.info("asr: Vosk model for {language} loaded from {path}",
                          language=tag, path=str(path))
            self.ready = True
            self._settle()
            if self.probe and not self.costs.seeded(tag):
                await self._measure(tag, model)
            self._refill(tag, WARM_RATE)
            return
        self._settle()

    async def _measure(self, tag, model):
        """Seed what *tag* costs with the probe (the node is ready meanwhile).

        The probe is background work for the pool, one chunk per call:
        a stream's call always goes first, so a call that arrives while
        the probe runs waits for one probe chunk at most, and only when
        every other thread is busy."""
        rate = WARM_RATE
        try:
            # Measured as streams run: on a recogniser warmed as a spare is
            # (a new one costs twice as much, and streams seldom get one),
            # with sound it has not heard.
            kaldi = await self._probe_step(_Kaldi, model, rate)
            await self._feed_in_background(kaldi, await self._probe_step(_warm_audio, rate))
            audio = speechlike(PROBE_SECONDS, rate, seed=1).astype("<i2").tobytes()
            spent = await self._feed_in_background(kaldi, audio, timed=True)
        except _ProbeStopped:
            return
        except Exception:
            if not self._stopping:
                self.log.failure("asr: the cost probe of {language} failed", language=tag)
            return
        if self._stopping:
            return
        self._keep(tag, kaldi)
        cost = spent / PROBE_SECONDS
        self.costs.seed(tag, cost)
        self.log.info(
            "asr: {language} costs about {cost:.3f} processor seconds per second of audio "
            "(probe: {seconds:g} s of speech-like sound on a warmed recogniser); learnt from "
            "every call from now on", language=tag, cost=cost, seconds=PROBE_SECONDS)

    async def _feed_in_background(self, kaldi, audio, timed=False):
        """Give *audio* (PCM) to *kaldi* in WARM_STEP calls of background
        work, then finish it; with *timed*, the processor seconds spent."""
        step = 2 * int(kaldi.rate * WARM_STEP)
        spent = 0.0
        for i in range(0, len(audio), step):
            if timed:
                spent += await self._probe_step(_timed, kaldi.accept, audio[i:i + step])
            else:
                await self._probe_step(kaldi.accept, audio[i:i + step])
        if timed:
            spent += await self._probe_step(_timed, kaldi.final)
        else:
            await self._probe_step(kaldi.final)
        return spent

    def _refill(self, tag, rate):
        """Warm one more spare of *tag* at *rate* when there are fewer than
        ``spare_recognizers`` (asr.warm_spares); one at a time per
        language and rate, until there are enough."""
        if (not self.warm_spares or self._stopping or (tag, rate) in self._warming
                or tag not in self._models):
            return
        with self._spares_lock:
            have = len(self._spares.get((tag, rate), ()))
        if have >= self.spare_recognizers:
            return
        self._warming.add((tag, rate))
        d = defer.ensureDeferred(self._warm(tag, rate))
        d.addErrback(lambda f: None if self._stopping else self.log.failure(
            "asr: warming a spare {language} recogniser failed", f, language=tag))

    async def _warm(self, tag, rate):
        """Make a recogniser, give it WARM_SECONDS of speech-like sound in
        calls behind every stream's, keep it as a spare, and go on."""
        try:
            kaldi = await self._probe_step(_Kaldi, self._models[tag], rate)
            await self._feed_in_background(kaldi, await self._probe_step(_warm_audio, rate))
        except _ProbeStopped:
            return
        finally:
            self._warming.discard((tag, rate))
        if self._stopping:
            return
        self.warmed += 1
        self._keep(tag, kaldi)
        with self._spares_lock:
            have = len(self._spares.get((tag, rate), ()))
        if have >= self.spare_recognizers and (tag, rate) not in self._warm_logged:
            self._warm_logged.add((tag, rate))
            self.log.info("asr: {count} warm {language} recognisers at {rate} Hz ready for new "
                          "streams (asr.warm_spares)", count=have, language=tag, rate=rate)
        self._refill(tag, rate)

    def _probe_step(self, function, *args):
        """One call of the probe or of warming a spare: background work,
        run when the streams leave a thread free."""
        if self._stopping or self._scheduled is None:
            return defer.fail(_ProbeStopped())
        return self._in_flight.track(self._scheduled.background(function, *args))

    def _open(self, path, key):
        """On a pool thread: the vosk.Model in *path*."""
        try:
            return vosk.Model(str(path))
        except Exception:
            missing = modelfiles.missing_files(path)
            lacks = f" (it has no {', '.join(missing)})" if missing else ""
            raise ModelUnusable(
                f"Vosk cannot load {path} as a model{lacks}; is it completely unpacked "
                f"(am/, conf/ and graph/ directly inside)? Models: {MODEL_LIST}", key
            ) from None

    async def _fetch(self, tag, name, key):
        base = self.download_url or modelfiles.default_base_url()
        self._states[tag] = ("fetching", f"fetching {name} from {base}")
        self.log.info(
            "asr: fetching the Vosk model {name} for {language} from {url} into {folder} "
            "(asr.download)", name=name, language=tag, url=base, folder=str(self.models_dir))
        started = self._reactor.seconds()

        def progress(received, total):
            self._reactor.callFromThread(self._progress, tag, name, received, total, started)

        try:
            await self._in_daemon_thread(
                modelfiles.fetch_model, name, self.models_dir, base_url=self.download_url,
                progress=progress, cancelled=self._cancel.is_set)
        except modelfiles.FetchError as e:
            raise ModelNotFound(
                f"no Vosk model at {self.model_path(tag)} and fetching it failed: {e}; place "
                f"the unpacked model folder there (from "
                f"{modelfiles.model_zip_url(name, self.download_url)}), then restart siprecd",
                key) from None

    def _progress(self, tag, name, received, total, started):
        if self._states.get(tag, ("",))[0] != "fetching":
            return
        if total:
            tenth = min(10, received * 10 // total)
            done = f"{_mib(received)} of {_mib(total)} ({received * 100 // total}%)"
        else:
            tenth, done = None, _mib(received)
        self._states[tag] = ("fetching", f"fetching {name}: {done}")
        now = self._reactor.seconds()
        last_tenth, last_time = self._progress_shown.get(tag, (-1, started))
        if (tenth is not None and tenth > last_tenth) or now - last_time >= PROGRESS_EVERY:
            self._progress_shown[tag] = (tenth if tenth is not None else last_tenth, now)
            self.log.info("asr: fetching {name}: {done}", name=name, done=done)

    def _unavailable(self, tag, error):
        if self._stopping:
            return
        self._states[tag] = ("unavailable", str(error))
        if self._first is not None and self._first.called:
            # Another language serves; this one is refused until fixed.
            self._log_unavailable(tag, error)
        else:
            self._failures[tag] = error

    def _log_unavailable(self, tag, error):
        self.log.error("asr: {error} -- calls in {language} are refused (500-201) until that "
                       "is fixed and siprecd restarted", error=str(error), language=tag)

    def _settle(self):
        """Fire start() once one language is ready, or fail it once none can be."""
        if self._first is None or self._first.called or self._stopping:
            return
        if self._models:
            self._first.callback(None)
            failures, self._failures = self._failures, {}
            for tag, error in sorted(failures.items()):
                self._log_unavailable(tag, error)
            return
        if all(state == "unavailable" for state, _ in self._states.values()):
            failures = [self._failures[t] for t in sorted(self._failures)]
            if len(failures) == 1:
                error = failures[0]
            else:
                error = ConfigError("no language can be transcribed: "
                                    + "; ".join(str(e) for e in failures))
            self._first.errback(error)

    def can_fetch(self, language):
        """Whether the model of *language* is given by a name Vosk's model
        list may have (a path cannot be fetched)."""
        return _is_name(self._wanted[normalise_language(language)][1])

    def missing_message(self, language):
        """What to do about the missing model of *language*: one line,
        without the key path."""
        _, value = self._wanted[normalise_language(language)]
        return self._missing(self.model_path(language), value)

    def _missing(self, path, value):
        if _is_name(value):
            return (
                f"no Vosk model at {path}; place the unpacked model folder there (from "
                f"{modelfiles.model_zip_url(value, self.download_url)}), or set "
                f"asr.download: true so siprecd fetches it into {self.models_dir} at start"
            )
        return (
            f"no Vosk model at {path}; place an unpacked Vosk model folder there "
            f"(models: {MODEL_LIST}), or name a model (e.g. vosk-model-small-en-us-0.15) "
            f"with asr.download: true so siprecd fetches it into {self.models_dir}"
        )

    def new_recognizer(self, language, sample_rate=8000):
        tag = normalise_language(language)
        if tag not in self._wanted:
            configured = ", ".join(sorted(self._wanted)) or "none"
            raise ValueError(f"no Vosk model for language {language!r} (configured: {configured})")
        model = self._models.get(tag)
        if model is None:
            state, detail = self._states[tag]
            if state == "unavailable":
                raise LanguageUnavailable(f"speech recognition for {tag} is unavailable: {detail}")
            if not self.ready:
                raise AsrNotReady("the vosk backend has not finished loading its models")
            raise LanguageUnavailable(f"the {tag} model is not loaded yet ({state}: {detail})")
        return VoskRecognizer(self, model, tag, sample_rate,
                              partial_word_times=self.partial_word_times)

    def stop(self):
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        self.ready = False
        self._stopping = True
        self._cancel.set()
        if self._first is not None and not self._first.called:
            self._first.callback(None)  # stopped while starting: not an error
        if self._pool is None:
            return
        await self._in_flight.idle()
        with self._spares_lock:
            spares, self._spares = self._spares, {}
        # Recognisers before the models they were made from.
        await self._run(spares.clear)
        models, self._models = self._models, {}
        # Freeing a model releases hundreds of MB: do it off the reactor.
        await self._run(models.clear)
        pool, self._pool = self._pool, None
        self._scheduled = None
        self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
        self._shutdown_trigger = None
        # Every thread is idle now, so joining them does not wait on Vosk.
        pool.stop()

    # The pool ------------------------------------------------------------------

    def _run(self, function, *args):
        """*function(*args)* on a pool thread; a Deferred with its result."""
        if self._pool is None:
            return defer.fail(AsrNotReady("the vosk backend is not started"))
        return self._in_flight.track(
            threads.deferToThreadPool(self._reactor, self._pool, function, *args))

    def _submit(self, deadline, function, *args):
        """A recogniser call: *function(*args)* on a pool thread when it is
        the call due first (*deadline* on the reactor's clock; None: now)."""
        if self._scheduled is None:
            return defer.fail(AsrNotReady("the vosk backend is not started"))
        if deadline is None:
            deadline = self._reactor.seconds()
        return self._in_flight.track(self._scheduled.submit(deadline, function, *args))

    # Warm recognisers ---------------------------------------------------------------

    def _take_spare(self, tag, rate):
        """On a pool thread: a warm recogniser for *tag* at *rate*, or None."""
        with self._spares_lock:
            spares = self._spares.get((tag, rate))
            kaldi = spares.pop() if spares else None
        if self.warm_spares:
            self._reactor.callFromThread(self._refill, tag, rate)
        return kaldi

    def _keep(self, tag, kaldi):
        """On a pool thread: *kaldi* (reset) as a spare, or freed when there
        are enough spares or it is old."""
        with self._spares_lock:
            spares = self._spares.setdefault((tag, kaldi.rate), [])
            if (not self._stopping and len(spares) < self.spare_recognizers
                    and kaldi.seconds < RETIRE_AFTER):
                spares.append(kaldi)

    def _recycle(self, tag, kaldi):
        """Hand *kaldi* (a stream's, now idle) on to the next stream, on a
        pool thread: its open utterance finished (the result dropped),
        then kept as a spare or freed."""
        if self._pool is None:
            return

        def reset():
            try:
                if kaldi.open:
                    kaldi.final()
            except Exception:
                return  # a recogniser Vosk failed on is not handed on
            self._keep(tag, kaldi)

        self._pool.callInThread(reset)

    def spares(self, language):
        """Warm recognisers kept for *language* (all sample rates)."""
        tag = normalise_language(language)
        with self._spares_lock:
            return sum(len(v) for (t, _), v in self._spares.items() if t == tag)

    def _in_daemon_thread(self, function, *args, **kwargs):
        """*function* on a thread of its own that does not hold up the
        process's exit: a fetch blocked on a slow network must not delay a
        stop (it is told to give up, and what it leaves is cleared by the
        next fetch). A Deferred with its result."""
        d = defer.Deferred()

        def run():
            try:
                result = function(*args, **kwargs)
            except BaseException as e:  # handed to the reactor thread whatever it is
                self._reactor.callFromThread(d.errback, e)
            else:
                self._reactor.callFromThread(d.callback, result)

        threading.Thread(target=run, name="siprecd-model-fetch", daemon=True).start()
        return d

    @property
    def pool(self):
        """The thread pool (None when stopped), for tests and statistics."""
        return self._pool


class _ProbeStopped(Exception):
    """The backend is stopping: the probe ends where it is."""


@functools.lru_cache(maxsize=4)
def _warm_audio(rate):
    """What a spare is warmed with at *rate*, as PCM (made once)."""
    return speechlike(WARM_SECONDS, rate, seed=2).astype("<i2").tobytes()


def _timed(step, *args):
    """On a pool thread: the processor seconds *step(*args)* took."""
    started = thread_seconds()
    step(*args)
    return thread_seconds() - started


class _Kaldi:
    """A ``KaldiRecognizer`` (with word times) and what it has been given:
    ``seconds`` of audio in all, and whether an utterance is ``open``
    (audio given since the last ``FinalResult()``). Used on pool threads,
    by one stream at a time."""

    def __init__(self, model, rate):
        self.rate = rate
        self.kaldi = vosk.KaldiRecognizer(model, rate)
        self.kaldi.SetWords(True)
        self.samples = 0
        self.open = False

    @property
    def seconds(self):
        return self.samples / self.rate

    def accept(self, pcm):
        """Feed *pcm*; the result document when Vosk's endpointer ended an
        utterance, else None."""
        self.samples += len(pcm) // 2
        self.open = True
        if self.kaldi.AcceptWaveform(pcm):
            return self.kaldi.Result()
        return None

    def final(self):
        self.open = False
        return self.kaldi.FinalResult()


@implementer(IDeadlineRecognizer, IPartialResults)
class VoskRecognizer(OneCallAtATime):
    """One stream's ``KaldiRecognizer``: a warm spare, or one made on the
    pool by the first call.

    Times are seconds from the first sample given, across utterances:
    Vosk keeps counting samples across its own endpoints and across
    ``FinalResult()``; a spare's count so far is taken off.
    """

    def __init__(self, backend, model, language, sample_rate=8000, partial_word_times=False):
        self._backend = backend
        self.partial_word_times = partial_word_times
        self._model = model
        self.language = language
        self.sample_rate = sample_rate
        self._kaldi = None
        self._offset = 0.0         # seconds the recogniser was given before this stream
        self._failed = False

    def __repr__(self):
        return f"<VoskRecognizer {self.language} at {id(self):#x}>"

    def accept(self, pcm, deadline=None):
        return self._call(self._backend._submit, deadline, self._accept, bytes(pcm))

    def accept_partial(self, pcm, deadline=None):
        return self._call(self._backend._submit, deadline, self._accept, bytes(pcm), True)

    def finish(self, deadline=None):
        return self._call(self._backend._submit, deadline, self._finish)

    def _release(self):
        kaldi, self._kaldi = self._kaldi, None
        self._model = None
        if kaldi is not None and not self._failed:
            self._backend._recycle(self.language, kaldi)

    # On a pool thread -----------------------------------------------------------

    def _recognizer(self):
        if self._kaldi is None:
            kaldi = self._backend._take_spare(self.language, self.sample_rate)
            if kaldi is None:
                kaldi = _Kaldi(self._model, self.sample_rate)
            self._offset = kaldi.seconds
            # Word times in interim results only when asked for: Vosk then
            # aligns the partial lattice, and its first words come a second
            # or more later (bench/live_bench); without, a partial is text
            # placed where it was heard by. (A spare may have been made
            # for the probe: set either way.)
            kaldi.kaldi.SetPartialWords(self._backend.partial_word_times)
            self._kaldi = kaldi
        return self._kaldi

    def _accept(self, pcm, partial=False):
        kaldi = self._recognizer()
        results = self._measured(len(pcm) / 2 / self.sample_rate, kaldi.accept, pcm)
        if partial:
            # In the same pool call: one hop off the reactor per chunk.
            started = thread_seconds()
            document = kaldi.kaldi.PartialResult()
            self._backend.costs.add(self.language, 0.0, thread_seconds() - started)
            results.append(partial_from_vosk_json(document, -self._offset))
        return results

    def _finish(self):
        if self._kaldi is None or not self._kaldi.open:
            return []
        return self._measured(0.0, self._kaldi.final)

    def _measured(self, audio_seconds, step, *args):
        """*step(*args)* with its processor time counted; its results."""
        started = thread_seconds()
        try:
            document = step(*args)
        except Exception:
            self._failed = True
            raise
        finally:
            self._backend.costs.add(self.language, audio_seconds,
                                    thread_seconds() - started)
        if document is None:
            return []
        return from_vosk_json(document, -self._offset)
