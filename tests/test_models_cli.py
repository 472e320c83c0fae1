"""``siprecd models list|fetch|verify``: against a Vosk-style model host on
loopback (harness.model_server) and the real Korean model."""

import json

import yaml

from harness.model_server import ModelHost, publish
from siprecd import cli
from siprecd.testing.asr import ko_model_dir

NAME = "vosk-model-small-xx-0.1"


def fake_model(folder):
    for name in ("am/final.mdl", "conf/mfcc.conf", "conf/model.conf", "graph/HCLG.fst"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"not a model")
    return folder


def write(tmp_path, **asr):
    path = tmp_path / "siprecd.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "asr": asr}))
    return str(path)


def run(capsys, *args):
    status = cli.main(["models", *args])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def test_list_says_where_each_model_is_and_whether_it_is_there(tmp_path, capsys):
    config = write(tmp_path, models={"ko": str(ko_model_dir()), "en-us": NAME})
    models = tmp_path / "state" / "models"
    status, out, err = run(capsys, "list", "-c", config)
    assert (status, err) == (0, [])
    assert out == [f"en-us  {models / NAME}  missing: fetched at start (asr.download)",
                   f"ko  {ko_model_dir()}  present"]
    status, out, _ = run(capsys, "list", "-c", config, "--json")
    assert [json.loads(line) for line in out] == [
        {"language": "en-us", "model": NAME, "path": str(models / NAME), "state": "missing",
         "fetchedAtStart": True},
        {"language": "ko", "model": str(ko_model_dir()), "path": str(ko_model_dir()),
         "state": "present", "fetchedAtStart": False}]


def test_fetch_brings_the_missing_model_with_progress(tmp_path, capsys):
    publish(fake_model(tmp_path / "source"), NAME, tmp_path / "published")
    with ModelHost(tmp_path / "published") as host:
        config = write(tmp_path, models={"xx": NAME}, download=False, download_url=host.url)
        status, out, err = run(capsys, "fetch", "-c", config)
        assert (status, err) == (0, [])
        target = tmp_path / "state" / "models" / NAME
        assert out[0] == f"xx: fetching {NAME} from {host.url}{NAME}.zip into {target.parent}"
        assert out[1].endswith("(0%)") and out[-2].endswith("(100%)")
        assert out[-1] == f"xx: {target} is there"
        status, out, _ = run(capsys, "fetch", "-c", config)
        assert (status, out) == (0, [f"xx: {target} is there"])
        assert host.requests == ["/model-list.json", f"/{NAME}.zip"]


def test_fetch_without_a_host_says_why_in_one_line(tmp_path, capsys):
    with ModelHost(tmp_path) as host:
        url = host.url
    config = write(tmp_path, models={"xx": NAME}, download_url=url)
    status, _, err = run(capsys, "fetch", "-c", config)
    assert status == 1
    assert err == [f"siprecd: asr.models.xx: cannot fetch {NAME}: cannot read "
                   f"{url}model-list.json: Connection refused"]
    status, _, err = run(capsys, "fetch", "-c", config, "--language", "fr")
    assert (status, err) == (1, ["siprecd: not in asr.models: fr (configured: xx)"])


def test_verify_loads_each_model_with_vosk(tmp_path, capsys):
    junk = fake_model(tmp_path / "junk")
    config = write(tmp_path, models={"ko": str(ko_model_dir()), "xx": str(junk)})
    status, out, err = run(capsys, "verify", "-c", config, "-l", "ko")
    assert (status, out, err) == (0, [f"ko: {ko_model_dir()} loads"], [])
    status, out, err = run(capsys, "verify", "-c", config, "-l", "xx")
    assert (status, out) == (1, [])
    assert err == [f"siprecd: asr.models.xx: Vosk cannot load {junk} as a model"]
