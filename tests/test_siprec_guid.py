"""Call identifiers: UCID and Cisco GUID normalisation, candidates, and the configured order."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.config import Sip
from siprecd.simulator.samples import FLAVOURS, sample_invite
from siprecd.siprec.guid import (
    SOURCES,
    CallIdentifier,
    avaya_uui_to_ucid,
    choose_guid,
    cisco_guid,
    find_identifiers,
    normalise_ucid,
)
from siprecd.siprec.metadata import RecordingMetadata, parse_metadata
from siprecd.siprec.multipart import find_siprec_parts, split_body

FIXTURES = Path(__file__).parent / "fixtures" / "siprec"

SPEC_UCID = "00002542391662063156"


class HeadersDouble:
    """Test double for the SIP layer's Headers: get_all() with case-insensitive names."""

    def __init__(self, *pairs):
        self.pairs = pairs

    def get_all(self, name):
        return [value for key, value in self.pairs if key.lower() == name.lower()]


# -- Avaya UCID -------------------------------------------------------------------------


def test_spec_example():
    assert avaya_uui_to_ucid("00FA080002D3DF63111234") == SPEC_UCID


@pytest.mark.parametrize("uui", [
    "00FA080002D3DF63111234;encoding=hex",
    "00fa080002d3df63111234;encoding=hex",
    "  00FA080002D3DF63111234 ; encoding=hex ; purpose=isdn-uui",
    '"00FA080002D3DF63111234";encoding=hex',
    "FA080002D3DF63111234",                              # AudioCodes drops the 00
    "00C803414243FA080002D3DF63111234",                  # a user-data IE before it
    "00FA080002D3DF63111234C8054142434445",              # and one after it
])
def test_ucid_in_user_to_user_forms(uui):
    assert avaya_uui_to_ucid(uui) == SPEC_UCID


def test_ucid_found_by_search_when_ies_do_not_walk():
    # A truncated trailing IE: the walk fails, the FA08 search still finds it.
    assert avaya_uui_to_ucid("00FA080002D3DF63111234C8FF41") == SPEC_UCID


def test_ucid_digits_are_padded():
    assert avaya_uui_to_ucid("00FA08000100020000000A") == "00001000020000000010"
    assert avaya_uui_to_ucid("00FA08FFFFFFFFFFFFFFFF") == "65535655354294967295"


@pytest.mark.parametrize("uui", [
    "", "00FA08", "00FA080002D3DF631112", "00FA080002D3DF6311123", "not hex at all!!!!!!!!",
    "00C8034142434445464748494A4B4C", "3C3F786D6C2076657273696F6E3D22", None, 1234,
])
def test_no_ucid(uui):
    assert avaya_uui_to_ucid(uui) is None


@pytest.mark.parametrize("value, expected", [
    (SPEC_UCID, SPEC_UCID),
    (f" {SPEC_UCID} ", SPEC_UCID),
    ("00FA080002D3DF63111234;encoding=hex", SPEC_UCID),
    ("FA080002D3DF63111234", SPEC_UCID),
    ("0002D3DF63111234", None),           # bare payload: not recognisably a UCID
    ("1234567890123456789", None),        # 19 digits
    ("\u0661" * 20, None),                # non-ASCII digits
    ("some-call-ref", None),
])
def test_normalise_ucid(value, expected):
    assert normalise_ucid(value) == expected


# -- Cisco GUID --------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("1234-5-678901-2", "0000001234-0000000005-0000678901-0000000002"),
    ("3735928559-305419896-2882400001-42", "3735928559-0305419896-2882400001-0000000042"),
    (" 0000000001-0000000002-0000000003-0000000004 ",
     "0000000001-0000000002-0000000003-0000000004"),
    ("4294967295-0-0-0", "4294967295-0000000000-0000000000-0000000000"),
    ("C0934BE72BF711D6800285D16359919A", "3230878695-0737612246-2147648977-1666814362"),
])
def test_cisco_guid(value, expected):
    assert cisco_guid(value) == expected


@pytest.mark.parametrize("value", [
    "", "1-2-3", "1-2-3-4-5", "4294967296-0-0-0", "12345678901-1-1-1", "a-b-c-d",
    "C0934BE7-2BF711D6-800285D1-6359919A", "\u0661-2-3-4", None,
])
def test_not_a_cisco_guid(value):
    assert cisco_guid(value) is None


# -- finding every candidate --------------------------------------------------------------------


def test_every_source_in_order():
    metadata = RecordingMetadata(
        session_ids=("sess-1",),
        sip_session_ids=("abc123;remote=000",),
        ucid="00FA0800010002000000FF;encoding=hex",
        avaya_ucid=" FA080003000400000100",
        genesys_uuid="GEN-FROM-METADATA",
        broadworks_tracking_id="1234567:1",
        broadworks_call_id="callhalf-98765:0",
    )
    headers = HeadersDouble(
        ("Call-ID", "ignored@example"),
        ("User-To-User", "00FA080002D3DF63111234;encoding=hex"),
        ("x-ucid", "00FA080005000600000001"),
        ("X-ISR-UCID", "isr-ref-77"),
        ("Cisco-Guid", "1-2-3-4"),
        ("X-Genesys-CallUUID", "02RK3B5PD8A0F9H1A2CC4TQ8MS00003N"),
    )
    found = find_identifiers(headers, metadata, "abc@192.0.2.1")
    assert found == [
        CallIdentifier("avaya-uui", SPEC_UCID, "00FA080002D3DF63111234;encoding=hex"),
        CallIdentifier("x-ucid", "00005000060000000001", "00FA080005000600000001"),
        CallIdentifier("x-isr-ucid", "isr-ref-77", "isr-ref-77"),
        CallIdentifier("oracle-ucid", "00001000020000000255", "00FA0800010002000000FF;encoding=hex"),
        CallIdentifier("audiocodes-ucid", "00003000040000000256", " FA080003000400000100"),
        CallIdentifier("cisco-guid", "0000000001-0000000002-0000000003-0000000004", "1-2-3-4"),
        CallIdentifier("genesys-uuid", "02RK3B5PD8A0F9H1A2CC4TQ8MS00003N",
                       "02RK3B5PD8A0F9H1A2CC4TQ8MS00003N"),
        CallIdentifier("genesys-uuid", "GEN-FROM-METADATA", "GEN-FROM-METADATA"),
        CallIdentifier("broadworks-tracking-id", "1234567:1", "1234567:1"),
        CallIdentifier("broadworks-call-id", "callhalf-98765:0", "callhalf-98765:0"),
        CallIdentifier("metadata-session", "abc123", "abc123;remote=000"),
        CallIdentifier("metadata-session", "sess-1", "sess-1"),
        CallIdentifier("call-id", "abc@192.0.2.1", "abc@192.0.2.1"),
    ]
    assert list(dict.fromkeys(c.source for c in found)) == list(SOURCES)


def test_same_value_from_one_source_is_listed_once():
    headers = HeadersDouble(
        ("User-to-User", "00FA080002D3DF63111234;encoding=hex"),
        ("User-to-User", "00fa080002d3df63111234"),
        ("X-UCID", SPEC_UCID),
        ("X-UCID", "00FA080002D3DF63111234"),
    )
    found = find_identifiers(headers, None, "c")
    assert [(c.source, c.value) for c in found] == [
        ("avaya-uui", SPEC_UCID), ("x-ucid", SPEC_UCID), ("call-id", "c"),
    ]


def test_decimal_x_ucid_is_kept_and_other_forms_are_raw():
    headers = HeadersDouble(("X-UCID", SPEC_UCID), ("X-ISR-UCID", " opaque-ref "))
    found = find_identifiers(headers, None, "")
    assert found == [
        CallIdentifier("x-ucid", SPEC_UCID, SPEC_UCID),
        CallIdentifier("x-isr-ucid", "opaque-ref", " opaque-ref "),
    ]


def test_user_to_user_without_a_ucid_gives_nothing():
    headers = HeadersDouble(("User-to-User", "3C3F786D6C;encoding=hex"))
    assert find_identifiers(headers, None, "cid") == [CallIdentifier("call-id", "cid", "cid")]


def test_unrecognised_cisco_guid_is_kept_raw():
    found = find_identifiers(HeadersDouble(("Cisco-Guid", "not-a-guid")), None, "")
    assert found == [CallIdentifier("cisco-guid", "not-a-guid", "not-a-guid")]


@pytest.mark.parametrize("header", ["X-Genesys-CallUUID", "Genesys-UUID", "X-Genesys-UUID", "X-Inin-Cnv"])
def test_genesys_headers(header):
    found = find_identifiers(HeadersDouble((header, "8d9f2c1e-5a6b-4c3d-9e8f-7a6b5c4d3e2f")), None, "")
    assert found == [CallIdentifier("genesys-uuid", "8d9f2c1e-5a6b-4c3d-9e8f-7a6b5c4d3e2f",
                                    "8d9f2c1e-5a6b-4c3d-9e8f-7a6b5c4d3e2f")]


def test_no_headers_object_and_no_metadata():
    assert find_identifiers(None, None, "x@y") == [CallIdentifier("call-id", "x@y", "x@y")]
    assert find_identifiers(None, None, "") == []


def test_identifiers_from_vendor_metadata():
    def ids(name):
        md = parse_metadata((FIXTURES / name).read_bytes())
        return {(c.source, c.value) for c in find_identifiers(HeadersDouble(), md, "cid")}

    assert ("oracle-ucid", "00010315321710351008") in ids("oracle_draft.xml")
    assert ("audiocodes-ucid", "00017031301714665921") in ids("audiocodes_avaya.xml")
    assert ("oracle-ucid", "00002254461707910400") in ids("ribbon_tns.xml")
    assert ("genesys-uuid", "02RK3B5PD8A0F9H1A2CC4TQ8MS00003N") in ids("genesys.xml")
    assert ("metadata-session", "e2c4f6a8b0d24e6f8a0c2e4f6a8b0d2e") in ids("cisco_cube.xml")
    assert ("metadata-session", "a8f3c1d2000100000000005e0b4c7a10") in ids("cisco_cube.xml")


# -- choosing ------------------------------------------------------------------------------------


def test_default_order_is_the_config_default():
    assert tuple(Sip().guid_sources) == SOURCES


def everything():
    headers = HeadersDouble(
        ("User-to-User", "00FA080002D3DF63111234;encoding=hex"),
        ("Cisco-Guid", "1-2-3-4"),
    )
    return find_identifiers(headers, RecordingMetadata(session_ids=("s",)), "cid")


def test_choose_in_default_order():
    assert choose_guid(everything(), SOURCES).value == SPEC_UCID


def test_choose_in_configured_order():
    chosen = choose_guid(everything(), ("cisco-guid", "avaya-uui", "call-id"))
    assert chosen.value == "0000000001-0000000002-0000000003-0000000004"
    assert choose_guid(everything(), ("metadata-session",)).value == "s"


def test_sources_left_out_of_the_order_are_not_used_but_call_id_always_is():
    assert choose_guid(everything(), ("x-ucid",)) == CallIdentifier("call-id", "cid", "cid")


def test_call_id_comes_last_even_when_listed_first_it_is_honoured():
    assert choose_guid(everything(), ("call-id", "avaya-uui")).source == "call-id"


def test_first_candidate_when_nothing_matches_and_no_call_id():
    only = [CallIdentifier("cisco-guid", "g", "g")]
    assert choose_guid(only, ("avaya-uui",)) == only[0]


def test_no_candidates_at_all():
    with pytest.raises(ValueError):
        choose_guid([], SOURCES)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sample_invites_give_their_expected_guid(flavour):
    sample = sample_invite(flavour, call_key=f"guid-{flavour}")
    _, metadata = find_siprec_parts(split_body(sample.content_type, sample.body))
    found = find_identifiers(HeadersDouble(*sample.headers), parse_metadata(metadata), sample.call_id)
    assert choose_guid(found, SOURCES).value == sample.guid
    assert found[-1] == CallIdentifier("call-id", sample.call_id, sample.call_id)


# -- fuzzing -----------------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text("0123456789abcdefABCDEF;=x ", max_size=60)))
def test_fuzz_avaya_uui_to_ucid(value):
    result = avaya_uui_to_ucid(value)
    assert result is None or (len(result) == 20 and result.isascii() and result.isdigit())
    normalised = normalise_ucid(value)
    assert normalised is None or (len(normalised) == 20 and normalised.isdigit())


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text("0123456789- ", max_size=50)))
def test_fuzz_cisco_guid(value):
    result = cisco_guid(value)
    assert result is None or (len(result) == 43 and result.count("-") == 3)


header_names = st.sampled_from([
    "User-to-User", "X-UCID", "X-ISR-UCID", "Cisco-Guid", "X-Genesys-CallUUID", "x-inin-cnv", "Other",
])


@settings(max_examples=1000, deadline=None)
@given(
    pairs=st.lists(st.tuples(header_names, st.text(max_size=40)), max_size=8),
    session_ids=st.lists(st.text(max_size=20), max_size=3),
    ucid=st.one_of(st.none(), st.text(max_size=30)),
    call_id=st.text(max_size=30),
    order=st.lists(st.sampled_from(SOURCES), unique=True),
)
def test_fuzz_find_and_choose(pairs, session_ids, ucid, call_id, order):
    metadata = RecordingMetadata(session_ids=tuple(session_ids), sip_session_ids=tuple(session_ids),
                                 ucid=ucid, avaya_ucid=ucid, genesys_uuid=ucid)
    found = find_identifiers(HeadersDouble(*pairs), metadata, call_id)
    assert all(c.source in SOURCES and c.value for c in found)
    assert len(set((c.source, c.value) for c in found)) == len(found)
    assert [SOURCES.index(c.source) for c in found] == sorted(SOURCES.index(c.source) for c in found)
    if found:
        assert choose_guid(found, tuple(order)) in found
