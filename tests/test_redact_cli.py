"""``siprecd redact -c FILE``, run as a real subprocess."""

import json
import os
import re
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
        {"kind": "short_numeric", "entity": "cvv", "first": 0, "last": 0,
         "start": out[2]["entities"][0]["start"],
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
    ('{"stream": "c", "text": "my card is 4111', "not valid JSON"),
    ('{"stream": "c", "card": "4111 1111"}', '"text"'),
    ('{"stream": 5, "text": "pin 4321"}', '"stream"'),
    ('{"text": "pin 4321", "start": "soon"}', '"start"'),
    ('{"text": "pin 4321", "start": 1e999}', "OverflowError"),
])
def test_a_bad_line_is_masked_and_the_rest_redacted(config, line, message):
    stdin = ("okay\n" + line + "\n" + "the cvv is one two three\n"
             + json.dumps({"call": "b", "text": "my pin is four four four four"}) + "\n")
    proc = run(config, stdin)
    assert proc.returncode == 65
    out = proc.stdout.splitlines()
    assert out[0] == "okay"
    # In its place, every word masked: nothing of it readable.
    assert re.fullmatch(r"[#, ]+", out[1]), out[1]
    assert len(out[1].split()) == len(line.split())
    assert out[2] == "the cvv is ###"
    assert json.loads(out[3])["text"] == "my pin is ####"
    (error,) = proc.stderr.splitlines()
    assert error.startswith("siprecd: line 2: ") and message in error
    assert "4111" not in error and "4321" not in error


def test_bad_bytes_are_one_bad_line(config, tmp_path):
    proc = subprocess.run([str(SIPRECD), "redact", "-c", str(config)],
                          input=b"my pin is \xff\xfe one two three four\nthanks\n",
                          check=False, capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[1] == "thanks" and "####" in lines[0] and "1234" not in lines[0]


def test_stream_defaults_to_the_role(config):
    # The agent's read-back and the customer's groups are two streams even
    # when the lines do not name them.
    lines = [{"call": "r", "role": "agent", "text": "what is the card number"},
             {"call": "r", "role": "customer", "text": "four one five two"},
             {"call": "r", "role": "agent", "text": "four one five two"}]
    proc = run(config, "".join(json.dumps(line) + "\n" for line in lines))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["text"] for o in out[1:]] == ["####", "####"]
    assert "stream" not in out[1]


def test_help_lists_the_command():
    proc = subprocess.run([str(SIPRECD), "--help"], capture_output=True, text=True, timeout=60,
                          check=True)
    assert "redact" in proc.stdout
