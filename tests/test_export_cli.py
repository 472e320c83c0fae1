"""``siprecd export`` and ``siprecd export runs`` as real subprocesses
(task.react cannot run twice in one process), on a SQLite database the
test seeds through the storage API."""

import datetime
import json
import os
import re
import sys

import pytest
import pytest_twisted
import yaml
from twisted.internet import defer, protocol, reactor, utils

from siprecd import config as configmod
from siprecd.export.samples import seed_day
from siprecd.storage.sqlite import SqliteStorage

DAY = "2022-06-27"


async def siprecd(*args):
    """(exit status, stdout, stderr) of ``siprecd ARGS`` in a subprocess."""
    d = utils.getProcessOutputAndValue(sys.executable, ["-m", "siprecd.cli", *args],
                                       env=dict(os.environ))
    d.addTimeout(120, reactor)
    out, err, code = await d
    return code, out.decode(), err.decode()


@pytest_twisted.async_yield_fixture
async def setup(tmp_path):
    path = tmp_path / "siprecd.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "node": {"id": "cli-node"}}))
    config = configmod.load(path)
    storage = SqliteStorage(reactor, config.in_state_dir(config.storage.sqlite.path))
    await storage.open()
    await seed_day(storage, DAY, calls=5, utterances=4, hours=[2, 3])

    class Setup:
        pass

    s = Setup()
    s.path, s.config, s.storage = str(path), config, storage
    s.exports = config.in_state_dir(config.export.directory)
    yield s
    await storage.close()


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, _, names in os.walk(root) for n in names)


@pytest_twisted.ensureDeferred
async def test_export_builds_a_day_and_says_so_in_one_line(setup):
    code, out, err = await siprecd("export", "-c", setup.path, "--date", DAY)
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r"utterances 2022-06-27: 20 rows, 4 files \(jsonl, csv\) in \d+\.\ds -> \S+/exports\n",
        out)
    assert files_under(setup.exports) == [
        f"utterances/version=1/format={fmt}/dt=2022-06-27/hr={h}/part-0000.{fmt}"
        for fmt in ("csv", "jsonl") for h in ("02", "03")]
    (run,) = await setup.storage.export_runs()
    assert (run.state, run.rows, run.node) == ("done", 20, "cli-node")

    code, out, err = await siprecd("export", "runs", "-c", setup.path)
    assert (code, err) == (0, "")
    assert out.startswith(f"{run.id}  2022-06-27  done     node cli-node  started ")
    assert "20 rows, 4 files in " in out

    code, out, err = await siprecd("export", "runs", "-c", setup.path, "--json",
                                   "--date", DAY)
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (code, row["id"], row["state"], row["rows"], row["files"]) == (
        0, run.id, "done", 20, 4)


@pytest_twisted.ensureDeferred
async def test_one_format_can_be_built_alone(setup):
    code, out, err = await siprecd("export", "-c", setup.path, "--date", DAY, "--format", "csv")
    assert (code, err) == (0, "")
    assert "2 files (csv)" in out
    assert all("format=csv" in f for f in files_under(setup.exports))


@pytest_twisted.ensureDeferred
async def test_a_day_in_the_future_is_refused(setup):
    tomorrow = (datetime.datetime.now(datetime.UTC).date()
                + datetime.timedelta(days=1)).isoformat()
    code, out, err = await siprecd("export", "-c", setup.path, "--date", tomorrow)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "is in the future" in err and err.startswith("siprecd: ")
    assert await setup.storage.export_runs() == []


@pytest_twisted.ensureDeferred
async def test_a_day_with_a_run_going_elsewhere_is_refused(setup):
    await setup.storage.start_export_run("utterances", DAY, "node-b")
    code, out, err = await siprecd("export", "-c", setup.path, "--date", DAY)
    assert code == 1 and out == ""
    assert err == "siprecd: an export of utterances for 2022-06-27 is already running " \
                  "(node node-b)\n"
    assert not setup.exports.exists()


@pytest_twisted.ensureDeferred
async def test_a_format_that_is_not_served_is_refused(tmp_path, setup):
    path = tmp_path / "jsonl-only.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "export": {"formats": ["jsonl"]}}))
    code, _, err = await siprecd("export", "-c", str(path), "--date", DAY, "--format", "csv")
    assert code == 1 and "--format csv is not in export.formats (jsonl)" in err


@pytest.mark.parametrize("args, message", [
    (["--date", "2022-06-31"], "expected a date YYYY-MM-DD"),
    (["--date", "27/06/2022"], "expected a date YYYY-MM-DD"),
    (["--format", "parquet", "--date", DAY], "invalid choice"),
    ([], "required: --date"),
])
@pytest_twisted.ensureDeferred
async def test_bad_arguments_exit_2_with_usage(setup, args, message):
    code, out, err = await siprecd("export", "-c", setup.path, *args)
    assert code == 2 and out == "" and message in err and "usage:" in err


@pytest_twisted.ensureDeferred
async def test_config_is_required_and_config_errors_exit_78(tmp_path):
    code, _, err = await siprecd("export", "--date", DAY)
    assert code == 2 and "required: -c/--config" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  at: '25:00'\n")
    code, _, err = await siprecd("export", "-c", str(bad), "--date", DAY)
    assert code == 78 and "export.at" in err


@pytest_twisted.ensureDeferred
async def test_runs_says_when_there_are_none(setup):
    code, out, err = await siprecd("export", "runs", "-c", setup.path)
    assert (code, out, err) == (0, "no export runs\n", "")


class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_on_a_terminal_a_progress_bar_shows_rows_as_they_are_written(setup):
    collect = _Collect()
    reactor.spawnProcess(collect, sys.executable,
                         [sys.executable, "-m", "siprecd.cli", "export", "-c", setup.path,
                          "--date", DAY],
                         env=dict(os.environ, TQDM_MININTERVAL="0"), usePTY=True)
    code = await collect.ended.addTimeout(120, reactor)
    text = collect.output.decode()
    assert code == 0
    # tqdm's bar (redrawn at every page: TQDM_MININTERVAL=0), rubbed out
    # at the end, then the summary.
    bars = re.findall(r"\rutterances 2022-06-27: (\d+) rows \[[^\]]*rows/s\]", text)
    assert bars[0] == "0" and bars[-1] == "20"
    summary = text.rsplit("\r", 2)[-2]
    assert summary.startswith("utterances 2022-06-27: 20 rows, 4 files (jsonl, csv) in ")
    assert summary.endswith("-> " + str(setup.exports))
