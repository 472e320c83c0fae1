"""The redaction section of the config, and the policy built from it."""

from pathlib import Path

import attrs
import pytest
import yaml

from siprecd import config as configmod
from siprecd.redact import ALWAYS_ON, Policy

REPO = Path(__file__).resolve().parent.parent


def redaction(**values):
    return configmod.from_dict({"redaction": values}).redaction


def test_defaults_make_the_default_policy():
    assert Policy.from_config(configmod.from_dict({}).redaction) == Policy()


def test_policy_from_config():
    section = redaction(short_numerics=False, email=True, hold_back="1500ms", lookback="2s",
                        context_window="1m", context_utterances=6, log_unredacted=True)
    assert Policy.from_config(section) == Policy(
        short_numerics=False, email=True, hold_back=1.5, lookback=2.0, context_window=60.0,
        context_utterances=6, log_unredacted=True)


@pytest.mark.parametrize("key", ALWAYS_ON)
def test_always_on_kinds_cannot_be_turned_off(key):
    assert getattr(redaction(**{key: True}), key) is True
    with pytest.raises(configmod.ConfigError) as e:
        redaction(**{key: False})
    assert e.value.key_path == f"redaction.{key}"
    assert "always" in str(e.value)


@pytest.mark.parametrize("values,path", [
    ({"hold_back": "31s"}, "redaction.hold_back"),
    ({"hold_back": -1}, "redaction.hold_back"),
    ({"lookback": "2m"}, "redaction.lookback"),
    ({"context_utterances": -1}, "redaction.context_utterances"),
    ({"email": "yes"}, "redaction.email"),
    ({"emails": True}, "redaction.emails"),
])
def test_bad_values_name_their_key(values, path):
    with pytest.raises(configmod.ConfigError) as e:
        redaction(**values)
    assert e.value.key_path == path


def test_example_config_documents_every_key():
    text = (REPO / "etc" / "siprecd.yaml").read_text()
    section = yaml.safe_load(text)["redaction"]
    fields = {f.name for f in attrs.fields(configmod.Redaction)}
    assert set(section) == fields
    # ... and each with a comment.
    block = text[text.index("\nredaction:"):]
    block = block[:block.index("\n\n", 1)]
    lines = block.splitlines()
    for key in fields:
        (i,) = [n for n, line in enumerate(lines) if line.strip().startswith(f"{key}:")]
        assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), key
    assert configmod.from_dict({"redaction": section}).redaction == configmod.Redaction()
