"""Run sipp (Debian package sip-tester) as a real SIP peer.

sipp's exit status is 0 only when every call of the scenario succeeded;
its statistics file gives the counts and its message trace the sizes.
"""

import csv
import re
import socket
import subprocess
from pathlib import Path

import attrs

from harness.daemon import free_port

__all__ = ["SippResult", "run_sipp"]

_TRANSPORTS = {"udp": "u1", "tcp": "t1", "tls": "l1"}


@attrs.frozen
class SippResult:
    returncode: int
    successful: int
    failed: int
    max_message_bytes: int
    report: str
    stats: dict


def run_sipp(scenario, host, port, *, transport="udp", workdir, calls=1, rate=None,
             concurrency=None, timeout=60, extra=(), prefix=()):
    workdir = Path(workdir)
    name = Path(scenario).stem
    local_port = free_port(socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    media_port = free_port(socket.SOCK_DGRAM)
    args = [
        *prefix, "sipp", f"{host}:{port}", "-sf", str(scenario), "-t", _TRANSPORTS[transport],
        "-i", "127.0.0.1", "-p", str(local_port), "-mi", "127.0.0.1", "-mp", str(media_port),
        "-m", str(calls), "-nostdin", "-timeout", f"{timeout}s", "-timeout_error",
        "-trace_stat", "-stf", str(workdir / f"{name}.stat.csv"),
        "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
        "-trace_msg", "-message_file", str(workdir / f"{name}.messages.log"),
        "-max_socket", "1000",
    ]
    if rate is not None:
        args += ["-r", str(rate)]
    if concurrency is not None:
        args += ["-l", str(concurrency)]
    args += list(extra)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 60, cwd=workdir)
    stats = _last_stats(workdir / f"{name}.stat.csv")
    sizes = [int(n) for n in re.findall(
        r"message sent \((\d+) bytes\)",
        _read(workdir / f"{name}.messages.log"),
    )]
    report = "\n".join([
        f"sipp exit {proc.returncode}",
        proc.stdout[-3000:], proc.stderr[-3000:],
        _read(workdir / f"{name}.errors.log")[-3000:],
    ])
    return SippResult(
        returncode=proc.returncode,
        successful=int(stats.get("SuccessfulCall(C)", 0) or 0),
        failed=int(stats.get("FailedCall(C)", 0) or 0),
        max_message_bytes=max(sizes, default=0),
        report=report,
        stats=stats,
    )


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _last_stats(path):
    text = _read(path)
    rows = list(csv.reader(text.splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1]))
