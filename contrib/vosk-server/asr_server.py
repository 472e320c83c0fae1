#!/usr/bin/env python3
"""A speech recognition server speaking the vosk-server WebSocket protocol.

One Vosk model, loaded once; one recogniser per WebSocket connection; the
recognition runs on a thread pool so many connections are served at once.
The protocol, per connection:

- a text message ``{"config": {...}}`` sets, before the first audio,
  ``sample_rate`` (default 8000 or $VOSK_SAMPLE_RATE), ``words`` (word
  times and confidences in final results), ``max_alternatives`` and
  ``phrase_list`` (a list of phrases to restrict recognition to);
- each binary message is 16-bit little-endian mono PCM, answered with one
  JSON text message: ``{"partial": "..."}``, or ``{"text": "...",
  "result": [{"word", "start", "end", "conf"}, ...]}`` when Vosk ends an
  utterance there;
- the text message ``{"eof" : 1}`` is answered with the final result of
  what was sent, after which the server closes the connection.

Settings come from the command line or, as with the vosk-server project,
from the environment: VOSK_MODEL_PATH (or the first argument),
VOSK_SERVER_INTERFACE, VOSK_SERVER_PORT, VOSK_SAMPLE_RATE. ``--port 0``
picks a free port. Once listening, one line goes to standard output:
``listening on ws://HOST:PORT``.

    python asr_server.py --model /usr/share/vosk/vosk-model-small-en-us-0.15 --port 2700
"""

import argparse
import json
import os
import sys

import vosk
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, threads
from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import log
from twisted.python.threadpool import ThreadPool

EOF_MESSAGE = '{"eof" : 1}'
# Close codes (WebSocket private-use range): a text message that is neither
# a config nor the end of stream; recognition failed on the server.
CLOSE_BAD_MESSAGE = 4003
CLOSE_FAILED = 4011


class Settings:
    """What a connection's config message may change."""

    def __init__(self, sample_rate, words):
        self.sample_rate = sample_rate
        self.words = words
        self.max_alternatives = 0
        self.phrase_list = None

    def update(self, config):
        if "sample_rate" in config:
            self.sample_rate = float(config["sample_rate"])
        if "words" in config:
            self.words = bool(config["words"])
        if "max_alternatives" in config:
            self.max_alternatives = int(config["max_alternatives"])
        if "phrase_list" in config:
            self.phrase_list = list(config["phrase_list"])


class RecognitionProtocol(WebSocketServerProtocol):
    """One client's stream. Messages are handled strictly in arrival order:
    each waits for the previous one's recognition to finish."""

    def onConnect(self, request):
        server = self.factory.server
        self.settings = Settings(server.sample_rate, server.words)
        self.recognizer = None
        self.finished = False
        self.turn = defer.succeed(None)

    def onMessage(self, payload, isBinary):
        self.turn.addCallback(lambda _: self.handle(payload, isBinary))
        self.turn.addErrback(self.failed)

    def onClose(self, wasClean, code, reason):
        self.finished = True
        self.turn.addBoth(lambda _: self.release())

    @defer.inlineCallbacks
    def handle(self, payload, binary):
        if self.finished:
            return
        server = self.factory.server
        if not binary:
            text = payload.decode("utf-8", "replace")
            if text.strip() == EOF_MESSAGE or _is_eof(text):
                final = yield server.run(self.final_result)
                self.reply(final)
                self.finished = True
                self.sendClose(1000)
                return
            try:
                config = json.loads(text)["config"]
                self.settings.update(config)
            except (ValueError, KeyError, TypeError) as e:
                self.sendClose(CLOSE_BAD_MESSAGE,
                               f"expected a config message or {EOF_MESSAGE}: {e}")
                self.finished = True
            return
        answer = yield server.run(self.recognize, payload)
        self.reply(answer)

    def reply(self, text):
        if not self.finished:
            self.sendMessage(text.encode("utf-8"), isBinary=False)

    def failed(self, failure):
        log.err(failure, "recognition failed")
        if not self.finished:
            self.finished = True
            self.sendClose(CLOSE_FAILED, "recognition failed")

    def release(self):
        recognizer, self.recognizer = self.recognizer, None
        if recognizer is not None:
            self.factory.server.dispose(recognizer)

    # On a pool thread ----------------------------------------------------------

    def make_recognizer(self):
        server, s = self.factory.server, self.settings
        if s.phrase_list:
            rec = vosk.KaldiRecognizer(server.model, s.sample_rate,
                                       json.dumps(s.phrase_list, ensure_ascii=False))
        else:
            rec = vosk.KaldiRecognizer(server.model, s.sample_rate)
        rec.SetWords(s.words)
        if s.max_alternatives:
            rec.SetMaxAlternatives(s.max_alternatives)
        return rec

    def recognize(self, pcm):
        if self.recognizer is None:
            self.recognizer = self.make_recognizer()
        if self.recognizer.AcceptWaveform(pcm):
            return self.recognizer.Result()
        return self.recognizer.PartialResult()

    def final_result(self):
        if self.recognizer is None:
            self.recognizer = self.make_recognizer()
        return self.recognizer.FinalResult()


def _is_eof(text):
    try:
        document = json.loads(text)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("eof") in (1, True)


class RecognitionServer:
    """The model, the thread pool, and the listening factory."""

    def __init__(self, reactor, model_path, threads, sample_rate=8000.0, words=True):
        self.reactor = reactor
        self.model = vosk.Model(model_path)
        self.sample_rate = sample_rate
        self.words = words
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="asr-server")
        self.pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", self.pool.stop)

    def run(self, function, *args):
        return threads.deferToThreadPool(self.reactor, self.pool, function, *args)

    def dispose(self, thing):
        box = [thing]
        del thing
        self.pool.callInThread(box.clear)

    def factory(self):
        factory = WebSocketServerFactory(reactor=self.reactor)
        factory.protocol = RecognitionProtocol
        factory.server = self
        return factory


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_path", nargs="?", default=None,
                   help="model folder (default: $VOSK_MODEL_PATH or ./model)")
    p.add_argument("--model", dest="model_option", help="model folder (same as the argument)")
    p.add_argument("--host", default=os.environ.get("VOSK_SERVER_INTERFACE", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(os.environ.get("VOSK_SERVER_PORT", 2700)))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="recognition threads (default: one per CPU)")
    p.add_argument("--sample-rate", type=float,
                   default=float(os.environ.get("VOSK_SAMPLE_RATE", 8000)))
    p.add_argument("--quiet", action="store_true", help="no Kaldi log lines on stderr")
    args = p.parse_args(argv)
    args.model = args.model_option or args.model_path or os.environ.get("VOSK_MODEL_PATH", "model")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.model):
        print(f"asr_server: no model folder at {args.model}", file=sys.stderr)
        return 2
    if args.quiet:
        vosk.SetLogLevel(-1)
    # Warnings and errors (a failed recognition) on stderr; not every
    # connection's comings and goings.
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)
    from twisted.internet import reactor

    server = RecognitionServer(reactor, args.model, args.threads, args.sample_rate)
    port = reactor.listenTCP(args.port, server.factory(), interface=args.host)
    address = port.getHost()
    print(f"listening on ws://{address.host}:{address.port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
