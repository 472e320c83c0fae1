"""ASR backends found by name through the ``siprecd.asr`` entry points,
including a third-party package (the one in contrib/) installed for real."""

import configparser
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from siprecd import config as configmod
from siprecd.asr import available, backends, create_backend
from siprecd.asr.remote import RemoteBackend
from siprecd.asr.vosk import VoskBackend
from siprecd.interfaces import IASRBackend, IRecognizer
from siprecd.simulator.wav import tone
from siprecd.structure import ConfigError
from siprecd.testing.asr import feed

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "contrib" / "example-asr-backend"


def make_config(**asr):
    return configmod.from_dict({"asr": asr})


def test_the_built_in_backends_are_found_through_entry_points(tmp_path):
    assert {"vosk", "remote"} <= set(available())
    vosk = create_backend(make_config(models_dir=str(tmp_path), threads=3), reactor)
    assert isinstance(vosk, VoskBackend) and vosk.threads == 3
    assert vosk.model_path("EN-US") == tmp_path / "vosk-model-small-en-us-0.15"
    remote = create_backend(
        make_config(backend="remote", remote={"urls": ["ws://127.0.0.1:2700"]}), reactor)
    assert isinstance(remote, RemoteBackend) and remote.languages() == ["en-us"]
    for backend in (vosk, remote):
        verifyObject(IASRBackend, backend)
        assert not backend.ready


def test_an_unknown_backend_is_a_config_error_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError) as caught:
        create_backend(make_config(backend="whisper"), reactor)
    assert str(caught.value) == (
        "asr.backend: unknown ASR backend 'whisper'; available: " + ", ".join(available()))
    assert caught.value.key_path == "asr.backend"


def test_a_third_party_backend_is_found_once_installed(tmp_path, monkeypatch):
    # What `pip install` of a package declaring the entry points leaves on sys.path.
    site = tmp_path / "site"
    (site / "myasr-1.0.dist-info").mkdir(parents=True)
    (site / "myasr-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: myasr\nVersion: 1.0\n")
    (site / "myasr-1.0.dist-info" / "entry_points.txt").write_text(
        "[siprecd.asr]\nmyasr = myasr:factory\nbroken = myasr:not_a_backend\n"
        "missing = myasr_gone:factory\n")
    (site / "myasr.py").write_text(textwrap.dedent("""
        from siprecd.testing.asr import FakeAsrBackend

        def factory(config, reactor):
            return FakeAsrBackend(languages=config.asr.models)

        def not_a_backend(config, reactor):
            return object()
    """))
    monkeypatch.syspath_prepend(str(site))
    assert {"myasr", "broken", "missing"} <= set(available())
    backend = create_backend(make_config(backend="myasr"), reactor)
    assert type(backend).__name__ == "FakeAsrBackend" and backend.languages() == ["en-us"]
    with pytest.raises(ConfigError, match=r"^asr.backend: ASR backend 'broken' does not "
                                          r"implement IASRBackend"):
        create_backend(make_config(backend="broken"), reactor)
    with pytest.raises(ConfigError, match=r"^asr.backend: cannot load ASR backend 'missing': "
                                          r"No module named 'myasr_gone'"):
        create_backend(make_config(backend="missing"), reactor)


def test_the_entry_point_group_is_declared_and_documented():
    assert backends.GROUP == "siprecd.asr"
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    declared = setup["options.entry_points"]["siprecd.asr"].split()
    assert "vosk = siprecd.asr.vosk:VoskBackend.from_config" in " ".join(declared)
    assert "remote = siprecd.asr.remote:RemoteBackend.from_config" in " ".join(declared)
    readme = (REPO / "README.rst").read_text()
    assert "siprecd.asr" in readme and "contrib/example-asr-backend" in readme


def test_the_example_package_declares_its_backend_in_the_group():
    setup = configparser.ConfigParser()
    setup.read(EXAMPLE / "setup.cfg")
    assert setup["options.entry_points"]["siprecd.asr"].split() == [
        "energy", "=", "siprecd_example_asr:EnergyBackend.from_config"]


@pytest_twisted.ensureDeferred
async def test_the_example_package_installs_and_is_found_by_name(tmp_path, monkeypatch):
    # Built from a copy so the build leaves nothing in the source tree.
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
         "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=300)
    monkeypatch.syspath_prepend(str(target))
    assert "energy" in available()
    backend = create_backend(make_config(backend="energy", endpoint_silence="300ms"), reactor)
    verifyObject(IASRBackend, backend)
    await backend.start()
    recognizer = backend.new_recognizer("EN-US")
    verifyObject(IRecognizer, recognizer)
    silence = np.zeros(4000, dtype=np.int16)
    audio = np.concatenate([silence, tone(0.4, on=0.4), silence, tone(0.4, on=0.4), silence[:800]])
    results = await feed(recognizer, audio, chunk=160)
    assert [r.text for r in results] == ["[speech]", "[speech]"]
    assert [(r.start, r.end) for r in results] == [
        pytest.approx((0.5, 0.9)), pytest.approx((1.4, 1.8))]
    backend.stop()
