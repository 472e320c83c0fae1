"""The `siprecd` console script.

Subcommands: ``run`` (the daemon, through twistd with the plugin preloaded,
so it works where the plugin cache cannot be written) and ``check-config``
here; the others come from the modules in :data:`COMMAND_MODULES`, each of
which has ``register(subparsers)`` adding its own.
"""

import argparse
import importlib
import sys

from siprecd import config as configmod

__all__ = ["main", "COMMAND_MODULES"]

# Modules adding subcommands, one line each.
COMMAND_MODULES = (
    "siprecd.api.cli",
    "siprecd.webhooks.cli",
    "siprecd.redact.cli",
    "siprecd.export.cli",
    "siprecd.storage.cli",
    "siprecd.asr.cli",
    "siprecd.demo.cli",
    "siprecd.live.cli",
)


def _run(args):
    from twisted.application import app
    from twisted.application.service import ServiceMaker
    from twisted.scripts import twistd

    maker = ServiceMaker("siprecd", "siprecd.tap", "siprecd", "siprecd")

    class ServerOptions(twistd.ServerOptions):
        @staticmethod
        def _getPlugins(interface):
            return [maker]

    sys.argv = ["siprecd", "--nodaemon", "--pidfile=", "siprecd", "-c", args.config]
    app.run(twistd.runApp, ServerOptions)
    return 0


def _check_config(args):
    """Every problem of the file, one line each: errors on standard error
    (exit status 78), then, when there is none, OK and the warnings and
    notes on standard output (exit status 0)."""
    from siprecd.checks import ERROR, find_problems
    from siprecd.config import EXIT_CONFIG

    try:
        config = configmod.load(args.config)
        problems = find_problems(config)
    except configmod.ConfigError as e:
        print(f"siprecd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    errors = [p for p in problems if p.severity == ERROR]
    if errors:
        for problem in errors:
            print(f"siprecd: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    listeners = []
    for name, listener in (("SIP/UDP", config.sip.udp), ("SIP/TCP", config.sip.tcp),
                           ("SIP/TLS", config.sip.tls), ("HTTPS API", config.api)):
        if listener.enabled:
            listeners.append(f"{name} {listener.host}:{listener.port}")
    print(f"{args.config}: OK ({'; '.join(listeners) or 'no listeners'}; "
          f"state in {config.state_dir})")
    for problem in problems:
        print(f"{problem.severity}: {problem}")
    return 0


def build_parser():
    from siprecd import __version__

    parser = argparse.ArgumentParser(
        prog="siprecd", description="SIPREC recording server that transcribes calls."
    )
    parser.add_argument("--version", action="version", version=f"siprecd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")
    run.set_defaults(func=_run)
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("-c", "--config", required=True, help="YAML configuration file")
    check.set_defaults(func=_check_config)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
