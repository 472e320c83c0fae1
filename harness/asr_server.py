"""The example remote ASR server (``contrib/vosk-server/asr_server.py``) run
as a real subprocess on loopback, for the tests of the remote backend.

It is started from this source tree (the script is not installed), so it
lives with the harnesses rather than with the public ASR helpers of
:mod:`siprecd.testing.asr`.
"""

import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["AsrServerProcess"]


class AsrServerProcess:
    """``contrib/vosk-server/asr_server.py`` run as a real subprocess on
    loopback, for tests of the remote backend.

    ``start()`` waits (at most *timeout* seconds) for the server's
    ``listening on ws://...`` line, never on a sleep; ``url`` is then its
    address. *port* 0 lets the server pick a free port.
    """

    SCRIPT = Path(__file__).resolve().parents[1] / "contrib" / "vosk-server" / "asr_server.py"

    def __init__(self, model, port=0, threads=2, host="127.0.0.1", timeout=60.0):
        self.model = Path(model)
        self.port = port
        self.threads = threads
        self.host = host
        self.timeout = timeout
        self.process = None
        self.url = None
        self._stderr = None
        self._reader = None

    def start(self):
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, str(self.SCRIPT), "--quiet", "--model", str(self.model),
             "--host", self.host, "--port", str(self.port), "--threads", str(self.threads)],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        lines = queue.Queue()

        def read():
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        try:
            line = lines.get(timeout=self.timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"asr_server did not listen within {self.timeout:g}s") from None
        if line is None or not line.startswith("listening on "):
            errors = self.stderr()
            self.stop()
            raise RuntimeError(f"asr_server did not start: {line!r}; stderr: {errors}")
        self.url = line.split("listening on ", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stderr(self):
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def kill(self):
        """Kill it at once (SIGKILL): connections drop without a close."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None and self.process.stdout is not None:
            self._reader.join(10)
            self.process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
