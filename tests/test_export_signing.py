"""Signed download links: accepted until they expire, refused (with a
distinct reason) when anything in them was changed; and the key file."""

import os
import stat
import threading

import pytest
from twisted.internet.task import Clock

from siprecd import config as configmod
from siprecd.export import signing
from siprecd.export.signing import KeyFileError, LinkRefused, Links, load_key, sign, verify

KEY = bytes(range(32))
PATH = ("/fileexporter/v1/download/utterances/version=1/format=jsonl/dt=2022-06-27/hr=02/"
        "part-0000.jsonl")
NOW = 1_656_300_000


def refused(path, params, key=KEY, now=NOW):
    with pytest.raises(LinkRefused) as e:
        verify(path, params, key, now)
    return e.value.reason


def test_a_valid_link_is_accepted_until_it_expires():
    params = sign(PATH, NOW + 3600, KEY)
    assert set(params) == {"expires", "signature"}
    assert params["expires"] == str(NOW + 3600) and len(params["signature"]) == 64
    assert verify(PATH, params, KEY, NOW) == NOW + 3600
    assert verify(PATH, params, KEY, NOW + 3599.9) == NOW + 3600
    assert refused(PATH, params, now=NOW + 3600) == signing.EXPIRED
    # As a web framework hands them over: bytes keys, lists of bytes.
    framework = {k.encode(): [v.encode()] for k, v in params.items()}
    assert verify(PATH, framework, KEY, NOW) == NOW + 3600


def test_a_changed_path_is_refused():
    params = sign(PATH, NOW + 3600, KEY)
    for other in (PATH.replace("hr=02", "hr=03"), PATH.replace("jsonl", "csv"), PATH + "x",
                  PATH[:-1], "/" + PATH, PATH.upper(), PATH + "\x00"):
        assert refused(other, params) == signing.PATH


def test_a_changed_expiry_is_refused_even_when_it_would_still_be_valid():
    params = sign(PATH, NOW + 60, KEY)
    for expires in (NOW + 86400, NOW + 61, NOW + 59, 10**11):
        assert refused(PATH, {**params, "expires": str(expires)}) == signing.EXPIRY
    # One spelling per time: a leading zero is not another way to say it.
    assert refused(PATH, {**params, "expires": "0" + params["expires"]}) == signing.MALFORMED


def test_an_expired_link_is_refused_with_its_time():
    params = sign(PATH, NOW - 1, KEY)
    with pytest.raises(LinkRefused) as e:
        verify(PATH, params, KEY, NOW)
    assert e.value.reason == signing.EXPIRED
    assert str(e.value) == "the link expired at 2022-06-27T03:19:59Z"


def test_forged_signatures_never_pass_and_are_not_told_apart_from_a_wrong_path():
    params = sign(PATH, NOW + 3600, KEY)
    assert refused(PATH, params, key=bytes(32)) == signing.PATH
    flipped = params["signature"][:-1] + ("A" if params["signature"][-1] != "A" else "B")
    assert refused(PATH, {**params, "signature": flipped}) == signing.EXPIRY
    assert refused(PATH, {**params, "signature": "A" * 64}) == signing.PATH
    # A forged link in the past says "path", never "expired": the
    # signature is checked before the time.
    past = sign(PATH, NOW - 10, KEY)
    assert refused(PATH, {**past, "signature": "A" * 64}) == signing.PATH


@pytest.mark.parametrize("params, reason", [
    ({}, signing.MISSING),
    ({"expires": str(NOW + 5)}, signing.MISSING),
    ({"signature": "A" * 64}, signing.MISSING),
    ({"expires": "", "signature": "A" * 64}, signing.MISSING),
    ({"expires": "soon", "signature": "A" * 64}, signing.MALFORMED),
    ({"expires": "-5", "signature": "A" * 64}, signing.MALFORMED),
    ({"expires": "1e9", "signature": "A" * 64}, signing.MALFORMED),
    ({"expires": "١٢٣", "signature": "A" * 64}, signing.MALFORMED),
    ({"expires": str(NOW + 5), "signature": "A" * 63}, signing.MALFORMED),
    ({"expires": str(NOW + 5), "signature": "+" * 64}, signing.MALFORMED),
    ({"expires": [b"1", b"2"], "signature": "A" * 64}, signing.MALFORMED),
    ({"expires": 12, "signature": "A" * 64}, signing.MALFORMED),
    ({"expires": b"\xff", "signature": "A" * 64}, signing.MALFORMED),
])
def test_missing_and_malformed_parameters(params, reason):
    assert refused(PATH, params) == reason


def test_signing_refuses_what_it_cannot_sign_safely():
    with pytest.raises(ValueError):
        sign(PATH, NOW, b"short key")
    with pytest.raises(ValueError):
        sign(PATH + "\x00", NOW, KEY)
    with pytest.raises(ValueError):
        sign(PATH, -1, KEY)


def test_the_key_file_is_made_once_private_and_reused(tmp_path):
    path = tmp_path / "state" / "export-link.key"
    key = load_key(path)
    assert len(key) == 64 and bytes.fromhex(key.decode())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == key
    assert os.listdir(path.parent) == ["export-link.key"]  # no temporary left


def test_processes_making_the_key_at_once_agree_on_one(tmp_path):
    path = tmp_path / "export-link.key"
    keys, barrier = [], threading.Barrier(8)

    def make():
        barrier.wait()
        keys.append(load_key(path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert os.listdir(tmp_path) == ["export-link.key"]


def test_unsafe_or_unusable_key_files_are_refused(tmp_path):
    path = tmp_path / "k"
    path.write_text("0" * 64)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="accessible by others.*chmod 600"):
        load_key(path)
    os.chmod(path, 0o600)
    assert load_key(path) == b"0" * 64
    path.write_text("too short\n")
    with pytest.raises(KeyFileError, match="fewer than 32 bytes"):
        load_key(path)
    with pytest.raises(KeyFileError, match="no link key file"):
        load_key(tmp_path / "absent", create=False)
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(tmp_path / "dir")


def test_links_from_config_use_the_configured_lifetime_and_clock(tmp_path):
    config = configmod.from_dict({"state_dir": str(tmp_path / "state"),
                                  "export": {"link_lifetime": "10m"}})
    clock = Clock()
    clock.advance(NOW)
    links = Links.from_config(config, clock)
    assert (tmp_path / "state" / "export-link.key").exists()
    params = links.sign(PATH)
    assert params["expires"] == str(NOW + 600)
    clock.advance(599)
    assert links.verify(PATH, params) == NOW + 600
    clock.advance(1)
    with pytest.raises(LinkRefused) as e:
        links.verify(PATH, params)
    assert e.value.reason == signing.EXPIRED
    # Another node with the same key file honours the link; another key does not.
    assert Links.from_config(config, Clock()).verify(PATH, params) == NOW + 600
    assert refused(PATH, params, key=os.urandom(32), now=0) == signing.PATH
