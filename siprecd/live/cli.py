"""``siprecd watch -c FILE --guid G``: a call's live transcript in the terminal.

Connects to the node's live WebSocket (``GET /conversation/v1/live``) as
an app, with the API id in ``--api-id`` (or ``SIPRECD_API_ID``) and the
secret in the environment variable ``SIPRECD_API_SECRET`` (never on the
command line, where other users could read it), and prints each final
utterance as a line (time, role, text) while the words being spoken
update in place on the last line. Without a terminal (output to a file or
a pipe) only finals and call events are printed, one per line, unless
``--partials`` asks for partials too.

The connection is to the API of the configured node (``api.host``,
``api.port``; ``--host`` for another name); the certificate is checked
against ``--cafile``, else ``api.certificate``, else the development
certificate in ``state_dir/tls``. A lost connection is made again (after
1 s, 2 s, ... 10 s) with the positions of the finals already printed, so
none is printed twice or missed. Ends when the call ends, or on Ctrl-C.
"""

import os
import shutil
import sys
import time

__all__ = ["register", "Screen"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 78


def register(subparsers):
    import argparse

    p = subparsers.add_parser(
        "watch", help="print a call's live transcript, partials updating in place",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="YAML configuration file")
    p.add_argument("--guid", required=True, help="the call's guid (externalId)")
    p.add_argument("--api-id", default=os.environ.get("SIPRECD_API_ID"),
                   help="the app's API id (default: $SIPRECD_API_ID)")
    p.add_argument("--host", help="the API's host name (default: api.host, or 127.0.0.1)")
    p.add_argument("--cafile", help="CA file to check the API's certificate with")
    p.add_argument("--partials", action="store_true",
                   help="also print partials as lines when the output is not a terminal")
    p.add_argument("--replay", action="store_true",
                   help="first print the finals said before this command started")
    p.set_defaults(func=_watch)


class Screen:
    """What is printed, sans-IO: ``feed(event)`` returns the text to write
    (with ANSI line clearing on a terminal). *width*: the terminal's."""

    CLEAR = "\r\x1b[K"

    def __init__(self, terminal=True, partials=False, width=100):
        self.terminal = terminal
        self.partials = partials
        self.width = max(20, width)
        self.current = {}     # role -> partial text shown
        self.ended = False

    def feed(self, event):
        kind = event.get("event")
        if kind == "partial":
            return self._partial(event)
        if kind == "final":
            role = event["sender"]["role"]
            self.current.pop(role, None)
            text = " ".join(u["text"] for u in event["autotranscribeResponse"]["utterance"])
            return self._line(f"{_clock(event)} {role:>8}: {text}")
        if kind in ("call-started", "streaming-started", "streaming-stopped", "call-ended"):
            if kind == "call-ended":
                self.ended = True
                self.current.clear()
            return self._line(f"--- {kind} ({event.get('timestamp') or ''})")
        return ""

    def _partial(self, event):
        role = event["sender"]["role"]
        text = " ".join(u["text"] for u in event["autotranscribeResponse"]["utterance"])
        if text:
            self.current[role] = text
        else:
            self.current.pop(role, None)        # withdrawn
        if not self.terminal:
            return f"~ {role:>6}: {text}\n" if self.partials and text else ""
        return self.CLEAR + self._status()

    def _status(self):
        shown = " | ".join(f"{role}: {text}" for role, text in sorted(self.current.items()))
        if not shown:
            return ""
        shown = "… " + shown
        return shown if len(shown) <= self.width - 1 else "… " + shown[-(self.width - 3):]

    def _line(self, text):
        if not self.terminal:
            return text + "\n"
        return self.CLEAR + text + "\n" + self._status()


def _clock(event):
    stamp = event.get("timestamp")
    if stamp:
        return stamp[11:19]
    return time.strftime("%H:%M:%S")


def _watch(args):
    from siprecd import config as configmod

    secret = os.environ.get("SIPRECD_API_SECRET")
    if not args.api_id or not secret:
        print("siprecd: set --api-id (or SIPRECD_API_ID) and SIPRECD_API_SECRET",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        config = configmod.load(args.config)
    except configmod.ConfigError as e:
        print(f"siprecd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    host = args.host or (config.api.host if config.api.host not in ("0.0.0.0", "::")
                         else "127.0.0.1")
    cafile = args.cafile or config.api.certificate or (
        config.state_dir / "tls" / "api-selfsigned.crt")
    terminal = sys.stdout.isatty()
    screen = Screen(terminal, args.partials, shutil.get_terminal_size((100, 20)).columns)
    outcome = {"status": EXIT_OK}

    async def main(reactor):
        from twisted.internet import task

        from siprecd.live.client import connect

        positions, replay, delay = None, args.replay, 1.0
        while not screen.ended:
            try:
                connection = await connect(
                    reactor, host, config.api.port, args.api_id, secret, guid=args.guid,
                    after=positions, replay=replay and positions is None,
                    on_event=lambda e: _write(screen.feed(e)), cafile=str(cafile),
                    id_header=config.api.id_header, secret_header=config.api.secret_header)
            except Exception as e:  # noqa: BLE001 - told, then tried again
                message = str(e)
                if any(f" {code} " in f" {message} " or f"({code}" in message
                       for code in (400, 401, 403, 404)):
                    print(f"\nsiprecd: {message}", file=sys.stderr)
                    outcome["status"] = EXIT_FAILURE
                    return
                print(f"\nsiprecd: {message}; connecting again in {delay:g} s",
                      file=sys.stderr)
                await task.deferLater(reactor, delay, lambda: None)
                delay = min(10.0, delay * 2)
                continue
            delay = 1.0
            code, reason = await connection.closed
            positions = dict(positions or {}, **connection.positions)
            if screen.ended:
                break
            print(f"\nsiprecd: connection closed ({code}{': ' + reason if reason else ''}); "
                  "connecting again", file=sys.stderr)

    from twisted.internet import defer, task

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code if isinstance(e.code, int) else EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return outcome["status"]


def _write(text):
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
