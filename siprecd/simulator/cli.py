"""``siprecd-src``: place simulated SIPREC calls at a recording server and
say how they went. Exit status 0 when every call was answered and ended
cleanly, 1 when any was not, 2 for bad arguments or unusable audio.

Also runs as ``python -m siprecd.simulator.cli``.
"""

import argparse
import json
import sys

from siprecd.simulator import invite as invitemod
from siprecd.simulator.rtp import Impairments
from siprecd.simulator.runner import CODECS, SRTP_SUITES, TRANSPORTS, CallSpec, Target, place_calls
from siprecd.siprec.guid import SOURCES

__all__ = ["main", "build_parser"]

EXAMPLES = """\
examples:
  siprecd-src 10.0.0.5                              one call over UDP, generated tones
  siprecd-src -t tcp --customer c.wav --agent a.wav 10.0.0.5:5070
  siprecd-src -t tls --ca srs-ca.pem srs.example.com
  siprecd-src -n 50 --concurrency 10 --rate 5 --speed 4 --codec PCMA 10.0.0.5
  siprecd-src --loss 5 --jitter 20 --reorder 2 --seed 7 --hold 3:2 --dtmf 6:1234# 10.0.0.5
  siprecd-src --srtp --srtp-suite AES_CM_128_HMAC_SHA1_32 10.0.0.5
"""


def _target(text):
    """HOST, HOST:PORT, [IPv6] or [IPv6]:PORT."""
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise argparse.ArgumentTypeError(f"bad address {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise argparse.ArgumentTypeError(f"bad address {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"bad port in {text!r}")
        port = int(port)
    return host, port


def _pair(kind):
    def parse(text):
        at, sep, value = text.partition(":")
        try:
            if not sep:
                raise ValueError
            return float(at), kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected AT:{kind.__name__.upper()}, got {text!r}") from None
    return parse


def _digits(text):
    if not text:
        raise ValueError
    return text


_digits.__name__ = "digits"


def _seconds(text):
    return float(text)


_seconds.__name__ = "seconds"


def _port_range(text):
    low, sep, high = text.partition("-")
    try:
        low, high = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {text!r}") from None
    return low, high


def _guid_order(text):
    order = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in order if s not in SOURCES]
    if unknown or not order:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SOURCES)}; got {text!r}")
    return order


def build_parser():
    p = argparse.ArgumentParser(
        prog="siprecd-src",
        description="Place simulated SIPREC recording calls (RFC 7866, RFC 7865 metadata) at a "
                    "recording server, stream two WAV files as the customer and agent RTP "
                    "streams, and print what happened.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", type=_target, metavar="HOST[:PORT]",
                   help="the SRS (port default 5070, or 5071 for TLS)")
    sip = p.add_argument_group("SIP")
    sip.add_argument("-t", "--transport", choices=TRANSPORTS, default="udp",
                     help="SIP transport (default udp)")
    sip.add_argument("--ca", metavar="FILE", help="TLS: CA certificate(s) to verify the SRS with "
                     "(default: the system's trust store)")
    sip.add_argument("--insecure", action="store_true",
                     help="TLS: do not verify the SRS's certificate")
    sip.add_argument("--tls-server-name", metavar="NAME",
                     help="TLS: name the certificate must carry (default: HOST)")
    sip.add_argument("--flavour", choices=invitemod.FLAVOURS, default="rfc7865",
                     help="vendor dialect of the recording metadata (default rfc7865)")
    sip.add_argument("--guid-style", choices=invitemod.GUID_STYLES, default="vendor",
                     help="call identifier header to send; 'vendor' sends what the flavour's "
                          "SBC sends (default vendor)")
    sip.add_argument("--guid-order", type=_guid_order, metavar="LIST",
                     help="the SRS's sip.guid_sources, to predict the guid it picks "
                          "(default: siprecd's default order)")
    sip.add_argument("--timeout", type=float, default=32.0, metavar="S",
                     help="give up on a request with no final answer after S seconds (default 32)")
    sip.add_argument("--local-host", metavar="ADDR",
                     help="local address for SIP and RTP (default: the one routing to the SRS)")
    sip.add_argument("--media-host", metavar="ADDR", help="local address for RTP if different")
    media = p.add_argument_group("media")
    media.add_argument("--customer", metavar="WAV",
                       help="customer audio, sent on the first m-line (default: a generated tone)")
    media.add_argument("--agent", metavar="WAV",
                       help="agent audio, sent on the second m-line (default: a generated tone)")
    media.add_argument("--duration", type=float, metavar="S",
                       help="loop or cut the audio to S seconds (default: the longer file; "
                            "10 s of tones without files)")
    media.add_argument("-c", "--codec", type=str.upper, choices=CODECS, default="PCMU",
                       help="audio codec (default PCMU)")
    media.add_argument("--speed", type=float, default=1.0, metavar="X",
                       help="send media X times faster than real time (default 1)")
    media.add_argument("--hold", type=_pair(_seconds), metavar="AT:SECONDS",
                       help="put the call on hold (re-INVITE a=inactive) at AT for SECONDS, "
                            "then resume (a=sendonly)")
    media.add_argument("--dtmf", type=_pair(_digits), action="append", default=[],
                       metavar="AT:DIGITS", help="send RFC 4733 DTMF digits at AT seconds "
                       "(repeatable)")
    media.add_argument("--dtmf-stream", choices=invitemod.ROLES, default="customer",
                       help="stream that carries the DTMF (default customer)")
    media.add_argument("--rtcp", action="store_true", help="send RTCP sender reports")
    media.add_argument("--srtp", action="store_true",
                       help="offer SDES-SRTP (RTP/SAVP with a=crypto) and send SRTP/SRTCP")
    media.add_argument("--srtp-suite", type=str.upper, choices=SRTP_SUITES,
                       help=f"SRTP crypto suite to offer with --srtp (default {SRTP_SUITES[0]})")
    media.add_argument("--rtp-ports", type=_port_range, default=(40000, 49999), metavar="MIN-MAX",
                       help="local RTP port range (default 40000-49999)")
    imp = p.add_argument_group("impairments (repeatable with --seed)")
    imp.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="drop PCT%% of packets")
    imp.add_argument("--jitter", type=float, default=0.0, metavar="MS",
                     help="delay each packet by 0..MS milliseconds")
    imp.add_argument("--reorder", type=float, default=0.0, metavar="PCT",
                     help="swap PCT%% of packets with the next one")
    imp.add_argument("--seed", type=int, help="seed for the impairments (default: random, printed)")
    load = p.add_argument_group("load")
    load.add_argument("-n", "--calls", type=int, default=1, metavar="N",
                      help="number of calls (default 1)")
    load.add_argument("--concurrency", type=int, default=1, metavar="C",
                      help="calls up at the same time (default 1)")
    load.add_argument("--rate", type=float, metavar="R", help="start at most R calls per second")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _specs(args):
    impairments = Impairments(loss=args.loss, jitter_ms=args.jitter, reorder=args.reorder)
    spec = CallSpec(
        customer=args.customer, agent=args.agent, codec=args.codec, flavour=args.flavour,
        guid_style=args.guid_style, hold=args.hold, dtmf=tuple(args.dtmf),
        dtmf_stream=args.dtmf_stream, impairments=impairments, rtcp=args.rtcp,
        duration=args.duration, srtp=args.srtp,
        srtp_suite=args.srtp_suite or SRTP_SUITES[0],
    )
    return [spec] * args.calls


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be 1 or more")
    if args.ca and args.insecure:
        parser.error("--ca and --insecure do not go together")
    if args.transport != "tls" and (args.ca or args.insecure or args.tls_server_name):
        parser.error("--ca, --insecure and --tls-server-name are for --transport tls")
    if args.srtp_suite and not args.srtp:
        parser.error("--srtp-suite is for --srtp")
    try:
        specs = _specs(args)
    except ValueError as e:
        parser.error(str(e))
    host, port = args.target
    target = Target(host, port, args.transport, ca_file=args.ca, insecure=args.insecure,
                    server_name=args.tls_server_name)
    outcome = {}

    def progress(result):
        if not args.quiet:
            verdict = "ok" if result.clean else (result.problems[0] if result.problems else "failed")
            print(f"call {result.number}/{args.calls} done: {verdict}", file=sys.stderr, flush=True)

    def answered(result):
        if not args.quiet:
            # The guid is what start-streaming needs while the call is up.
            print(f"call {result.number}/{args.calls} answered: guid {result.guid}",
                  file=sys.stderr, flush=True)

    def run(reactor):
        _log_warnings()
        d = place_calls(
            reactor, target, specs, concurrency=args.concurrency, rate=args.rate,
            speed=args.speed, seed=args.seed, local_host=args.local_host,
            media_host=args.media_host, answer_timeout=args.timeout, guid_order=args.guid_order,
            rtp_ports=args.rtp_ports, on_call_done=progress, on_call_answered=answered,
        )

        def report(summary):
            if args.json:
                print(json.dumps(summary.to_dict(), indent=2))
            else:
                print(summary.format())
            outcome["code"] = 0 if summary.ok else 1

        def refused(failure):
            failure.trap(ValueError)
            print(f"siprecd-src: error: {failure.value}", file=sys.stderr)
            outcome["code"] = 2

        return d.addCallbacks(report, refused)

    from twisted.internet import task

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code
    return outcome.get("code", 1)


def _log_warnings():
    """Twisted's warnings and errors to stderr; our output stays on stdout."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


if __name__ == "__main__":
    sys.exit(main())
