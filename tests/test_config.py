"""Configuration: every kind of bad input gets one line naming the key path."""

import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from siprecd import cli, config
from siprecd.config import EXIT_CONFIG
from siprecd.tls import make_self_signed

REPO = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")

# (name, YAML text, the exact line check-config must print)
BAD_CONFIGS = [
    ("port not a number", "sip:\n  tcp:\n    port: abc\n",
     "sip.tcp.port: expected an integer 1-65535, got 'abc'"),
    ("port out of range", "sip:\n  udp: {port: 70000}\n",
     "sip.udp.port: expected an integer 1-65535, got 70000"),
    ("port is a float", "api:\n  port: 8443.5\n",
     "api.port: expected an integer 1-65535, got 8443.5"),
    ("unknown top-level key", "stat_dir: /tmp/x\n",
     "stat_dir: unknown key (expected one of: api, asr, auto_start, cluster, export, live, "
     "logging, media, metrics, node, recordings, redaction, retention, sip, state_dir, storage, "
     "webhooks)"),
    ("unknown nested key", "sip:\n  tcp:\n    prot: 5070\n",
     "sip.tcp.prot: unknown key (expected one of: enabled, host, port)"),
    ("section is not a mapping", "sip: 5070\n",
     "sip: expected a mapping, got 5070"),
    ("boolean where a number goes", "asr:\n  threads: yes\n",
     "asr.threads: expected an integer 1-256, got True"),
    ("number where a boolean goes", "sip:\n  udp: {enabled: 1}\n",
     "sip.udp.enabled: expected true or false, got 1"),
    ("bad duration", "node:\n  shutdown_grace: 10 parsecs\n",
     "node.shutdown_grace: expected a duration between 0s and 3600s, got '10 parsecs'"),
    ("duration out of range", "asr:\n  endpoint_silence: 20s\n",
     "asr.endpoint_silence: expected a duration between 0.1s and 10s, got '20s'"),
    ("bad size", "sip:\n  max_message_size: lots\n",
     "sip.max_message_size: expected a size between 1024 and 16777216, got 'lots'"),
    ("value not in the choices", "logging:\n  level: loud\n",
     "logging.level: expected one of 'debug', 'info', 'warn', 'error', 'critical', got 'loud'"),
    ("bad list item", "media:\n  codecs: [PCMU, AMR]\n",
     "media.codecs[1]: expected one of 'PCMU', 'PCMA', 'G729', 'G722', 'opus', got 'AMR'"),
    ("empty list", "media:\n  codecs: []\n",
     "media.codecs: expected a non-empty list, got []"),
    ("odd RTP port", "media:\n  port_min: 20001\n",
     "media.port_min: expected an even port, got 20001"),
    ("port range too small", "media:\n  port_min: 20000\n  port_max: 20001\n",
     "media.port_max: expected a port above port_min + 2 (20003 or more), got 20001"),
    ("plain-HTTP webhook", "webhooks:\n  targets:\n    crm: {url: 'http://crm.example.com/hook'}\n",
     "webhooks.targets.crm.url: expected an https:// URL, got 'http://crm.example.com/hook'"),
    ("missing required key", "webhooks:\n  targets:\n    crm: {timeout: 5s}\n",
     "webhooks.targets.crm.url: missing required key (an https:// URL)"),
    ("environment variable not set",
     "storage:\n  backend: postgresql\n  postgresql: {dsn: '${SIPRECD_TEST_UNSET_DSN}'}\n",
     "storage.postgresql.dsn: environment variable SIPRECD_TEST_UNSET_DSN is not set"),
    ("postgresql without DSN", "storage:\n  backend: postgresql\n",
     "storage.postgresql.dsn: expected a DSN when storage.backend is postgresql"),
    ("TLS on without certificate", "sip:\n  tls: {enabled: true}\n",
     "sip.tls.certificate: expected certificate and private_key when TLS is enabled"),
    ("certificate without key", "api:\n  certificate: /etc/ssl/x.pem\n",
     "api.private_key: expected both certificate and private_key, or neither"),
    ("secret in header and query", "webhooks:\n  targets:\n    crm:\n      url: https://c.example\n"
     "      secret: {value: s, header: X-T, query_parameter: t}\n",
     "webhooks.targets.crm.secret: expected exactly one of header or query_parameter"),
    ("bad node id", "node:\n  id: 'node one'\n",
     "node.id: expected 1-64 letters, digits, '.', '_' or '-', got 'node one'"),
    ("bad export time", "export:\n  at: '25:00'\n",
     "export.at: expected a time HH:MM (UTC), got '25:00'"),
    ("bad remote ASR URL", "asr:\n  remote:\n    urls: ['http://asr:2700']\n",
     "asr.remote.urls[0]: expected a ws:// or wss:// URL, got 'http://asr:2700'"),
    ("non-string key", "webhooks:\n  targets:\n    1: {url: https://x.example}\n",
     "webhooks.targets: expected string keys, got 1"),
    ("top level is a list", "- sip\n- api\n",
     "(top level): expected a mapping, got ['sip', 'api']"),
    ("YAML syntax error", "sip:\n  tcp: {port: 5070\n",
     "{path}: line 3, column 1: expected ',' or '}', but got '<stream end>'"),
    ("duplicate key", "sip:\n  tcp: {port: 5070}\n  tcp: {port: 5071}\n",
     "{path}: line 3, column 3: duplicate key 'tcp'"),
    ("unknown storage backend", "storage:\n  backend: mongo\n",
     "storage.backend: unknown storage backend 'mongo'; available: postgresql, sqlite"),
    ("certificate file missing", "api:\n  certificate: missing.pem\n  private_key: missing.key\n",
     "api.certificate: cannot read {dir}/missing.pem: No such file or directory"),
    ("certificate file not PEM", "api:\n  certificate: notpem.txt\n  private_key: notpem.txt\n",
     "api.certificate: no PEM certificate found in {dir}/notpem.txt"),
]


@pytest.mark.parametrize("name,text,expected", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_check_config_names_the_key_path(tmp_path, capsys, name, text, expected, monkeypatch):
    monkeypatch.delenv("SIPRECD_TEST_UNSET_DSN", raising=False)
    (tmp_path / "notpem.txt").write_text("hello\n")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["check-config", "-c", str(path)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    expected = expected.replace("{path}", str(path)).replace("{dir}", str(tmp_path))
    assert err == "siprecd: " + expected + "\n"


def test_at_least_fifteen_kinds_of_bad_input():
    assert len(BAD_CONFIGS) >= 15


def test_missing_file(tmp_path, capsys):
    assert cli.main(["check-config", "-c", str(tmp_path / "nope.yaml")]) == EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"siprecd: cannot read config file {tmp_path / 'nope.yaml'}: No such file or directory\n"
    )


def test_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"sip:\n  user_agent: caf\xe9\n")
    assert cli.main(["check-config", "-c", str(path)]) == EXIT_CONFIG
    assert capsys.readouterr().err == f"siprecd: config file {path} is not UTF-8 text\n"


def test_shipped_config_is_valid(capsys):
    assert cli.main(["check-config", "-c", str(REPO / "etc" / "siprecd.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "SIP/UDP 0.0.0.0:5070" in out and "HTTPS API 0.0.0.0:8443" in out


def differences(a, b, path=""):
    """Key paths where two attrs instances (configs) differ."""
    if attrs.has(type(a)) and type(a) is type(b):
        found = []
        for field in attrs.fields(type(a)):
            if field.eq:
                found += differences(getattr(a, field.name), getattr(b, field.name),
                                     f"{path}.{field.name}" if path else field.name)
        return found
    return [] if a == b else [path]


# Keys where etc/siprecd.yaml deliberately shows something else than the
# default, and why. None: it shows every default (state_dir through an
# environment variable that `make run` sets; unset, it is the default).
DELIBERATE_DIFFERENCES = {}


def test_the_shipped_config_shows_the_defaults():
    shipped = config.load(REPO / "etc" / "siprecd.yaml", environ={})
    defaults = config.from_dict({})
    assert shipped.state_dir == Path("/var/lib/siprecd") == defaults.state_dir
    assert shipped.asr.models == {"en-us": "vosk-model-small-en-us-0.15"}
    assert sorted(differences(shipped, defaults)) == sorted(DELIBERATE_DIFFERENCES)


def test_the_comparison_sees_a_difference():
    assert differences(config.from_dict({"asr": {"threads": 3}, "state_dir": "/x"}),
                       config.from_dict({})) == ["state_dir", "asr.threads"]


def test_make_run_chooses_the_state_dir_through_the_environment(tmp_path):
    c = config.load(REPO / "etc" / "siprecd.yaml", environ={"SIPRECD_STATE_DIR": str(tmp_path)})
    assert c.state_dir == tmp_path
    assert c.in_state_dir(c.asr.models_dir) == tmp_path / "models"


def test_empty_file_gives_every_default(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    c = config.load(path)
    assert c == config.from_dict({})
    assert c.sip.udp.port == 5070 and c.sip.tcp.enabled and not c.sip.tls.enabled
    assert c.storage.backend == "sqlite"
    assert c.retention.transcripts == 7 * 86400
    assert c.api.port == 8443


def test_relative_paths_are_taken_from_the_config_folder(tmp_path):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "s.yaml"
    path.write_text("state_dir: ../state\nstorage:\n  sqlite: {path: db/s.sqlite}\n")
    c = config.load(path)
    assert c.state_dir == tmp_path / "state"
    assert c.in_state_dir(c.storage.sqlite.path) == tmp_path / "state" / "db" / "s.sqlite"


def test_units_and_dashes(tmp_path):
    c = config.from_dict(
        {"sip": {"max-message-size": "128KiB", "max_call_duration": "2h"},
         "asr": {"endpoint_silence": "750ms"}, "media": {"receive_buffer": 2097152}}
    )
    assert c.sip.max_message_size == 131072
    assert c.sip.max_call_duration == 7200
    assert c.asr.endpoint_silence == 0.75
    assert c.media.receive_buffer == 2 * 1024 * 1024


def test_secrets_from_the_environment_and_hidden_from_repr():
    env = {"SIPRECD_OAUTH_SECRET": "s3cr3t-value", "SIPRECD_DSN": "postgresql://u:pw@h/db"}
    c = config.from_dict(
        {
            "storage": {"backend": "postgresql", "postgresql": {"dsn": "${SIPRECD_DSN}"}},
            "webhooks": {"targets": {"crm": {
                "url": "https://crm.example/${SIPRECD_PATH:-hook}",
                "oauth2": {"token_url": "https://auth.example/token", "client_id": "id",
                           "client_secret": "${SIPRECD_OAUTH_SECRET}"},
                "secret": {"value": "$${literal}", "header": "X-Token"},
            }}},
        },
        environ=env,
    )
    target = c.webhooks.targets["crm"]
    assert target.oauth2.client_secret == "s3cr3t-value"
    assert target.url == "https://crm.example/hook"
    assert target.secret.value == "${literal}"
    assert c.storage.postgresql.dsn == "postgresql://u:pw@h/db"
    text = repr(c)
    assert "s3cr3t-value" not in text and "pw@h" not in text and "${literal}" not in text


def test_config_is_frozen():
    c = config.from_dict({})
    with pytest.raises(AttributeError):
        c.sip = None


def test_twistd_with_a_broken_config_exits_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sip:\n  tcp:\n    port: abc\n")
    proc = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "siprecd", "-c", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr == "siprecd: sip.tcp.port: expected an integer 1-65535, got 'abc'\n"
    assert "Traceback" not in proc.stdout


def test_check_config_console_script_exits_non_zero(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("logging: {format: xml}\n")
    proc = subprocess.run(
        [Path(sys.executable).parent / "siprecd", "check-config", "-c", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr == "siprecd: logging.format: expected one of 'text', 'json', got 'xml'\n"


def test_a_good_certificate_passes_the_file_checks(tmp_path, capsys):
    cert, key = make_self_signed("siprecd.test")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    path = tmp_path / "ok.yaml"
    path.write_text("api: {certificate: c.pem, private_key: k.pem}\n")
    assert cli.main(["check-config", "-c", str(path)]) == 0
    (tmp_path / "k.pem").write_bytes(make_self_signed("other")[1])
    assert cli.main(["check-config", "-c", str(path)]) == EXIT_CONFIG
    assert "api.private_key: the private key does not belong to the certificate" in capsys.readouterr().err
