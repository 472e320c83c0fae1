"""A real Kamailio (the Debian package) in front of siprecd nodes, for tests.

:class:`Kamailio` writes, into a directory of its own, a ``dispatcher.list``
naming the nodes and a ``kamailio.cfg`` that is ``contrib/kamailio/kamailio.cfg``
with the deployment's settings defined at its top (loopback address, a
free port, short probe and transaction timers, a control socket in the
directory), then runs ``kamailio -DD -E -f kamailio.cfg`` in the foreground
as a subprocess and waits on its log for the line the config prints when
its first worker is up. The files stay in the directory, so a failed test
can be replayed by hand with the same command line.

Node state changes found by the OPTIONS probes are log lines of their own
(``siprecd node sip:... is down`` / ``... is up``); :meth:`Kamailio.wait_for`
waits on them. :meth:`Kamailio.destinations` asks Kamailio itself (kamcmd
over the control socket) what it thinks of each node.

Kamailio forks worker processes: it runs in a session of its own so that
:meth:`Kamailio.stop` and :meth:`Kamailio.kill` reach every one of them.
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from harness.daemon import Daemon, free_port_pair

__all__ = ["Kamailio", "kamailio_binary", "contrib_config", "node_uri", "KamailioError"]

READY = r"kamailio-siprecd ready"


class KamailioError(RuntimeError):
    """Kamailio is missing, or did not start."""


def _find(name):
    found = shutil.which(name)
    if found:
        return found
    # /usr/sbin is often not on a non-root user's PATH.
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def kamailio_binary():
    """Path of the kamailio executable; KamailioError when not installed."""
    found = _find("kamailio")
    if found is None:
        raise KamailioError(
            "kamailio is not installed (Debian package kamailio; scripts/test-deps installs it)")
    return found


def contrib_config():
    """contrib/kamailio/kamailio.cfg of this source tree."""
    path = Path(__file__).resolve().parents[1] / "contrib" / "kamailio" / "kamailio.cfg"
    if not path.exists():
        raise KamailioError(f"{path} not found: Kamailio tests run from a source tree")
    return path


def node_uri(host, port, transport="udp"):
    """The dispatcher.list URI of a siprecd node."""
    uri = f"sip:{host}:{port}"
    return uri if transport.lower() == "udp" else f"{uri};transport={transport.lower()}"


def _define(name, value):
    if isinstance(value, str) and not re.fullmatch(r"[0-9.]+", value):
        value = '"' + value.replace('"', '\\"') + '"'
    return f"#!define {name} {value}"


class Kamailio(Daemon):
    """Kamailio dispatching to *nodes* (SIP URIs, see :func:`node_uri`, or
    ``(uri, priority)`` pairs), listening on UDP and TCP *host*:*port*.

    *ping_interval* is seconds between OPTIONS probes (0: none at all);
    *fr_timer* milliseconds to wait for any answer before failing over;
    *algorithm* the dispatcher algorithm (0, hash over Call-ID, as in the
    contrib config; 8 tries nodes by priority, highest first). *defines*
    adds or overrides any other setting of the config.
    """

    def __init__(self, directory, nodes, *, host="127.0.0.1", port=None, ping_interval=1,
                 fr_timer=1000, fr_inv_timer=5000, algorithm=None, workers=2, log_level=2,
                 defines=None, template=None, shm_mb=64, pkg_mb=8):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port_pair(host)
        self.nodes = list(nodes)
        self.ctl_socket = self.directory / "ctl.sock"
        settings = {
            "SIP_ADDRESS": host,
            "SIP_PORT": self.port,
            "DISPATCHER_LIST": str(self.directory / "dispatcher.list"),
            "PING_INTERVAL": int(ping_interval),
            "FR_TIMER": int(fr_timer),
            "FR_INV_TIMER": int(fr_inv_timer),
            "WORKERS": int(workers),
            "LOG_LEVEL": int(log_level),
            "CTL_SOCKET": f"unix:{self.ctl_socket}",
        }
        if algorithm is not None:
            settings["DISPATCH_ALG"] = int(algorithm)
        settings.update(defines or {})
        self.write_dispatcher_list()
        template = Path(template) if template is not None else contrib_config()
        text = template.read_text(encoding="utf-8")
        first, _, rest = text.partition("\n")
        if not first.startswith("#!KAMAILIO"):
            first, rest = "#!KAMAILIO", text
        header = ["# Written by harness.kamailio from " + str(template)]
        header += [_define(name, value) for name, value in settings.items()]
        cfg = self.directory / "kamailio.cfg"
        cfg.write_text("\n".join([first, *header, rest]), encoding="utf-8")
        args = [kamailio_binary(), "-DD", "-E", "-f", str(cfg), "-m", str(shm_mb),
                "-M", str(pkg_mb), "-Y", str(self.directory), "-w", str(self.directory)]
        super().__init__(cfg, args=args, cwd=self.directory)

    def write_dispatcher_list(self):
        lines = ["# setid destination flags priority attributes"]
        for node in self.nodes:
            uri, priority = node if isinstance(node, tuple) else (node, 0)
            lines.append(f"1 {uri} 0 {priority}")
        (self.directory / "dispatcher.list").write_text("\n".join(lines) + "\n")

    @property
    def address(self):
        return (self.host, self.port)

    def start(self):
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
            cwd=self.cwd, text=True, bufsize=1, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def wait_ready(self, timeout=30.0):
        try:
            return self.wait_for(READY, timeout)
        except EOFError as e:
            raise KamailioError(f"kamailio did not start: {e}") from None

    def wait_count(self, pattern, count, timeout=30.0):
        """Wait until *count* output lines (seen before or new) match
        *pattern*; returns them all."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            seen = [line for line in self.lines if regex.search(line)]
            if len(seen) >= count:
                return seen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(seen)} of {count} lines matching {pattern!r} within {timeout}s;"
                    " output:\n" + "\n".join(self.lines[-40:]))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise EOFError("kamailio exited; output:\n" + "\n".join(self.lines[-40:]))
            self.lines.append(line)

    def wait_down(self, uri, timeout=30.0):
        """The probe line saying *uri* went down (new or already seen)."""
        return self.wait_for(rf"siprecd node {re.escape(uri)} is down", timeout)

    def wait_up(self, uri, timeout=30.0):
        return self.wait_for(rf"siprecd node {re.escape(uri)} is up", timeout)

    def destinations(self):
        """``{uri: flags}`` as Kamailio has them (``AP`` active and probed,
        ``IP`` inactive and probed, ``TP`` trying, ...), through kamcmd."""
        kamcmd = _find("kamcmd")
        if kamcmd is None:
            raise KamailioError("kamcmd is not installed (it comes with the kamailio package)")
        out = subprocess.run([kamcmd, "-s", f"unix:{self.ctl_socket}", "dispatcher.list"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        states = {}
        uri = None
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("URI:"):
                uri = line.split(":", 1)[1].strip()
            elif line.startswith("FLAGS:") and uri is not None:
                states[uri] = line.split(":", 1)[1].strip()
                uri = None
        return states

    def _signal_group(self, signum):
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self, timeout=10.0):
        """SIGTERM (Kamailio stops its workers), then wait for exit."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.poll() if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        self._signal_group(signal.SIGKILL)   # any worker left behind
        self.drain_output()
        return code

    stop = terminate

    def kill(self):
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
