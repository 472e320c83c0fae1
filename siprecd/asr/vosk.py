"""The local Vosk backend (``asr.backend: vosk``).

One Vosk model per language (``asr.models``: language -> a folder name in
``asr.models_dir``, or a path; relative paths are taken in models_dir),
loaded once when the backend starts and shared by every stream; one
``KaldiRecognizer`` per stream, with word times.

All Vosk work (loading, recognising, freeing) runs on a dedicated thread
pool of ``asr.threads`` threads, never on the reactor thread: Vosk
releases the GIL while it computes, so the threads really run in
parallel, and a slow recogniser never delays SIP or RTP. A recogniser
takes one call at a time (a second one raises ``RecognizerBusy``, see
``siprecd.asr.common``), so each stream's audio is recognised in order
while different streams share the pool.

A model that is missing is a ConfigError naming the path looked at and
the two ways to fix it. With ``asr.download: true`` a model given by name
is fetched into models_dir by Vosk's own downloader (``vosk.Model``
with ``model_name``), which needs Internet access.
"""

from pathlib import Path
from urllib.error import HTTPError

import vosk
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from siprecd.asr.common import (
    AsrNotReady, OneCallAtATime, Waiters, languages_of, normalise_language,
)
from siprecd.asr.results import from_vosk_json
from siprecd.interfaces import IASRBackend, IRecognizer
from siprecd.structure import ConfigError

__all__ = ["VoskBackend", "VoskRecognizer", "ModelNotFound", "ModelUnusable", "MODEL_LIST"]

MODEL_LIST = "https://alphacephei.com/vosk/models"


class ModelNotFound(ConfigError):
    """No model where the configuration says (and none could be fetched)."""


class ModelUnusable(ConfigError):
    """Something is there, but Vosk cannot load it as a model."""


def _is_name(value):
    """A bare model name (what Vosk's downloader knows), not a path."""
    return "/" not in value and "\\" not in value and not value.startswith((".", "~"))


class _FetchingModel(vosk.Model):
    """``vosk.Model(model_name=...)`` that looks for the model in, and
    downloads it into, one folder (models_dir) instead of Vosk's list of
    default folders, so the model ends up where the configuration says."""

    def __init__(self, folder, name):
        self._folder = Path(folder)
        super().__init__(model_name=name)

    def get_model_by_name(self, model_name):
        target = self._folder / model_name
        if not target.is_dir():
            self.download_model(target)
        return target

    def __del__(self):
        # A failed download leaves no model handle to free.
        if getattr(self, "_handle", None) is not None:
            super().__del__()


@implementer(IASRBackend)
class VoskBackend:
    """Local Vosk recognition on a dedicated thread pool; see the module doc."""

    log = Logger()
    name = "vosk"

    def __init__(self, reactor, models, models_dir, threads=2, download=False):
        self._reactor = reactor
        self.models_dir = Path(models_dir)
        self.threads = threads
        self.download = download
        # tag -> (key as written in asr.models, folder name or path)
        self._wanted = languages_of(models)
        self._models = {}
        self._pool = None
        self._shutdown_trigger = None
        self._in_flight = Waiters()
        self._stopping = False
        self.ready = False

    @classmethod
    def from_config(cls, config, reactor):
        asr = config.asr
        return cls(reactor, asr.models, asr.models_dir, asr.threads, asr.download)

    # Where models are -------------------------------------------------------

    def model_path(self, language):
        """The folder the model for *language* is looked for in."""
        _, value = self._wanted[normalise_language(language)]
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.models_dir / path

    def describe(self):
        """What start() is doing, for the readiness report."""
        wanted = ", ".join(f"{tag} from {self.model_path(tag)}" for tag in sorted(self._wanted))
        return f"loading Vosk models: {wanted}" if wanted else "no Vosk models configured"

    # IASRBackend -------------------------------------------------------------

    def languages(self):
        return sorted(self._wanted)

    def start(self):
        if not self._wanted:
            return defer.fail(ConfigError(
                "no language configured; map a language to a model, e.g. "
                "en-us: vosk-model-small-en-us-0.15", "asr.models"))
        self._stopping = False
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
        return defer.ensureDeferred(self._load_all())

    async def _load_all(self):
        tags = sorted(self._wanted)
        try:
            loaded = await defer.gatherResults(
                [self._run(self._load, tag) for tag in tags], consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        if self._stopping:
            return
        for tag, (model, fetched) in zip(tags, loaded):
            self._models[tag] = model
            if fetched:
                self.log.info("asr: downloaded the {language} model into {path}",
                              language=tag, path=str(self.model_path(tag)))
            self.log.info("asr: Vosk model for {language} loaded from {path}",
                          language=tag, path=str(self.model_path(tag)))
        self.ready = True

    def _load(self, tag):
        """On a pool thread: (vosk.Model, whether it was downloaded)."""
        written, value = self._wanted[tag]
        key = f"asr.models.{written}"
        path = self.model_path(tag)
        if not path.is_dir():
            if self.download and _is_name(value):
                return self._fetch(value, key), True
            raise ModelNotFound(self._missing(path, value), key)
        try:
            return vosk.Model(str(path)), False
        except Exception:
            raise ModelUnusable(
                f"Vosk cannot load {path} as a model; is it completely unpacked "
                f"(am/, conf/ and graph/ directly inside)? Models: {MODEL_LIST}", key
            ) from None

    def _missing(self, path, value):
        if _is_name(value):
            return (
                f"no Vosk model at {path}; either unpack {value} from {MODEL_LIST} "
                f"there, or set asr.download: true on a machine with Internet access "
                f"so Vosk fetches it into {self.models_dir}"
            )
        return (
            f"no Vosk model at {path}; either unpack the model there, or give a "
            f"model name (e.g. vosk-model-small-en-us-0.15) with asr.download: true "
            f"on a machine with Internet access so Vosk fetches it into {self.models_dir}"
        )

    def _fetch(self, name, key):
        try:
            return _FetchingModel(self.models_dir, name)
        except HTTPError as e:
            if e.code == 404:
                raise ModelNotFound(
                    f"Vosk has no model named {name!r} to download; see {MODEL_LIST}", key
                ) from None
            reason = f"HTTP {e.code} {e.reason}"
        except Exception as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise ModelNotFound(
            f"could not download {name} into {self.models_dir} ({reason}); check this "
            f"machine's Internet access and that the folder is writable, or unpack the "
            f"model from {MODEL_LIST} there by hand", key
        ) from None

    def new_recognizer(self, language, sample_rate=8000):
        if not self.ready:
            raise AsrNotReady("the vosk backend has not finished loading its models")
        tag = normalise_language(language)
        model = self._models.get(tag)
        if model is None:
            configured = ", ".join(sorted(self._models)) or "none"
            raise ValueError(f"no Vosk model for language {language!r} (configured: {configured})")
        return VoskRecognizer(self, model, tag, sample_rate)

    def stop(self):
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        self.ready = False
        self._stopping = True
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


@implementer(IRecognizer)
class VoskRecognizer(OneCallAtATime):
    """One stream's ``KaldiRecognizer``, made on the pool by the first call.

    Times are seconds from the first sample given, across utterances:
    Vosk keeps counting samples across its own endpoints and across
    ``FinalResult()``.
    """

    def __init__(self, backend, model, language, sample_rate=8000):
        self._backend = backend
        self._model = model
        self.language = language
        self.sample_rate = sample_rate
        self._kaldi = None

    def __repr__(self):
        return f"<VoskRecognizer {self.language} at {id(self):#x}>"

    def accept(self, pcm):
        return self._call(self._backend._run, self._accept, bytes(pcm))

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
            self._kaldi = kaldi
        return self._kaldi

    def _accept(self, pcm):
        kaldi = self._recognizer()
        if kaldi.AcceptWaveform(pcm):
            return from_vosk_json(kaldi.Result())
        return []

    def _finish(self):
        if self._kaldi is None:
            return []
        return from_vosk_json(self._kaldi.FinalResult())
