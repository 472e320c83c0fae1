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
while different streams share the pool.
"""

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
from siprecd.asr.results import from_vosk_json, partial_from_vosk_json
from siprecd.interfaces import IASRBackend, ILanguageStates, IPartialResults, IRecognizer
from siprecd.structure import ConfigError

__all__ = ["VoskBackend", "VoskRecognizer", "ModelNotFound", "ModelUnusable", "MODEL_LIST"]

MODEL_LIST = modelfiles.MODEL_LIST_PAGE
# A progress line at most every this many seconds, and at each tenth.
PROGRESS_EVERY = 15.0


class ModelNotFound(ConfigError):
    """No model where the configuration says (and none could be fetched)."""


class ModelUnusable(ConfigError):
    """Something is there, but Vosk cannot load it as a model."""


def _is_name(value):
    """A bare model name (what Vosk's model list knows), not a path."""
    return "/" not in value and "\\" not in value and not value.startswith((".", "~"))


def _mib(count):
    return f"{count / 2**20:.1f} MiB"


@implementer(IASRBackend, ILanguageStates)
class VoskBackend:
    """Local Vosk recognition on a dedicated thread pool; see the module doc."""

    log = Logger()
    name = "vosk"

    def __init__(self, reactor, models, models_dir, threads=2, download=False,
                 download_url=None, partial_word_times=False):
        self._reactor = reactor
        # Word times in interim results (asr.partial_word_times).
        self.partial_word_times = partial_word_times
        self.models_dir = Path(models_dir)
        self.threads = threads
        self.download = download
        self.download_url = download_url
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
        return cls(reactor, asr.models, config.in_state_dir(asr.models_dir), asr.threads,
                   asr.download, asr.download_url, partial_word_times=asr.partial_word_times)

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
        models, self._models = self._models, {}
        # Freeing a model releases hundreds of MB: do it off the reactor.
        await self._run(models.clear)
        pool, self._pool = self._pool, None
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

    def _dispose(self, thing):
        """Drop the last reference to *thing* on a pool thread."""
        if self._pool is None:
            return
        box = [thing]
        del thing
        self._pool.callInThread(box.clear)

    @property
    def pool(self):
        """The thread pool (None when stopped), for tests and statistics."""
        return self._pool


@implementer(IRecognizer, IPartialResults)
class VoskRecognizer(OneCallAtATime):
    """One stream's ``KaldiRecognizer``, made on the pool by the first call.

    Times are seconds from the first sample given, across utterances:
    Vosk keeps counting samples across its own endpoints and across
    ``FinalResult()``.
    """

    def __init__(self, backend, model, language, sample_rate=8000, partial_word_times=False):
        self._backend = backend
        self.partial_word_times = partial_word_times
        self._model = model
        self.language = language
        self.sample_rate = sample_rate
        self._kaldi = None

    def __repr__(self):
        return f"<VoskRecognizer {self.language} at {id(self):#x}>"

    def accept(self, pcm):
        return self._call(self._backend._run, self._accept, bytes(pcm))

    def accept_partial(self, pcm):
        return self._call(self._backend._run, self._accept, bytes(pcm), True)

    def finish(self):
        return self._call(self._backend._run, self._finish)

    def _release(self):
        kaldi, self._kaldi = self._kaldi, None
        self._model = None
        if kaldi is not None:
            self._backend._dispose(kaldi)

    # On a pool thread -----------------------------------------------------------

    def _recognizer(self):
        if self._kaldi is None:
            kaldi = vosk.KaldiRecognizer(self._model, self.sample_rate)
            kaldi.SetWords(True)
            # Word times in interim results only when asked for: Vosk then
            # aligns the partial lattice, and its first words come a second
            # or more later (bench/live_bench); without, a partial is text
            # placed where it was heard by.
            kaldi.SetPartialWords(self.partial_word_times)
            self._kaldi = kaldi
        return self._kaldi

    def _accept(self, pcm, partial=False):
        kaldi = self._recognizer()
        results = from_vosk_json(kaldi.Result()) if kaldi.AcceptWaveform(pcm) else []
        if partial:
            # In the same pool call: one hop off the reactor per chunk.
            results.append(partial_from_vosk_json(kaldi.PartialResult()))
        return results

    def _finish(self):
        if self._kaldi is None:
            return []
        return from_vosk_json(self._kaldi.FinalResult())
