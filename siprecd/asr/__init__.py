"""Speech recognition behind ``siprecd.interfaces.IASRBackend``.

Two backends ship with siprecd: ``vosk`` (local Vosk models on a thread
pool, the default) and ``remote`` (vosk-server instances over WebSocket).
Backends are found by name through the ``siprecd.asr`` entry point group
(``siprecd.asr.backends``); ``AsrService`` runs one as a stage of the
daemon. Outside the daemon::

    backend = create_backend(config, reactor)
    await backend.start()
    recognizer = backend.new_recognizer("en-us")
    results = await recognizer.accept(pcm_bytes)   # [AsrResult, ...]
    results += await recognizer.finish()
    recognizer.close()
    await backend.stop()
"""

from siprecd.asr.backends import available, create_backend
from siprecd.asr.common import AsrNotReady, RecognizerBusy, RecognizerClosed, normalise_language
from siprecd.asr.results import AsrResult, Word
from siprecd.asr.service import AsrService

__all__ = [
    "available", "create_backend", "AsrService", "AsrResult", "Word",
    "AsrNotReady", "RecognizerBusy", "RecognizerClosed", "normalise_language",
]
