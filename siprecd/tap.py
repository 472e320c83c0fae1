"""twistd glue: command-line options and the service tree for one daemon."""

import sys

from twisted.python import usage

from siprecd import config as configmod
from siprecd import logs
from siprecd.checks import check_files, prepare_state_dir
from siprecd.config import EXIT_CONFIG
from siprecd.service import SiprecdService, StartupError

__all__ = ["Options", "makeService"]


def config_failure(message):
    """Print one line to stderr and exit with EXIT_CONFIG (no traceback)."""
    print(f"siprecd: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


class Options(usage.Options):
    synopsis = "-c FILE"
    longdesc = (
        "Run the siprecd SIPREC recording and transcription server. "
        "All settings are in the YAML file given with -c; see etc/siprecd.yaml."
    )
    optParameters = [
        ["config", "c", None, "Path to the YAML configuration file (required)."],
    ]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("-c/--config FILE is required")
        try:
            self.config = configmod.load(self["config"])
            check_files(self.config)
        except configmod.ConfigError as e:
            config_failure(str(e))


def _wants_own_observer(options):
    """Use the YAML's logging section unless twistd was told where to log."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return True
    if parent.get("logfile") or parent.get("logger") or parent.get("syslog"):
        return False
    # A daemonised twistd has no stdout; it keeps its own twistd.log then.
    return bool(parent.get("nodaemon")) or options.config.logging.file != "-"


def _raise_file_limit():
    """Raise the soft file limit to the hard one where allowed; log both."""
    from twisted.logger import Logger

    from siprecd import resources

    before, now, hard = resources.raise_file_limit()
    if now is None:
        return
    log = Logger(namespace="siprecd.resources")
    if now != before:
        log.info("file limit raised from {before} to {now} open files (hard limit {hard})",
                 before=before, now=now, hard=hard)
    else:
        log.info("file limit: {now} open files (hard limit {hard})", now=now, hard=hard)


def makeService(options, reactor=None):
    """Build the root service from parsed Options (or anything with .config):
    the node's parts (:func:`siprecd.node.build_node`) as its children."""
    if reactor is None:
        from twisted.internet import reactor
    config = options.config
    observer = logs.make_observer(config.logging) if _wants_own_observer(options) else None
    _raise_file_limit()
    try:
        prepare_state_dir(config)
        from siprecd.node import build_node

        node = build_node(config, reactor)
    except configmod.ConfigError as e:
        config_failure(str(e))
    except StartupError as e:
        raise SystemExit(f"siprecd: {e}") from None
    return SiprecdService.for_node(node, log_observer=observer)
