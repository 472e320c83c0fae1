"""The File Exporter catalogue: listings, both value styles, and strict
refusal of anything that is not a value of its field."""

import os

import pytest

from siprecd import config as configmod
from siprecd.export.catalogue import Catalogue, CatalogueError, InvalidValue, NotFound
from siprecd.export.layout import day_dir, hour_dir, part_name

F, V = "utterances", "1"


def make_file(root, fmt, day, hour, text="x\n", number=0):
    folder = hour_dir(root, F, V, fmt, day, hour)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / part_name(number, fmt)
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "exports"
    for day, hours in (("2022-06-27", (2, 0, 23)), ("2022-06-26", (5,)), ("2022-07-01", (0,))):
        for hour in hours:
            make_file(root, "jsonl", day, hour, text=f'{{"day": "{day}", "hour": {hour}}}\n')
    make_file(root, "csv", "2022-06-27", 2, text="a,b\r\n")
    # Things that are not ours, or not (yet) files of the feed.
    fmt = root / F / "version=1" / "format=jsonl"
    (fmt / ".staging-dt=2022-06-28-abcdef012345").mkdir()
    (fmt / "dt=2022-13-01").mkdir()
    (fmt / "notes.txt").write_text("hello")
    (fmt / "dt=2022-06-27" / "hr=24").mkdir()
    (fmt / "dt=2022-06-27" / "hr=07").mkdir()  # empty: no interval
    (fmt / "dt=2022-06-27" / "hr=02" / "part-0000.jsonl.tmp").write_text("half")
    (fmt / "dt=2022-06-27" / "hr=02" / "part-0000.csv").write_text("wrong format")
    return root


@pytest.fixture
def cat(root):
    return Catalogue(root)


def test_listings(cat):
    assert cat.feeds() == ["utterances"]
    assert cat.versions("utterances") == ["1"]
    assert cat.formats("utterances", "1") == ["jsonl", "csv"]
    assert cat.dates(F, V, "jsonl") == ["2022-06-26", "2022-06-27", "2022-07-01"]
    assert cat.dates(F, V, "csv") == ["2022-06-27"]
    assert cat.intervals(F, V, "jsonl", "2022-06-27") == ["hr=00", "hr=02", "hr=23"]
    assert cat.files(F, V, "jsonl", "2022-06-27", "hr=02") == ["part-0000.jsonl"]
    assert cat.files(F, V, "jsonl", "2022-06-27") == [
        "hr=00/part-0000.jsonl", "hr=02/part-0000.jsonl", "hr=23/part-0000.jsonl"]


def test_plain_and_partition_values_are_the_same(cat):
    for version in ("1", "version=1", 1):
        for fmt in ("jsonl", "format=jsonl"):
            assert cat.formats(F, version) == ["jsonl", "csv"]
            for date in ("2022-06-27", "dt=2022-06-27"):
                assert cat.intervals(F, version, fmt, date) == ["hr=00", "hr=02", "hr=23"]
                for interval in ("02", "hr=02"):
                    assert cat.files(F, version, fmt, date, interval) == ["part-0000.jsonl"]
                    found = cat.resolve(F, version, fmt, date, interval, "part-0000.jsonl")
                    assert found.relative == \
                        "utterances/version=1/format=jsonl/dt=2022-06-27/hr=02/part-0000.jsonl"
                    assert found.path.read_text() == '{"day": "2022-06-27", "hour": 2}\n'


def test_resolve_gives_the_file_with_its_size_and_media_type(cat, root):
    f = cat.resolve(F, V, "csv", "2022-06-27", None, "hr=02/part-0000.csv")
    assert (f.name, f.size, f.media_type) == (
        "part-0000.csv", 5, "text/csv; charset=utf-8; header=present")
    assert f.path == root / F / "version=1/format=csv/dt=2022-06-27/hr=02/part-0000.csv"
    # A name listed across the whole date resolves, with or without the interval.
    for name in cat.files(F, V, "jsonl", "2022-06-27"):
        assert cat.resolve(F, V, "jsonl", "2022-06-27", None, name).size > 0
        assert cat.resolve(F, V, "jsonl", "2022-06-27", name[:5], name).size > 0
    assert cat.resolve_relative(f.relative) == f


@pytest.mark.parametrize("field, call", [
    ("feed", lambda c: c.versions("transcripts")),
    ("version", lambda c: c.formats(F, "2")),
    ("format", lambda c: c.dates(F, V, "parquet")),
    ("date", lambda c: c.intervals(F, V, "jsonl", "2022-06-28")),
    ("date", lambda c: c.files(F, V, "csv", "2022-06-26")),
    ("interval", lambda c: c.files(F, V, "jsonl", "2022-06-27", "hr=07")),
    ("interval", lambda c: c.files(F, V, "jsonl", "2022-06-27", "03")),
    ("fileName", lambda c: c.resolve(F, V, "jsonl", "2022-06-27", "02", "part-0001.jsonl")),
    ("fileName", lambda c: c.resolve(F, V, "jsonl", "2022-06-27", "07", "part-0000.jsonl")),
])
def test_well_formed_values_naming_nothing_are_not_found(cat, field, call):
    with pytest.raises(NotFound) as e:
        call(cat)
    assert e.value.field == field and e.value.status == 404
    assert isinstance(e.value, CatalogueError) and str(e.value)


TRAVERSALS = [
    "..", "../..", "../../etc/passwd", "/etc/passwd", "dt=../../..", "hr=../..",
    "..\\..\\windows", "2022-06-27/../../..", "%2e%2e%2f", "x\x00", "\x00", "hr=02/..",
    "dt=2022-06-27/hr=02", "./1",
]


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_traversal_attempts_are_invalid_in_every_field(cat, bad):
    date, good = "2022-06-27", "part-0000.jsonl"
    calls = {
        "feed": lambda: cat.versions(bad),
        "version": lambda: cat.formats(F, bad),
        "format": lambda: cat.dates(F, V, bad),
        "date": lambda: cat.intervals(F, V, "jsonl", bad),
        "interval": lambda: cat.files(F, V, "jsonl", date, bad),
        "fileName": lambda: cat.resolve(F, V, "jsonl", date, "02", bad),
    }
    for field, call in calls.items():
        with pytest.raises(InvalidValue) as e:
            call()
        assert e.value.field == field and e.value.status == 400
        assert "\x00" not in str(e.value)
    assert cat.resolve(F, V, "jsonl", date, "02", good).size > 0
    with pytest.raises(InvalidValue):
        cat.resolve_relative(f"utterances/version=1/format=jsonl/dt={date}/hr=02/{bad}")
    with pytest.raises(InvalidValue):
        cat.resolve_relative(bad)


@pytest.mark.parametrize("field, call", [
    ("feed", lambda c: c.versions(None)),
    ("feed", lambda c: c.versions("")),
    ("feed", lambda c: c.versions(["utterances"])),
    ("version", lambda c: c.formats(F, "01")),
    ("version", lambda c: c.formats(F, True)),
    ("version", lambda c: c.formats(F, "version=version=1")),
    ("version", lambda c: c.formats(F, "dt=1")),
    ("format", lambda c: c.dates(F, V, "JSONL")),
    ("format", lambda c: c.dates(F, V, "dt=jsonl")),
    ("date", lambda c: c.intervals(F, V, "jsonl", "2022-6-27")),
    ("date", lambda c: c.intervals(F, V, "jsonl", "20220627")),
    ("date", lambda c: c.intervals(F, V, "jsonl", "2022-02-30")),
    ("date", lambda c: c.intervals(F, V, "jsonl", "2022-06-27\n")),
    ("date", lambda c: c.intervals(F, V, "jsonl", "٢٠٢٢-٠٦-٢٧")),  # Arabic-Indic digits
    ("date", lambda c: c.intervals(F, V, "jsonl", "hr=2022-06-27")),
    ("interval", lambda c: c.files(F, V, "jsonl", "2022-06-27", "2")),
    ("interval", lambda c: c.files(F, V, "jsonl", "2022-06-27", "hr=24")),
    ("interval", lambda c: c.files(F, V, "jsonl", "2022-06-27", "hr=٠٢")),
    ("interval", lambda c: c.files(F, V, "jsonl", "2022-06-27", 2)),
    ("fileName", lambda c: c.resolve(F, V, "jsonl", "2022-06-27", "02", "part-0000.csv")),
    ("fileName", lambda c: c.resolve(F, V, "jsonl", "2022-06-27", "02",
                                     "part-0000.jsonl.tmp")),
    ("fileName", lambda c: c.resolve(F, V, "jsonl", "2022-06-27", "02",
                                     "hr=05/part-0000.jsonl")),
    ("interval", lambda c: c.resolve(F, V, "jsonl", "2022-06-27", None, "part-0000.jsonl")),
])
def test_malformed_and_contradictory_values_are_invalid(cat, field, call):
    with pytest.raises(InvalidValue) as e:
        call(cat)
    assert e.value.field == field


def test_a_long_value_is_shortened_in_the_message(cat):
    with pytest.raises(InvalidValue) as e:
        cat.versions("a" * 10_000 + "/..")
    assert len(str(e.value)) < 200


def test_symbolic_links_never_lead_out_of_the_export_directory(cat, root, tmp_path):
    secret = tmp_path / "secret"
    (secret / "hr=02").mkdir(parents=True)
    (secret / "hr=02" / "part-0000.jsonl").write_text("not yours")
    os.symlink(secret, day_dir(root, F, V, "jsonl", "2022-08-01"))
    os.symlink(secret / "hr=02", day_dir(root, F, V, "jsonl", "2022-06-27") / "hr=11")
    os.symlink(secret / "hr=02" / "part-0000.jsonl",
               hour_dir(root, F, V, "jsonl", "2022-06-27", 0) / "part-0001.jsonl")
    assert "2022-08-01" not in cat.dates(F, V, "jsonl")
    assert cat.intervals(F, V, "jsonl", "2022-06-27") == ["hr=00", "hr=02", "hr=23"]
    assert cat.files(F, V, "jsonl", "2022-06-27", "00") == ["part-0000.jsonl"]
    for date, interval, name in (("2022-08-01", "02", "part-0000.jsonl"),
                                 ("2022-06-27", "11", "part-0000.jsonl"),
                                 ("2022-06-27", "00", "part-0001.jsonl")):
        with pytest.raises(NotFound):
            cat.resolve(F, V, "jsonl", date, interval, name)


def test_a_missing_export_directory_lists_no_dates(tmp_path):
    assert Catalogue(tmp_path / "nothing-yet").dates(F, V, "jsonl") == []


def test_from_config_serves_the_configured_formats_from_the_state_dir(tmp_path):
    config = configmod.from_dict({"state_dir": str(tmp_path / "state"),
                                  "export": {"directory": "feeds", "formats": ["csv"]}})
    cat = Catalogue.from_config(config)
    assert cat.directory == tmp_path / "state" / "feeds"
    assert cat.formats(F, V) == ["csv"]
    with pytest.raises(NotFound):
        cat.dates(F, V, "jsonl")
