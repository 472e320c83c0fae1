"""``siprecd redact -c FILE``, run as a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SIPRECD = Path(sys.executable).parent / "siprecd"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "siprecd.yaml"
    path.write_text(f"state_dir: {tmp_path}\nredaction:\n  email: true\n")
    return path


def run(config, stdin, *args):
    return subprocess.run([str(SIPRECD), "redact", "-c", str(config), *args], input=stdin,
                          check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_plain_lines(config):
    stdin = ("my card number is four one one one one one one one one one one one one one one one\n"
             "I have two kids\n"
             "\n"
             "the cvv is one two three\n"
             "my email is john dot smith at gmail dot com\n")
    proc = run(config, stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "my card number is ################",
        "I have two kids",
        "",
        "the cvv is ###",
        "my email is #### #### #### #### #### #### ####",
    ]
    assert proc.stderr == ""


def test_plain_lines_split_number(config):
    proc = run(config, "it's four one one one\none one one one\none one one one\n"
                       "one one one one\nthanks\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["it's ####", "####", "####", "####", "thanks"]


def test_json_lines_with_calls_streams_and_roles(config):
    lines = [
        {"call": "a", "stream": "agent", "role": "agent", "text": "what's the security code"},
        {"call": "b", "stream": "s1", "text": "one two three"},
        {"call": "a", "stream": "customer", "role": "customer", "text": "one two three"},
        {"call": "a", "stream": "customer", "role": "customer", "text": "okay",
         "extra": [1, 2]},
    ]
    proc = run(config, "".join(json.dumps(line) + "\n" for line in lines))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["text"] for o in out] == ["what's the security code", "123", "###", "okay"]
    assert out[2]["entities"] == [
        {"kind": "short_numeric", "first": 0, "last": 0, "start": out[2]["entities"][0]["start"],
         "end": out[2]["entities"][0]["end"]}]
    assert out[1]["entities"] == []
    assert out[3]["extra"] == [1, 2] and out[3]["call"] == "a" and out[3]["role"] == "customer"


def test_json_lines_with_times_use_hold_back(config):
    # The second half comes 10 s later: the first went out before it.
    lines = [{"stream": "c", "text": "it's four one one one", "start": 0, "end": 1500},
             {"stream": "c", "text": "one one one one one one one one one one one one",
              "start": 11000, "end": 14600}]
    proc = run(config, "".join(json.dumps(line) + "\n" for line in lines))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["text"] for line in proc.stdout.splitlines()] == [
        "it's 4111", "111111111111"]


def test_spanish(config):
    line = {"call": "x", "stream": "c", "language": "es-US",
            "text": "mi tarjeta es cuatro" + " uno" * 15}
    proc = run(config, json.dumps(line) + "\n")
    assert json.loads(proc.stdout)["text"] == "mi tarjeta es ################"


def test_bad_config_exits_78(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("redaction:\n  card_numbers: false\n")
    proc = run(bad, "hello\n")
    assert proc.returncode == 78
    assert proc.stderr.strip().startswith("siprecd: redaction.card_numbers:")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run(tmp_path / "missing.yaml", "hello\n")
    assert proc.returncode == 78


@pytest.mark.parametrize("line,message", [
    ('{"stream": "c", "text": ', "not valid JSON"),
    ('{"stream": "c"}', '"text"'),
    ('{"stream": 5, "text": "x"}', '"stream"'),
    ('{"text": "x", "start": "soon"}', '"start"'),
])
def test_bad_line_exits_65(config, line, message):
    proc = run(config, "okay\n" + line + "\n" + "never read\n")
    assert proc.returncode == 65
    assert proc.stdout.splitlines() == ["okay"]
    assert proc.stderr.startswith("siprecd: line 2: ") and message in proc.stderr


def test_help_lists_the_command():
    proc = subprocess.run([str(SIPRECD), "--help"], capture_output=True, text=True, timeout=60,
                          check=True)
    assert "redact" in proc.stdout
