"""Splitting SIPREC INVITE bodies: the standard form and every tolerated deviation (SPEC §1)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.simulator.samples import FLAVOURS, sample_invite
from siprecd.siprec.metadata import parse_metadata
from siprecd.siprec.multipart import (
    BodyError,
    BodyPart,
    build_multipart,
    find_siprec_parts,
    parse_content_type,
    split_body,
)

SDP = (
    b"v=0\r\no=SRC 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 16384 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n"
    b"m=audio 16386 RTP/AVP 0\r\na=label:2\r\na=sendonly\r\n"
)
METADATA = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
    b'<recording xmlns="urn:ietf:params:xml:ns:recording:1">\r\n'
    b"<datamode>complete</datamode>\r\n"
    b'<session session_id="s1"/>\r\n'
    b"</recording>"
)


def crlf(text):
    """A test body written with LF line ends in the source, sent with CRLF."""
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def standard_body(boundary=b"OSS-unique-boundary-42"):
    return crlf(
        b"--" + boundary + b"\n"
        b"Content-Type: application/sdp\n"
        b"\n" + SDP.replace(b"\r\n", b"\n") + b"\n"
        b"--" + boundary + b"\n"
        b"Content-Type: application/rs-metadata+xml\n"
        b"Content-Disposition: recording-session\n"
        b"\n" + METADATA.replace(b"\r\n", b"\n") + b"\n"
        b"--" + boundary + b"--\n"
    )


# -- Content-Type parsing ----------------------------------------------------


def test_content_type_parameters_are_lowercased_and_unquoted():
    assert parse_content_type('Multipart/Mixed; Boundary="a;b c" ; charset=utf-8') == (
        "multipart/mixed", {"boundary": "a;b c", "charset": "utf-8"}
    )


def test_content_type_with_spaces_around_equals():
    assert parse_content_type("multipart/mixed; boundary = xyz") == (
        "multipart/mixed", {"boundary": "xyz"}
    )


def test_content_type_escaped_quote_inside_quotes():
    assert parse_content_type(r'multipart/mixed;boundary="a\"b"')[1] == {"boundary": 'a"b'}


def test_content_type_empty_or_none():
    assert parse_content_type(None) == ("", {})
    assert parse_content_type("") == ("", {})


# -- bodies that are not multipart ---------------------------------------------


def test_plain_sdp_is_one_part_and_no_metadata():
    parts = split_body("application/sdp", SDP)
    assert parts == [BodyPart("application/sdp", {}, {}, SDP)]
    assert find_siprec_parts(parts) == (SDP, None)


def test_plain_sdp_content_type_is_case_insensitive():
    parts = split_body("Application/SDP", SDP)
    assert find_siprec_parts(parts) == (SDP, None)


def test_empty_body_has_no_parts():
    assert split_body("application/sdp", b"") == []
    assert split_body(None, b"\r\n") == []
    assert find_siprec_parts([]) == (None, None)


def test_no_content_type_sdp_is_recognised():
    assert find_siprec_parts(split_body(None, SDP)) == (SDP, None)


def test_no_content_type_multipart_is_recognised_by_its_first_line():
    assert find_siprec_parts(split_body(None, standard_body())) == (SDP, METADATA)


def test_str_body_is_accepted():
    assert find_siprec_parts(split_body("application/sdp", SDP.decode())) == (SDP, None)


# -- the standard multipart ------------------------------------------------------


def test_standard_multipart():
    parts = split_body("multipart/mixed;boundary=OSS-unique-boundary-42", standard_body())
    assert [p.content_type for p in parts] == ["application/sdp", "application/rs-metadata+xml"]
    assert parts[1].headers == {
        "content-type": "application/rs-metadata+xml",
        "content-disposition": "recording-session",
    }
    assert find_siprec_parts(parts) == (SDP, METADATA)


def test_part_content_type_parameters_are_kept():
    body = crlf(
        b"--b\nContent-Type: application/SDP; charset=UTF-8\n\n" + SDP + b"\n--b--\n"
    )
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.content_type == "application/sdp"
    assert part.params == {"charset": "UTF-8"}


def test_build_multipart_round_trips():
    content_type, body = build_multipart(
        [("application/sdp", SDP), ("application/rs-metadata+xml", METADATA)]
    )
    parts = split_body(content_type, body)
    assert find_siprec_parts(parts) == (SDP, METADATA)
    assert parts[1].headers["content-disposition"] == "recording-session"


# -- tolerated deviations (SPEC §1) ------------------------------------------------


def test_quoted_boundary():
    body = standard_body(b"quoted boundary=1")
    parts = split_body('multipart/mixed; boundary="quoted boundary=1"', body)
    assert find_siprec_parts(parts) == (SDP, METADATA)


def test_boundary_parameter_with_whitespace_and_indented_delimiters():
    body = standard_body(b"ws").replace(b"--ws", b"  --ws")
    parts = split_body("multipart/mixed ;  boundary = ws ", body)
    assert find_siprec_parts(parts) == (SDP, METADATA)


def test_boundary_parameter_that_already_has_the_leading_dashes():
    body = standard_body(b"abc")
    assert find_siprec_parts(split_body("multipart/mixed;boundary=--abc", body)) == (SDP, METADATA)


def test_delimiter_with_trailing_blanks():
    body = standard_body(b"b").replace(b"--b\r\n", b"--b \t\r\n")
    assert find_siprec_parts(split_body("multipart/mixed;boundary=b", body)) == (SDP, METADATA)


def test_missing_closing_delimiter():
    body = standard_body(b"b").replace(b"--b--\r\n", b"")
    parts = split_body("multipart/mixed;boundary=b", body)
    assert find_siprec_parts(parts) == (SDP, METADATA)


def test_missing_closing_delimiter_and_no_final_line_end():
    body = standard_body(b"b").replace(b"\r\n--b--\r\n", b"")
    assert find_siprec_parts(split_body("multipart/mixed;boundary=b", body)) == (SDP, METADATA)


def test_parts_in_reverse_order():
    content_type, body = build_multipart(
        [("application/rs-metadata+xml", METADATA), ("application/sdp", SDP)]
    )
    parts = split_body(content_type, body)
    assert parts[0].content_type == "application/rs-metadata+xml"
    assert find_siprec_parts(parts) == (SDP, METADATA)


def test_correct_part_content_length_is_honoured_past_a_false_delimiter():
    tricky = b"v=0\r\ns=-\r\n--b\r\na=label:1\r\n"  # a line that looks like a delimiter
    body = (
        b"--b\r\nContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(tricky)
        + tricky + b"\r\n--b\r\nContent-Type: application/rs-metadata+xml\r\n\r\n"
        + METADATA + b"\r\n--b--\r\n"
    )
    assert find_siprec_parts(split_body("multipart/mixed;boundary=b", body)) == (tricky, METADATA)


@pytest.mark.parametrize("declared", [0, 5, len(SDP) - 7, len(SDP) + 3, 10**6, -1, "abc", ""])
def test_wrong_part_content_length_is_ignored(declared):
    body = (
        b"--b\r\nContent-Type: application/sdp\r\nContent-Length: %s\r\n\r\n" % str(declared).encode()
        + SDP + b"\r\n--b\r\nContent-Type: application/rs-metadata+xml\r\n"
        b"Content-Length: 99999\r\n\r\n" + METADATA + b"\r\n--b--\r\n"
    )
    assert find_siprec_parts(split_body("multipart/mixed;boundary=b", body)) == (SDP, METADATA)


def test_content_length_short_by_the_final_line_break_still_fits():
    body = (
        b"--b\r\nContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % (len(SDP) - 2)
        + SDP + b"\r\n--b--\r\n"
    )
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.body == SDP[:-2]


def test_text_trailing_the_metadata_is_tolerated_by_the_parser():
    junk = METADATA + b"\r\n\r\n[SBC trace id 17]\r\n"
    _, body = build_multipart([("application/sdp", SDP), ("application/rs-metadata+xml", junk)])
    sdp, metadata = find_siprec_parts(split_body("multipart/mixed;boundary=siprecd-boundary-5b9e2c", body))
    assert metadata == junk
    assert parse_metadata(metadata).session_ids == ("s1",)


def test_lf_only_line_ends():
    body = standard_body(b"lf").replace(b"\r\n", b"\n")
    sdp, metadata = find_siprec_parts(split_body("multipart/mixed;boundary=lf", body))
    assert sdp == SDP.replace(b"\r\n", b"\n")
    assert metadata == METADATA.replace(b"\r\n", b"\n")


def test_preamble_and_epilogue_are_ignored():
    body = b"This is a multi-part message in MIME format.\r\n" + standard_body(b"b") + (
        b"epilogue text\r\n--b\r\nContent-Type: application/sdp\r\n\r\nv=0 not this one\r\n"
    )
    parts = split_body("multipart/mixed;boundary=b", body)
    assert len(parts) == 2
    assert find_siprec_parts(parts) == (SDP, METADATA)


def test_part_without_headers_defaults_to_text_plain_and_is_sniffed():
    body = b"--b\r\n\r\n" + SDP + b"\r\n--b\r\n" + METADATA + b"\r\n--b--\r\n"
    parts = split_body("multipart/mixed;boundary=b", body)
    assert [p.content_type for p in parts] == ["text/plain", "text/plain"]
    assert parts[1].headers == {}
    assert find_siprec_parts(parts) == (SDP, METADATA)


def test_labelled_parts_win_over_sniffed_ones():
    other = b"v=0\r\ns=not the offer\r\n"
    body = (b"--b\r\n\r\n" + other + b"\r\n--b\r\nContent-Type: application/sdp\r\n\r\n"
            + SDP + b"\r\n--b--\r\n")
    assert find_siprec_parts(split_body("multipart/mixed;boundary=b", body)) == (SDP, None)


def test_part_headers_without_the_blank_line():
    body = (b"--b\r\nContent-Type: application/sdp\r\n" + SDP
            + b"\r\n--b\r\nContent-Type: application/rs-metadata+xml\r\n"
              b"Content-Disposition: recording-session\r\n" + METADATA + b"\r\n--b--\r\n")
    assert find_siprec_parts(split_body("multipart/mixed;boundary=b", body)) == (SDP, METADATA)


def test_folded_part_header():
    body = (b"--b\r\nContent-Type: application/rs-metadata+xml;\r\n charset=utf-8\r\n\r\n"
            + METADATA + b"\r\n--b--\r\n")
    (part,) = split_body("multipart/mixed;boundary=b", body)
    assert part.content_type == "application/rs-metadata+xml"
    assert part.params == {"charset": "utf-8"}


def test_rs_metadata_without_xml_suffix():
    content_type, body = build_multipart(
        [("application/sdp", SDP), ("application/rs-metadata", METADATA)]
    )
    assert find_siprec_parts(split_body(content_type, body)) == (SDP, METADATA)


def test_first_of_each_kind_wins():
    content_type, body = build_multipart([
        ("application/sdp", SDP), ("application/rs-metadata", METADATA),
        ("application/sdp", b"v=0\r\n"), ("application/rs-metadata+xml", b"<recording/>"),
    ])
    assert find_siprec_parts(split_body(content_type, body)) == (SDP, METADATA)


def test_other_parts_are_kept_but_not_chosen():
    content_type, body = build_multipart([
        ("application/isup", b"\x01\x02\x03"), ("application/sdp", SDP),
    ])
    parts = split_body(content_type, body)
    assert parts[0] == BodyPart("application/isup", {}, {"content-type": "application/isup"},
                                b"\x01\x02\x03")
    assert find_siprec_parts(parts) == (SDP, None)


def test_nested_multipart_is_flattened():
    inner_type, inner = build_multipart(
        [("application/sdp", SDP), ("application/rs-metadata+xml", METADATA)], "inner"
    )
    outer_type, outer = build_multipart([(inner_type, inner), ("text/plain", b"hi")], "outer")
    parts = split_body(outer_type, outer)
    assert [p.content_type for p in parts] == [
        "application/sdp", "application/rs-metadata+xml", "text/plain"
    ]


def test_nested_multipart_without_boundary_is_kept_whole():
    _, outer = build_multipart([("multipart/mixed", b"just text"), ("application/sdp", SDP)], "o")
    parts = split_body("multipart/mixed;boundary=o", outer)
    assert [p.content_type for p in parts] == ["multipart/mixed", "application/sdp"]


# -- refused bodies --------------------------------------------------------------


def test_multipart_without_boundary_parameter():
    with pytest.raises(BodyError, match="boundary"):
        split_body("multipart/mixed", standard_body())


def test_boundary_never_found():
    with pytest.raises(BodyError, match="not found"):
        split_body("multipart/mixed;boundary=elsewhere", standard_body())


def test_boundary_must_be_a_whole_line():
    with pytest.raises(BodyError):
        split_body("multipart/mixed;boundary=OSS", standard_body(b"OSS-unique-boundary-42"))


def test_too_many_parts():
    content_type, body = build_multipart([("text/plain", b"x")] * 5)
    assert len(split_body(content_type, body, max_parts=5)) == 5
    with pytest.raises(BodyError, match="more than 4"):
        split_body(content_type, body, max_parts=4)


def test_too_many_parts_counts_nested_parts():
    inner_type, inner = build_multipart([("text/plain", b"x")] * 3, "inner")
    outer_type, outer = build_multipart([(inner_type, inner)] * 3, "outer")
    with pytest.raises(BodyError):
        split_body(outer_type, outer, max_parts=8)


def test_only_a_closing_delimiter_is_an_empty_multipart():
    assert split_body("multipart/mixed;boundary=b", b"--b--\r\n") == []


# -- sample bodies in every vendor flavour -------------------------------------------


LAYOUTS = [
    {},
    {"line_end": "\n"},
    {"quote_boundary": True},
    {"closing": False},
    {"reverse_parts": True},
    {"part_content_length": True},
    {"preamble": b"preamble\r\n", "epilogue": b"\r\nepilogue"},
    {"trailing_junk": b"\r\n<!-- end -->trailing"},
    {"line_end": "\n", "closing": False, "reverse_parts": True, "quote_boundary": True},
]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: ",".join(d) or "standard")
def test_sample_bodies_split_in_every_layout(flavour, layout):
    sample = sample_invite(flavour, **layout)
    sdp, metadata = find_siprec_parts(split_body(sample.content_type, sample.body))
    assert sdp == sample.sdp
    assert metadata.startswith(sample.metadata)
    assert set(parse_metadata(metadata).label_to_participant()) == set(sample.labels)


# -- fuzzing ----------------------------------------------------------------------


content_types = st.one_of(
    st.none(),
    st.text(max_size=60),
    st.sampled_from([
        "multipart/mixed;boundary=b", 'multipart/mixed; boundary="b"', "multipart/mixed",
        "multipart/related;boundary=--", "application/sdp", "multipart/mixed;boundary=",
    ]),
)


@settings(max_examples=1000, deadline=None)
@given(content_type=content_types, body=st.binary(max_size=2048))
def test_fuzz_split_body_raises_only_body_error(content_type, body):
    try:
        parts = split_body(content_type, body)
    except BodyError:
        return
    assert all(isinstance(p, BodyPart) for p in parts)
    sdp, metadata = find_siprec_parts(parts)
    assert sdp is None or isinstance(sdp, bytes)
    assert metadata is None or isinstance(metadata, bytes)


def _mutations():
    """Standard bodies with random bytes spliced in and cut out."""
    base = standard_body(b"b")
    return st.tuples(
        st.integers(0, len(base)), st.integers(0, 40), st.binary(max_size=40)
    ).map(lambda t: base[:t[0]] + t[2] + base[t[0] + t[1]:])


@settings(max_examples=1000, deadline=None)
@given(body=_mutations(), content_type=st.sampled_from(
    ["multipart/mixed;boundary=b", "multipart/mixed;boundary=\"b\"", None]))
def test_fuzz_split_body_mutated_multiparts(body, content_type):
    try:
        parts = split_body(content_type, body, max_parts=4)
    except BodyError:
        return
    assert len(parts) <= 4
    find_siprec_parts(parts)
