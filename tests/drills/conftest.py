"""Shared by the failure drills: the summary table printed at the end of
the run, and fixtures for the drills' daemons (the drill ASR backend on
the path, a test CA, a webhook receiver)."""

import os

import pytest
import pytest_twisted

from harness import drills


def pytest_terminal_summary(terminalreporter):
    if not drills.REPORT:
        return
    terminalreporter.section("failure drills: what happened and what was lost")
    terminalreporter.write_line(drills.format_table())
    where = os.environ.get("SIPRECD_DRILL_REPORT")
    if where:
        with open(where, "w", encoding="utf-8") as f:
            f.write(drills.format_table() + "\n")


@pytest.fixture
def asr_plugin(tmp_path, monkeypatch):
    """The drill ASR backend declared through entry points, on this
    process's path and in the environment daemons inherit; returns the
    environment to give a daemon subprocess."""
    path = drills.asr_plugin_path(tmp_path / "plugins")
    monkeypatch.syspath_prepend(path)
    pythonpath = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)
    # Every subprocess (the daemon, the siprecd CLI) finds it too.
    monkeypatch.setenv("PYTHONPATH", pythonpath)
    return {"PYTHONPATH": pythonpath}


@pytest.fixture
def authority(tmp_path):
    from harness.pki import Authority

    return Authority("drill CA", tmp_path / "pki")


@pytest.fixture
def receiver(authority):
    from twisted.internet import reactor

    from harness.receiver import WebhookReceiver

    r = WebhookReceiver(reactor, authority)
    r.start()
    yield r
    pytest_twisted.blockon(r.stop())
