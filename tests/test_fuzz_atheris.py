"""Coverage-guided fuzzing (atheris, libFuzzer) of the sans-IO parsers,
a bounded run per target: ``fuzz/siprecd_fuzz.py`` documents the targets
and the one exception each may raise. A crash fails the test with the
input libFuzzer saved. ``SIPRECD_FUZZ_RUNS`` sets the inputs per target
(default 5,000: a few seconds each); longer runs are for by hand."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris (the test extra) is not installed")

HARNESS = Path(__file__).resolve().parent.parent / "fuzz" / "siprecd_fuzz.py"
RUNS = int(os.environ.get("SIPRECD_FUZZ_RUNS", "5000"))
#: Memory a target may use beyond what it starts with. Linux carries a
#: process's peak RSS across fork and exec, so a harness started from a
#: pytest process that holds recogniser models (gigabytes) begins "at" that
#: peak; libFuzzer's own limit is therefore set above the inherited figure.
RSS_BUDGET_MB = 2048


def rss_limit_mb():
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return inherited + RSS_BUDGET_MB


@pytest.mark.parametrize("target", ["sip", "sdp", "multipart", "metadata", "rtp"])
def test_atheris_target(target, tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(HARNESS), "--seeds", target, str(corpus)], check=True,
                   timeout=60)
    done = subprocess.run(
        [sys.executable, str(HARNESS), target, str(corpus), f"-runs={RUNS}", "-seed=1",
         "-max_len=4096", f"-rss_limit_mb={rss_limit_mb()}", f"-artifact_prefix={tmp_path}/",
         "-print_final_stats=1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(
        p.name for p in tmp_path.glob("timeout-*"))
    tail = "\n".join((done.stderr or "").splitlines()[-40:])
    assert done.returncode == 0 and not crashes, f"{target}: {crashes}\n{tail}"
    assert f"Done {RUNS} runs" in done.stderr, tail
