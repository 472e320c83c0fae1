"""``siprecd check-config`` checks what it can without starting the node:
one test per mistake, each told in one line with its key path. Errors
make exit status 78 (on standard error); warnings and notes come after OK
(exit status 0), for what the daemon copes with."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.pki import Authority
from siprecd import cli
from siprecd.config import EXIT_CONFIG
from siprecd.media import codecs
from siprecd.testing.asr import ko_model_dir
from siprecd.tls import make_self_signed

REPO = Path(__file__).resolve().parent.parent
ENGLISH = "vosk-model-small-en-us-0.15"


def check(tmp_path, capsys, data):
    """check-config on *data* (dict) -> (status, stdout lines, stderr lines)."""
    path = tmp_path / "siprecd.yaml"
    data.setdefault("state_dir", str(tmp_path / "state"))
    data.setdefault("asr", {}).setdefault("models", {"ko": str(ko_model_dir())})
    path.write_text(yaml.safe_dump(data))
    status = cli.main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def pair(directory, name, common_name="siprecd.test"):
    cert, key = make_self_signed(common_name)
    (directory / f"{name}.pem").write_bytes(cert)
    (directory / f"{name}.key").write_bytes(key)
    return str(directory / f"{name}.pem"), str(directory / f"{name}.key")


def mismatched(directory, name):
    cert, _ = pair(directory, name)
    _, other_key = pair(directory, f"{name}-other", "someone.else")
    return cert, other_key


def notes(out):
    return out[1:]


def test_a_good_config_is_ok_with_nothing_to_say(tmp_path, capsys):
    (tmp_path / "state").mkdir()
    status, out, err = check(tmp_path, capsys, {})
    assert (status, err) == (0, [])
    assert out == [f"{tmp_path / 'siprecd.yaml'}: OK (SIP/UDP 0.0.0.0:5070; SIP/TCP 0.0.0.0:5070; "
                   f"HTTPS API 0.0.0.0:8443; state in {tmp_path / 'state'})"]


# Models ---------------------------------------------------------------------------------


def test_a_model_folder_that_does_not_exist_without_download(tmp_path, capsys):
    status, out, err = check(tmp_path, capsys, {"asr": {"models": {"en-us": ENGLISH},
                                                        "download": False}})
    path = tmp_path / "state" / "models" / ENGLISH
    assert (status, out) == (EXIT_CONFIG, [])
    assert err == [f"siprecd: asr.models.en-us: no Vosk model at {path}; place the unpacked "
                   f"model folder there (from https://alphacephei.com/vosk/models/{ENGLISH}.zip), "
                   f"or set asr.download: true so siprecd fetches it into "
                   f"{tmp_path / 'state' / 'models'} at start"]


def test_a_model_path_that_does_not_exist_cannot_be_fetched(tmp_path, capsys):
    status, _, err = check(tmp_path, capsys, {"asr": {"models": {"ko": str(tmp_path / "ko")}}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: asr.models.ko: no Vosk model at {tmp_path / 'ko'}; place an "
                   f"unpacked Vosk model folder there (models: https://alphacephei.com/vosk/"
                   f"models), or name a model (e.g. {ENGLISH}) with asr.download: true so "
                   f"siprecd fetches it into {tmp_path / 'state' / 'models'}"]


def test_a_model_folder_that_is_not_complete(tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(ko_model_dir() / "conf", partial / "conf")
    status, _, err = check(tmp_path, capsys, {"asr": {"models": {"ko": str(partial)}}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: asr.models.ko: {partial} is not a complete Vosk model (it has no "
                   f"am/final.mdl, graph/HCLG.fst (or graph/HCLr.fst and graph/Gr.fst)); unpack "
                   f"the whole model there (models: https://alphacephei.com/vosk/models)"]


def test_a_model_to_be_fetched_at_first_start_is_a_note(tmp_path, capsys):
    (tmp_path / "state").mkdir()
    status, out, err = check(tmp_path, capsys, {"asr": {"models": {"en-us": ENGLISH}}})
    assert (status, err) == (0, [])
    assert notes(out) == [
        f"note: asr.models.en-us: no model at {tmp_path / 'state' / 'models' / ENGLISH} yet; "
        f"siprecd fetches {ENGLISH} from https://alphacephei.com/vosk/models/{ENGLISH}.zip at "
        f"first start (asr.download), or place the unpacked model folder there"]


def test_g729_listed_without_libbcg729_is_a_warning(tmp_path, capsys):
    (tmp_path / "state").mkdir()
    codecs.load_g729_library(["libbcg729-is-not-here.so"])
    try:
        status, out, err = check(tmp_path, capsys, {})
    finally:
        codecs.load_g729_library()
    assert (status, err) == (0, [])
    assert notes(out) == [
        "warning: media.codecs: G729 is listed but cannot be offered: G.729 needs libbcg729, "
        "which could not be loaded (libbcg729-is-not-here.so: cannot open shared object file: "
        "No such file or directory): install the Debian package libbcg729-0."]
    assert codecs.g729_available()
    status, out, _ = check(tmp_path, capsys, {"media": {"codecs": ["PCMU"]}})
    assert (status, notes(out)) == (0, [])


# TLS material -------------------------------------------------------------------------------


def test_the_api_key_does_not_match_its_certificate(tmp_path, capsys):
    cert, key = mismatched(tmp_path, "api")
    status, _, err = check(tmp_path, capsys, {"api": {"certificate": cert, "private_key": key}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: api.private_key: the private key does not belong to the "
                   f"certificate in {cert}"]


def test_the_sip_tls_key_does_not_match_its_certificate(tmp_path, capsys):
    cert, key = mismatched(tmp_path, "sip")
    status, _, err = check(tmp_path, capsys, {"sip": {"tls": {
        "enabled": True, "certificate": cert, "private_key": key}}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: sip.tls.private_key: the private key does not belong to the "
                   f"certificate in {cert}"]


def test_the_metrics_key_does_not_match_its_certificate(tmp_path, capsys):
    cert, key = mismatched(tmp_path, "metrics")
    status, _, err = check(tmp_path, capsys, {"metrics": {
        "enabled": True, "certificate": cert, "private_key": key}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: metrics.private_key: the private key does not belong to the "
                   f"certificate in {cert}"]


def test_a_key_file_that_cannot_be_read(tmp_path, capsys):
    cert, _ = pair(tmp_path, "api")
    status, _, err = check(tmp_path, capsys, {"api": {
        "certificate": cert, "private_key": str(tmp_path)}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: api.private_key: cannot read {tmp_path}: Is a directory"]


def test_a_webhook_ca_bundle_that_does_not_parse(tmp_path, capsys):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n"
                                     "-----END CERTIFICATE-----\n")
    status, _, err = check(tmp_path, capsys, {"webhooks": {"targets": {"crm": {
        "url": "https://crm.example/hook", "ca_bundle": str(tmp_path / "ca.pem")}}}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: webhooks.targets.crm.ca_bundle: no PEM certificate found in "
                   f"{tmp_path / 'ca.pem'}"]


def test_a_webhook_client_key_that_does_not_match(tmp_path, capsys):
    authority = Authority("webhook CA", tmp_path / "pki")
    client = authority.issue_client()
    other = authority.issue_client(name="other")
    status, _, err = check(tmp_path, capsys, {"webhooks": {"targets": {"crm": {
        "url": "https://crm.example/hook", "ca_bundle": str(authority.certificate_path),
        "client_certificate": str(client.certificate_path),
        "client_key": str(other.key_path)}}}})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: webhooks.targets.crm.client_key: the key does not belong to the "
                   f"certificate in {client.certificate_path}"]


# The state directory -------------------------------------------------------------------------


def test_a_state_dir_to_be_made_is_a_note_and_is_not_made(tmp_path, capsys):
    status, out, err = check(tmp_path, capsys, {"state_dir": str(tmp_path / "new" / "state")})
    assert (status, err) == (0, [])
    assert notes(out) == [f"note: state_dir: {tmp_path / 'new' / 'state'} does not exist yet; "
                          "siprecd will create it (mode 0700) at start"]
    assert not (tmp_path / "new").exists()


def test_a_state_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "state").write_text("")
    status, _, err = check(tmp_path, capsys, {})
    assert status == EXIT_CONFIG
    assert err == [f"siprecd: state_dir: {tmp_path / 'state'} is not a folder"]


def unprivileged(args):
    """*args* as a user who is not root (file permissions count for root
    only through capabilities, which a user namespace takes away)."""
    if os.geteuid() == 0:
        return ["unshare", "--user", "--map-user=65534", "--map-group=65534", *args]
    return args


def check_unprivileged(tmp_path, data):
    path = tmp_path / "siprecd.yaml"
    data.setdefault("asr", {"models": {"ko": str(ko_model_dir())}})
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(unprivileged([sys.executable, "-m", "siprecd.cli", "check-config",
                                        "-c", str(path)]),
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr.splitlines()


def test_a_state_dir_that_is_not_writable(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o555)
    status, err = check_unprivileged(tmp_path, {"state_dir": str(state)})
    assert status == EXIT_CONFIG
    assert len(err) == 1 and err[0].startswith(
        f"siprecd: state_dir: {state} is not writable by this user (")
    assert err[0].endswith("); siprecd keeps its database, certificates and exports there")


def test_a_state_dir_that_cannot_be_made(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    state = tmp_path / "locked" / "siprecd"
    status, err = check_unprivileged(tmp_path, {"state_dir": str(state)})
    assert status == EXIT_CONFIG
    assert len(err) == 1 and err[0].startswith(
        f"siprecd: state_dir: {state} does not exist and cannot be created: "
        f"{tmp_path / 'locked'} is not writable by this user (")
    assert not state.exists()


# Optional features without their extra ------------------------------------------------------


@pytest.mark.parametrize("hidden, section, expected", [
    ("psycopg", {"storage": {"backend": "postgresql", "postgresql": {"dsn": "host=db"}}},
     "storage.backend: storage backend 'postgresql' needs the psycopg package, which is not "
     "installed; install it with: pip install 'siprecd[postgresql]'"),
    ("autobahn", {"asr": {"backend": "remote", "remote": {"urls": ["ws://asr:2700"]}}},
     "asr.backend: ASR backend 'remote' needs the autobahn package, which is not installed; "
     "install it with: pip install 'siprecd[remote-asr]'"),
    ("prometheus_client", {"metrics": {"enabled": True}},
     "metrics.enabled: Prometheus metrics needs the prometheus_client package, which cannot be "
     "imported (No module named 'prometheus_client'); install it with: "
     "pip install 'siprecd[metrics]'"),
], ids=["postgresql", "remote-asr", "metrics"])
def test_a_feature_whose_extra_is_not_installed(tmp_path, hidden, section, expected):
    path = tmp_path / "siprecd.yaml"
    section.setdefault("asr", {}).setdefault("models", {"ko": str(ko_model_dir())})
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), **section}))
    for program in (["siprecd", "check-config", "-c", str(path)],
                    ["twistd", "-n", "--pidfile=", "siprecd", "-c", str(path)]):
        proc = subprocess.run([sys.executable, "-m", "harness.without", hidden, "--", *program],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == EXIT_CONFIG, proc.stderr
        assert proc.stderr == f"siprecd: {expected}\n"
    assert not (tmp_path / "state").exists()


def test_every_mistake_is_told_not_only_the_first(tmp_path, capsys):
    cert, key = mismatched(tmp_path, "api")
    (tmp_path / "state").write_text("")
    status, out, err = check(tmp_path, capsys, {
        "api": {"certificate": cert, "private_key": key},
        "asr": {"models": {"en-us": ENGLISH, "ko": str(tmp_path / "nowhere")}},
        "webhooks": {"targets": {"a": {"url": "https://a.example", "ca_bundle": "missing.pem"}}},
    })
    assert (status, out) == (EXIT_CONFIG, [])
    assert [line.split(":", 2)[1].strip() for line in err] == [
        "webhooks.targets.a.ca_bundle", "api.private_key", "state_dir", "asr.models.ko"]
