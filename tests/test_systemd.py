"""sd_notify without libsystemd: datagrams to $NOTIFY_SOCKET, received here
on a real unix datagram socket; the watchdog pinged from the reactor."""

import socket

import pytest
from twisted.internet.testing import MemoryReactorClock

from siprecd import config as configmod
from siprecd.service import SiprecdService
from siprecd.systemd import Notifier


@pytest.fixture
def listener(tmp_path):
    """A unix datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    yield sock, str(tmp_path / "notify")
    sock.close()


def fields(datagram):
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_the_environment_says_where_and_whether_to_ping_the_watchdog():
    n = Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "20000000",
                                   "WATCHDOG_PID": "42"}, pid=42)
    assert n.enabled and n.address == "/run/x" and n.watchdog_interval == 20.0
    abstract = Notifier.from_environment({"NOTIFY_SOCKET": "@sd-notify"}, pid=42)
    assert abstract.address == "\0sd-notify" and abstract.watchdog_interval is None
    # The watchdog is another process's (an inherited environment).
    other = Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "20000000",
                                       "WATCHDOG_PID": "41"}, pid=42)
    assert other.watchdog_interval is None
    nothing = Notifier.from_environment({}, pid=42)
    assert not nothing.enabled and not nothing.ready("ready") and not nothing.watchdog()


def test_each_notification_is_one_datagram_of_name_value_lines(listener):
    sock, path = listener
    n = Notifier(path)
    assert n.ready("not ready: speech recognition\nunavailable")
    assert fields(sock.recv(4096)) == {"READY": "1",
                                       "STATUS": "not ready: speech recognition unavailable"}
    n.extend_timeout(30, "waiting for: a model")
    assert fields(sock.recv(4096)) == {"EXTEND_TIMEOUT_USEC": "30000000",
                                       "STATUS": "waiting for: a model"}
    n.watchdog()
    assert fields(sock.recv(4096)) == {"WATCHDOG": "1"}
    n.stopping()
    assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "stopping"}
    n.close()


def test_an_abstract_socket_name(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"siprecd-test-{tmp_path.name}"
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}, pid=1)
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_a_socket_that_went_away_is_logged_once_and_never_raises(tmp_path):
    n = Notifier(str(tmp_path / "gone"))
    assert not n.ready("ready") and not n.watchdog()


def test_the_watchdog_is_pinged_by_the_reactor_so_a_stuck_one_stops_the_pings(listener):
    sock, path = listener
    sock.settimeout(0)
    clock = MemoryReactorClock()
    root = SiprecdService(configmod.from_dict({}), clock,
                          notifier=Notifier(path, watchdog_usec=10_000_000))
    root.startService()
    pings = []

    def received():
        while True:
            try:
                pings.append(sock.recv(4096))
            except BlockingIOError:
                return len(pings)

    assert received() == 1  # at once
    clock.advance(4.9)
    assert received() == 1
    clock.advance(0.1)  # every half WatchdogSec
    assert received() == 2
    clock.advance(5)
    assert received() == 3
    # No turn of the reactor, no ping, however long the wall clock runs.
    assert received() == 3
    assert set(pings) == {b"WATCHDOG=1"}


def test_start_up_is_over_for_systemd_once_only_the_operator_or_the_outside_can_help():
    from siprecd.service import Readiness

    readiness = Readiness()
    settled = []
    readiness.wait_for("startup", "starting")
    readiness.wait_for("asr", "loading a model")
    readiness.when_settled(lambda: settled.append("settled"))
    readiness.done("startup")
    assert settled == []  # a model loading: work in progress
    readiness.fail("asr", "no model")
    assert settled == ["settled"] and not readiness.ready
    # Waiting on servers outside the node is not start-up work either.
    remote = Readiness()
    remote.wait_for("asr", "connecting to ASR servers", external=True)
    remote.when_settled(lambda: settled.append("remote"))
    assert settled == ["settled", "remote"] and not remote.ready
    remote.done("asr")
    assert remote.ready
