"""SIP message layer: tolerant reading, exact writing, stream framing, and a
SipParseError (never anything else) for every bad input."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import sip_strategies as sips
from siprecd.sip.message import (
    REASON_PHRASES,
    Headers,
    KeepAlive,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    StreamParser,
    Via,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)

INVITE_LINES = [
    "INVITE sip:srs@10.0.0.2:5070 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    "To: <sip:srs@10.0.0.2>",
    'From: "SBC One" <sip:src@10.0.0.1>;tag=1928301774',
    "Call-ID: a84b4c76e66710@10.0.0.1",
    "CSeq: 314159 INVITE",
    "Contact: <sip:src@10.0.0.1:5060>;+sip.src",
    "Require: siprec",
]


def sip(lines, body=b"", content_length=True, eol="\r\n"):
    """Wire bytes from header lines (a Content-Length is added unless told not to)."""
    lines = list(lines)
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return (eol.join(lines) + eol + eol).encode("utf-8") + body


def invite(body=b"", *, drop=(), replace=None, add=(), content_length=True):
    """INVITE_LINES with lines dropped (by name), replaced (name -> line) or added."""
    replace = replace or {}
    lines = []
    for line in INVITE_LINES:
        name = line.split(":")[0] if ":" in line.split(" ")[0] else None
        if name in drop:
            continue
        lines.append(replace.get(name or "start", line))
    return sip(lines + list(add), body, content_length)


OK_LINES = [
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKnashds8",
    "To: <sip:src@10.0.0.1>;tag=a6c85cf",
    "From: <sip:srs@10.0.0.2>;tag=1928301774",
    "Call-ID: a84b4c76e66710",
    "CSeq: 2 BYE",
]


def check_error(error):
    """What every SipParseError must satisfy, whatever the input."""
    assert isinstance(error, SipParseError)
    # A cause would mean the safety net caught a real bug.
    assert error.__cause__ is None, repr(error.__cause__)
    assert error.reason and error.reason.isascii() and error.reason.isprintable()
    assert error.status in (400, 416, 505, 513)
    if error.request is not None:
        # The answer we would send must itself be a valid message.
        answer = make_response(error.request, error.status, to_tag="x1")
        parsed = parse_message(answer.to_bytes())
        assert isinstance(parsed, Response)
        assert parsed.status == error.status
        assert parsed.to.tag


# -- reading and writing ----------------------------------------------------


def test_parse_request():
    body = b"v=0\r\n"
    msg = parse_message(invite(body, add=["Content-Type: Application/SDP; charset=x"]))
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri, msg.version) == ("INVITE", "sip:srs@10.0.0.2:5070", "SIP/2.0")
    assert msg.call_id == "a84b4c76e66710@10.0.0.1"
    assert msg.cseq == (314159, "INVITE")
    assert msg.top_via == Via("UDP", "10.0.0.1", 5060, {"branch": "z9hG4bK776asdhds", "rport": None})
    assert msg.from_ == NameAddr("sip:src@10.0.0.1", "SBC One", {"tag": "1928301774"})
    assert msg.to.tag is None
    assert msg.content_type == "application/sdp"
    assert msg.headers.get("Max-Forwards") == "70"
    assert msg.body == body


def test_parse_response():
    msg = parse_message(sip(OK_LINES))
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (200, "OK")
    assert msg.cseq == (2, "BYE")
    assert msg.to.tag == "a6c85cf"
    assert msg.content_type is None


@pytest.mark.parametrize("line, reason", [
    ("SIP/2.0 183 Session Progress", "Session Progress"),
    ("SIP/2.0 200 ", ""),
    ("SIP/2.0 200", ""),
    ("SIP/2.0 486 Très occupé", "Très occupé"),
    ("sip/2.0 200 OK", "OK"),
])
def test_status_line_forms(line, reason):
    msg = parse_message(sip([line] + OK_LINES[1:]))
    assert msg.reason == reason


def test_serialise_exact_bytes():
    raw = invite(b"hello")
    assert parse_message(raw).to_bytes() == raw


def test_to_bytes_sets_content_length_from_body():
    req = Request("OPTIONS", "sip:srs@example.com", [
        ("Via", "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1"),
        ("Content-Length", "999"),
        ("Content-Length", "7"),
        ("From", "<sip:a@b>;tag=1"), ("To", "<sip:srs@example.com>"),
        ("Call-ID", "c1"), ("CSeq", "1 OPTIONS"),
    ], b"abc")
    wire = req.to_bytes()
    assert wire.count(b"Content-Length") == 1
    assert b"\r\nContent-Length: 3\r\nFrom:" in wire
    assert wire.endswith(b"\r\n\r\nabc")
    req.headers.remove("Content-Length")
    assert req.to_bytes().endswith(b"CSeq: 1 OPTIONS\r\nContent-Length: 3\r\n\r\nabc")
    assert parse_message(req.to_bytes()).body == b"abc"


def test_compact_forms_stored_under_full_names():
    raw = sip([
        "MESSAGE sip:srs@h SIP/2.0",
        "v: SIP/2.0/UDP h;branch=z9hG4bK1",
        "f: <sip:a@h>;tag=1", "t: <sip:b@h>", "i: cid", "CSeq: 1 MESSAGE",
        "m: <sip:a@h>", "c: text/plain", "e: gzip", "s: hi", "k: timer",
        "o: refer", "r: <sip:c@h>", "b: <sip:d@h>", "x: 1800", "u: talk",
        "y: abc", "a: *;audio", "j: *;video", "d: proxy", "l: 0",
    ], content_length=False)
    msg = parse_message(raw)
    names = [name for name, _ in msg.headers.items()]
    assert names == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Type",
        "Content-Encoding", "Subject", "Supported", "Event", "Refer-To",
        "Referred-By", "Session-Expires", "Allow-Events", "Identity",
        "Accept-Contact", "Reject-Contact", "Request-Disposition", "Content-Length",
    ]
    assert msg.headers.get("i") == msg.headers.get("Call-ID") == "cid"
    assert msg.content_type == "text/plain"
    assert b"\r\nCall-ID: cid\r\n" in msg.to_bytes()


def test_folded_header_lines_are_joined():
    raw = invite(add=["Subject: I know you're there,\r\n   pick up\r\n\tthe phone"],
                 replace={"Via": "Via: SIP/2.0/UDP 10.0.0.1:5060\r\n ;branch=z9hG4bKf"})
    msg = parse_message(raw)
    assert msg.headers.get("Subject") == "I know you're there, pick up the phone"
    assert msg.top_via.branch == "z9hG4bKf"


def test_whitespace_around_colon_and_lf_only_and_leading_crlf():
    lines = [line.replace(":", " \t:  ", 1) if i else line for i, line in enumerate(INVITE_LINES)]
    raw = b"\r\n\r\n\n" + sip(lines, b"x", eol="\n")
    msg = parse_message(raw)
    assert msg.call_id == "a84b4c76e66710@10.0.0.1"
    assert msg.headers.get("Require") == "siprec"
    assert msg.body == b"x"


def test_list_headers_split_across_and_within_lines():
    msg = parse_message(invite(
        replace={"Via": "Via: SIP/2.0/UDP p1;branch=z9hG4bK1, SIP/2.0/TCP p2:5061;branch=z9hG4bK2"},
        add=["Via: SIP/2.0/UDP [2001:db8::9];branch=z9hG4bK3", "Supported: timer, 100rel",
             "Supported: replaces", "Allow: INVITE,ACK , BYE,,"],
    ))
    assert [v.host for v in msg.via] == ["p1", "p2", "2001:db8::9"]
    assert msg.top_via.branch == "z9hG4bK1"
    assert msg.headers.get("Via") == "SIP/2.0/UDP p1;branch=z9hG4bK1"
    assert msg.headers.get_all("Supported") == ["timer", "100rel", "replaces"]
    assert msg.headers.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    # Lines are kept as received for sending on.
    assert [v for n, v in msg.headers.items() if n == "Via"][0].count(",") == 1


def test_commas_in_quotes_and_brackets_do_not_split():
    headers = Headers([
        ("Contact", '"Smith, John \\"JS\\"" <sip:js@h;x=a,b>;expires=60, <sip:k@h>, sip:l@h;q=0.5'),
        ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
        ("Subject", "a, b"),
    ])
    contacts = headers.get_all("Contact")
    assert len(contacts) == 3
    first = parse_name_addr(contacts[0])
    assert first.display_name == 'Smith, John "JS"'
    assert first.uri == "sip:js@h;x=a,b"
    assert first.params == {"expires": "60"}
    assert parse_name_addr(contacts[2]).params == {"q": "0.5"}
    assert headers.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert headers.get("Subject") == "a, b"


def test_contact_star_stays_star():
    headers = Headers([("Contact", "*")])
    assert headers.get_all("contact") == ["*"] and headers.get("m") == "*"


def test_names_are_case_insensitive_and_canonical():
    headers = Headers([("call-id", "1"), ("CSEQ", "1 INVITE"), ("www-authenticate", "Digest"),
                       ("x-MyHeader", "a"), ("X-MYHEADER", "b"), ("user-to-user", "00FA08")])
    assert [n for n, _ in headers.items()] == [
        "Call-ID", "CSeq", "WWW-Authenticate", "x-MyHeader", "X-MYHEADER", "User-to-User"]
    assert headers.get("CALL-ID") == headers.get("i") == "1"
    assert headers.get_all("X-myheader") == ["a", "b"]
    assert "cseq" in headers and "X-Other" not in headers
    assert headers == Headers([("I", "1"), ("cseq", "1 INVITE"), ("WWW-Authenticate", "Digest"),
                               ("X-MyHeader", "a"), ("x-myheader", "b"), ("User-To-User", "00FA08")])


def test_headers_editing():
    headers = Headers([("Via", "a"), ("To", "t"), ("Via", "b"), ("X-A", " padded\t")])
    assert headers.get("X-A") == "padded"
    copy = headers.copy()
    headers.set("via", "c")
    assert headers.items() == [("Via", "c"), ("To", "t"), ("X-A", "padded")]
    headers.set("Subject", "new")
    assert headers.items()[-1] == ("Subject", "new")
    headers.add("v", "d")
    assert headers.get_all("Via") == ["c", "d"]
    headers.remove("VIA")
    headers.remove("Not-There")
    assert "Via" not in headers and len(headers) == 3
    assert copy.get_all("Via") == ["a", "b"]
    assert headers.get("Missing", "dflt") == "dflt"
    assert list(copy)[0] == ("Via", "a")


@pytest.mark.parametrize("name, value", [
    ("X-A", "a\r\nInjected: 1"), ("X-A", "a\nb"), ("X-A", "nul\x00"),
    ("Bad Name", "v"), ("", "v"), ("X:A", "v"),
])
def test_headers_refuse_what_would_break_the_wire(name, value):
    with pytest.raises(ValueError):
        Headers().add(name, value)
    with pytest.raises(ValueError):
        Headers().set(name, value)


def test_empty_list_header():
    headers = Headers([("Supported", ""), ("Supported", "timer")])
    assert headers.get("Supported") == "timer"
    assert headers.get_all("Supported") == ["timer"]
    assert "Supported" in Headers([("Supported", "")])


# -- bodies and Content-Length on datagrams -----------------------------------


def test_datagram_body_cut_by_content_length():
    raw = invite(content_length=False, add=["Content-Length: 3"]) + b"abcdef"
    assert parse_message(raw).body == b"abc"


def test_datagram_without_content_length_takes_the_rest():
    raw = invite(content_length=False) + b"rest\r\nof it"
    assert parse_message(raw).body == b"rest\r\nof it"


def test_multipart_invite_of_12kb_parses_whole():
    raw, sdp, metadata = make_siprec_invite()
    assert len(raw) > 12 * 1024
    msg = parse_message(raw)
    assert msg.content_type == "multipart/mixed"
    assert msg.body.count(b"--uniqueBoundary") == 3
    assert sdp in msg.body and metadata in msg.body
    assert msg.body.endswith(b"--uniqueBoundary--\r\n")
    # The same bytes on a stream in MTU-sized pieces.
    parser = StreamParser()
    out = []
    for i in range(0, len(raw), 1400):
        out += parser.feed(raw[i:i + 1400])
    assert out == [msg]


def make_siprec_invite():
    sdp = (
        "v=0\r\no=SBC 1 1 IN IP4 10.0.0.1\r\ns=SIPREC\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=label:1\r\na=sendonly\r\n"
        "m=audio 40002 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=label:2\r\na=sendonly\r\n"
    ).encode()
    participants = "".join(
        f'<participant participant_id="p{i:04d}AAAAAAAAAAAAAA=="><nameID aor="sip:+1555000{i:04d}@example.com">'
        f'<name xml:lang="en">Participant number {i}, café</name></nameID></participant>\r\n'
        for i in range(64)
    )
    metadata = (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        '<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>complete</datamode>\r\n'
        f'<session session_id="hVpd7YQgRW2nD22h7q60JQ=="><sipSessionID>ab30317f1a784dc4</sipSessionID></session>\r\n'
        f"{participants}</recording>\r\n"
    ).encode()
    body = (
        b"--uniqueBoundary\r\nContent-Type: application/sdp\r\n\r\n" + sdp
        + b"\r\n--uniqueBoundary\r\nContent-Type: application/rs-metadata+xml\r\n"
        + b"Content-Disposition: recording-session\r\n\r\n" + metadata
        + b"\r\n--uniqueBoundary--\r\n"
    )
    raw = invite(body, add=[
        "Content-Type: multipart/mixed;boundary=uniqueBoundary",
        "Supported: timer, replaces, 100rel",
        "User-to-User: 00FA080002D3DF63111234;encoding=hex",
        "Session-Expires: 1800;refresher=uac",
    ])
    return raw, sdp, metadata


# -- bad input -----------------------------------------------------------------

BAD_INPUTS = [
    # (id, bytes, reason, whether a 400 can be formed, status)
    ("empty", b"", "Empty message", False, 400),
    ("only CRLFs", b"\r\n\r\n", "Empty message", False, 400),
    ("not SIP", b"hello world\r\n\r\n", "Bad request line", False, 400),
    ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "Bad request line", False, 400),
    ("bad method", invite(replace={"start": "INV@TE sip:srs@h SIP/2.0"}), "Bad request line", False, 400),
    ("double space", invite(replace={"start": "INVITE  sip:srs@h SIP/2.0"}), "Bad request line", False, 400),
    ("SIP/3.0", invite(replace={"start": "INVITE sip:srs@h SIP/3.0"}), "Version Not Supported", True, 505),
    ("bad Request-URI", invite(replace={"start": "INVITE srs SIP/2.0"}), "Bad Request-URI", True, 400),
    ("no Via", invite(drop=["Via"]), "Missing Via header", False, 400),
    ("no From", invite(drop=["From"]), "Missing From header", False, 400),
    ("no To", invite(drop=["To"]), "Missing To header", False, 400),
    ("no Call-ID", invite(drop=["Call-ID"]), "Missing Call-ID header", False, 400),
    ("no CSeq", invite(drop=["CSeq"]), "Missing CSeq header", False, 400),
    ("empty Call-ID", invite(replace={"Call-ID": "Call-ID:"}), "Empty Call-ID header", False, 400),
    ("bad CSeq", invite(replace={"CSeq": "CSeq: one INVITE"}), "Bad CSeq header", False, 400),
    ("huge CSeq", invite(replace={"CSeq": "CSeq: 2147483648 INVITE"}), "CSeq number out of range", False, 400),
    ("CSeq mismatch", invite(replace={"CSeq": "CSeq: 1 BYE"}),
     "CSeq method does not match request method", True, 400),
    ("bad Via", invite(replace={"Via": "Via: SIP/2.0/UDP"}), "Bad Via header", False, 400),
    ("bad From", invite(replace={"From": "From: <not a uri"}), "Bad From header", False, 400),
    ("bad To", invite(replace={"To": 'To: "open <sip:srs@h>'}), "Bad To header", False, 400),
    ("duplicate Call-ID", invite(add=["i: other"]), "Duplicate Call-ID header", True, 400),
    ("conflicting Content-Length", invite(add=["l: 5"]), "Conflicting Content-Length headers", True, 400),
    ("non-UTF-8", invite(content_length=False)[:-2] + b"Subject: caf\xe9\r\n\r\n",
     "Invalid UTF-8 in headers", True, 400),
    ("NUL", invite(add=["Subject: a\x00b"]), "NUL byte in headers", True, 400),
    ("bare CR", invite(add=["Subject: a\rb"]), "Bare CR in headers", True, 400),
    ("line without colon", invite(add=["Just some words"]), "Malformed header line", True, 400),
    ("bad header name", invite(add=["Bad Name: x"]), "Malformed header line", True, 400),
    ("folded start line", invite(replace={"start": "INVITE sip:srs@h SIP/2.0\r\n folded"}),
     "Bad request line", False, 400),
    ("Content-Length word", invite(content_length=False, add=["Content-Length: ten"]),
     "Bad Content-Length header", True, 400),
    ("Content-Length negative", invite(content_length=False, add=["Content-Length: -1"]),
     "Bad Content-Length header", True, 400),
    ("Content-Length plus sign", invite(content_length=False, add=["Content-Length: +1"]),
     "Bad Content-Length header", True, 400),
    ("Content-Length too big", invite(content_length=False, add=["Content-Length: 10"]) + b"short",
     "Content-Length larger than message", True, 400),
    ("Max-Forwards word", invite(replace={"Max-Forwards": "Max-Forwards: many"}),
     "Bad Max-Forwards header", True, 400),
    ("Max-Forwards 256", invite(replace={"Max-Forwards": "Max-Forwards: 256"}),
     "Bad Max-Forwards header", True, 400),
    ("no blank line", invite()[:-2], "Incomplete header block", True, 400),
    ("status 700", sip(["SIP/2.0 700 Odd"] + OK_LINES[1:]), "Bad status code", False, 400),
    ("status 2 digits", sip(["SIP/2.0 20 OK"] + OK_LINES[1:]), "Bad status line", False, 400),
    ("response SIP/1.0", sip(["SIP/1.0 200 OK"] + OK_LINES[1:]), "Version Not Supported", False, 505),
    ("response no CSeq", sip(OK_LINES[:-1]), "Missing CSeq header", False, 400),
]


@pytest.mark.parametrize("raw, reason, answerable, status",
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input(raw, reason, answerable, status):
    with pytest.raises(SipParseError) as info:
        parse_message(raw)
    error = info.value
    assert error.reason == reason
    assert error.status == status
    assert (error.request is not None) == answerable
    check_error(error)
    if answerable:
        assert error.request.call_id == "a84b4c76e66710@10.0.0.1"


def test_too_large_datagram():
    raw = invite(b"x" * 70000)
    with pytest.raises(SipParseError) as info:
        parse_message(raw)
    assert (info.value.reason, info.value.status) == ("Message Too Large", 513)
    assert info.value.request is not None  # the headers fit: answer 513
    check_error(info.value)
    # The limit is on the message, configurable, and inclusive.
    assert parse_message(raw, max_size=len(raw)).body == b"x" * 70000
    with pytest.raises(SipParseError, match="Message Too Large"):
        parse_message(raw, max_size=len(raw) - 1)


def test_parse_message_wants_bytes():
    assert parse_message(bytearray(invite())).method == "INVITE"
    assert parse_message(memoryview(invite())).method == "INVITE"
    with pytest.raises(TypeError):
        parse_message(invite().decode())


# -- streams --------------------------------------------------------------------

TWO = [invite(b"first body"), sip(OK_LINES, b"second")]


def feed_all(parser, chunks):
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


def test_stream_byte_by_byte():
    data = b"".join(TWO)
    parser = StreamParser()
    out = feed_all(parser, [data[i:i + 1] for i in range(len(data))])
    assert out == [parse_message(m) for m in TWO]
    assert not parser.broken


@pytest.mark.parametrize("seed", range(10))
def test_stream_random_chunkings(seed):
    rng = random.Random(seed)
    data = b"".join(TWO * 3)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 30)))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    assert feed_all(StreamParser(), chunks) == [parse_message(m) for m in TWO * 3]


def test_stream_two_messages_in_one_chunk():
    parser = StreamParser()
    out = parser.feed(b"".join(TWO) + TWO[0][:10])
    assert out == [parse_message(m) for m in TWO]
    assert parser.feed(TWO[0][10:]) == [parse_message(TWO[0])]


def test_stream_keepalives():
    parser = StreamParser()
    assert parser.feed(b"\r\n\r\n") == [KeepAlive()]
    assert parser.feed(b"\r\n") == []          # might be half a ping
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [KeepAlive()]
    assert parser.feed(b"\r\n" + TWO[0]) == [parse_message(TWO[0])]  # a lone CRLF is a pong
    assert parser.feed(b"\r\n\r\n\r\n\r\n" + TWO[1]) == [KeepAlive(), KeepAlive(), parse_message(TWO[1])]
    assert not parser.broken


def test_stream_header_block_over_limit_breaks():
    parser = StreamParser()
    assert parser.feed(invite(content_length=False)[:-2]) == []
    endless = b"X-Filler: " + b"y" * 1000 + b"\r\n"
    out = []
    while not out:
        out = parser.feed(endless)
    assert parser.broken
    assert [e.reason for e in out] == ["Message Too Large"]
    check_error(out[0])
    assert out[0].request is not None
    assert parser.feed(TWO[0]) == []


def test_stream_body_over_limit_breaks_before_it_arrives():
    raw = invite(b"z" * 65536)
    parser = StreamParser()
    out = parser.feed(raw[:2000])
    assert parser.broken
    assert out[0].reason == "Message Too Large" and out[0].status == 513


def test_stream_message_at_limit_is_accepted():
    # With an empty body Content-Length is "0"; a body this size needs 5 digits.
    size = 65536 - (len(invite(b"")) - 1) - 5
    raw = invite(b"z" * size)
    assert len(raw) == 65536
    assert feed_all(StreamParser(), [raw[:40000], raw[40000:]]) == [parse_message(raw)]
    assert StreamParser(max_size=1000).feed(raw)[0].reason == "Message Too Large"


@pytest.mark.parametrize("raw, reason", [
    (invite(content_length=False), "Missing Content-Length header"),
    (invite(content_length=False, add=["Content-Length: x"]), "Bad Content-Length header"),
    (invite(add=["Content-Length: 1"]), "Conflicting Content-Length headers"),
])
def test_stream_framing_lost_breaks_but_answers(raw, reason):
    parser = StreamParser()
    out = parser.feed(TWO[1] + raw + TWO[0])
    assert out[0] == parse_message(TWO[1])
    assert out[1].reason == reason and out[1].request is not None
    assert len(out) == 2 and parser.broken
    assert parser.feed(TWO[0]) == []


def test_stream_malformed_but_framed_message_does_not_break():
    bad = invite(b"abc", replace={"CSeq": "CSeq: 1 BYE"})
    parser = StreamParser()
    out = parser.feed(bad + TWO[1])
    assert isinstance(out[0], SipParseError) and out[0].request is not None
    assert out[1] == parse_message(TWO[1])
    assert not parser.broken


def test_stream_garbage_breaks():
    parser = StreamParser()
    out = parser.feed(b"\x16\x03\x01 hello TLS\r\n\r\n")
    assert parser.broken and out[0].request is None


# -- header values ----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776", Via("UDP", "pc33.example.com", None, {"branch": "z9hG4bK776"})),
    ("SIP / 2.0 / tcp 10.0.0.1 : 5070 ; branch=z9hG4bKa ; RPORT ; received=1.2.3.4",
     Via("TCP", "10.0.0.1", 5070, {"branch": "z9hG4bKa", "rport": None, "received": "1.2.3.4"})),
    ("SIP/2.0/TLS [2001:db8::1]:5071;branch=z9hG4bKb;rport=5071;x=\"a;b\"",
     Via("TLS", "2001:db8::1", 5071, {"branch": "z9hG4bKb", "rport": "5071", "x": '"a;b"'})),
])
def test_parse_via(text, expected):
    assert parse_via(text) == expected


def test_via_properties_and_with_params():
    via = parse_via("SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1;rport")
    assert (via.branch, via.rport, via.received) == ("z9hG4bK1", "", None)
    answered = via.with_params(received="::2", rport="5061")
    assert str(answered) == "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1;rport=5061;received=::2"
    assert answered.rport == "5061"
    assert str(answered.with_params(rport=False, ttl=None)) == "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1;received=::2;ttl"
    assert via.rport == ""  # unchanged
    assert parse_via("SIP/2.0/UDP h").rport is None


@pytest.mark.parametrize("text", [
    "", "SIP/2.0/UDP", "SIP/2.0 host", "SIP/3.0/UDP host", "SIP/2.0/UDP host:99999",
    "SIP/2.0/UDP host;branch=a b", "SIP/2.0/UDP [zz::1]", "SIP/2.0/UDP host junk",
    "SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2", "SIP/2.0/UDP h;=x", 'SIP/2.0/UDP h;x="open',
])
def test_bad_via(text):
    with pytest.raises(SipParseError):
        parse_via(text)


@pytest.mark.parametrize("text, expected", [
    ('"Alice \\"Al\\" Smith" <sip:alice@h>;tag=88', NameAddr("sip:alice@h", 'Alice "Al" Smith', {"tag": "88"})),
    ("Bob Jones <sip:bob@h;transport=tcp>", NameAddr("sip:bob@h;transport=tcp", "Bob Jones", {})),
    ("<sips:c@h>;TAG=x;+sip.src", NameAddr("sips:c@h", None, {"tag": "x", "+sip.src": None})),
    ("sip:d@h;tag=1;lr", NameAddr("sip:d@h", None, {"tag": "1", "lr": None})),
    ('  "" <tel:+15551234>  ', NameAddr("tel:+15551234", "", {})),
    ("Zoë <urn:service:sos>", NameAddr("urn:service:sos", "Zoë", {})),
])
def test_parse_name_addr(text, expected):
    assert parse_name_addr(text) == expected


def test_name_addr_tag_and_str():
    addr = parse_name_addr("Agent <sip:a@h>;x=1")
    assert addr.tag is None
    tagged = addr.with_tag("abc")
    assert tagged.tag == "abc" and addr.tag is None
    assert str(tagged) == '"Agent" <sip:a@h>;x=1;tag=abc'
    assert str(NameAddr("sip:a@h", 'say "hi" \\o/')) == '"say \\"hi\\" \\\\o/" <sip:a@h>'
    assert str(parse_name_addr("sip:a@h;tag=2")) == "<sip:a@h>;tag=2"


@pytest.mark.parametrize("text", [
    "", "<not a uri", '"unterminated <sip:a@h>', '"name" sip:a@h', "no uri here",
    "<>", "<not a uri>", 'Bad "quote" <sip:a@h>', "<sip:a@h> junk", "sip:a@h;=1",
])
def test_bad_name_addr(text):
    with pytest.raises(SipParseError):
        parse_name_addr(text)


@pytest.mark.parametrize("text, expected", [
    # A '<' never closed (Oracle/Acme SBC Contact, field report) reads as the addr-spec form.
    ("<sip:u@h:5060;+sip.src", NameAddr("sip:u@h:5060", None, {"+sip.src": None})),
    ('"SRC" <sip:src@h;tag=9f', NameAddr("sip:src@h", "SRC", {"tag": "9f"})),
])
def test_unclosed_angle_bracket_is_tolerated(text, expected):
    addr = parse_name_addr(text)
    assert addr == expected
    assert addr.repaired == "'<' never closed"
    assert parse_name_addr("<sip:u@h>").repaired is None


def test_stray_punctuation_in_user_part_is_tolerated():
    uri = parse_uri("sip:+1555]0100[@10.0.0.1:5060")
    assert (uri.user, uri.host, uri.port) == ("+1555]0100[", "10.0.0.1", 5060)
    assert uri.repaired == "stray punctuation in a URI user part"
    assert parse_uri("sip:a@h").repaired is None
    assert str(uri) == "sip:+1555]0100[@10.0.0.1:5060"


def test_tolerated_slips_are_noted_on_the_request():
    msg = parse_message(invite(replace={"Contact": "Contact: <sip:src]@10.0.0.1:5060;+sip.src",
                                        "From": "From: <sip:src@10.0.0.1;tag=1928301774"}))
    assert msg.from_.tag == "1928301774"
    assert msg.tolerated == ("From: '<' never closed", "Contact: '<' never closed",
                             "Contact: stray punctuation in a URI user part")
    assert parse_message(invite()).tolerated == ()


@pytest.mark.parametrize("method", ["ACK", "BYE"])
def test_ack_and_bye_with_invite_cseq_are_read_by_their_request_line(method):
    raw = invite(replace={"start": f"{method} sip:srs@10.0.0.2:5070 SIP/2.0",
                          "CSeq": "CSeq: 314159 INVITE"})
    msg = parse_message(raw)
    assert msg.method == method and msg.cseq == (314159, "INVITE")
    assert msg.tolerated == (f"CSeq method INVITE on a {method}",)
    # Other mismatches stay refused.
    with pytest.raises(SipParseError, match="CSeq method does not match"):
        parse_message(invite(replace={"start": f"{method} sip:srs@10.0.0.2:5070 SIP/2.0",
                                      "CSeq": "CSeq: 314159 OPTIONS"}))


def test_parse_sip_uri():
    uri = parse_uri("sip:alice:secret@Example.COM:5070;transport=TCP;lr;maddr=[::1]?subject=hi&priority=urgent")
    assert uri == SipUri("sip", "alice", "Example.COM", 5070,
                         {"transport": "TCP", "lr": None, "maddr": "[::1]"},
                         {"subject": "hi", "priority": "urgent"}, "secret")
    assert uri.param("TRANSPORT") == "TCP" and uri.param("lr") == "" and uri.param("ttl") is None
    assert str(uri) == "sip:alice:secret@Example.COM:5070;transport=TCP;lr;maddr=[::1]?subject=hi&priority=urgent"


@pytest.mark.parametrize("text, scheme, user, host, port", [
    ("sips:[2001:db8::5]:5061", "sips", None, "2001:db8::5", 5061),
    ("SIP:+15551234;phone-context=example.com@gw.example.com;user=phone", "sip",
     "+15551234;phone-context=example.com", "gw.example.com", None),
    ("sip:10.0.0.1", "sip", None, "10.0.0.1", None),
    ("tel:+1-555-123-4567;ext=12", "tel", "+1-555-123-4567", "", None),
    ("sip:srs@h?Replaces=abc@host", "sip", "srs", "h", None),
])
def test_parse_uri_forms(text, scheme, user, host, port):
    uri = parse_uri(text)
    assert (uri.scheme, uri.user, uri.host, uri.port) == (scheme, user, host, port)


@pytest.mark.parametrize("text", [
    "", "sip:", "sip:@h", "sip:a@", "sip:h:", "sip:h:70000", "sip:[::g]", "sip:a b@h",
    "sip:h;=x", "nocolon", "sip:h?=x", "tel:",
])
def test_bad_uri(text):
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_unsupported_uri_scheme_says_416():
    with pytest.raises(SipParseError) as info:
        parse_uri("http://example.com/")
    assert info.value.status == 416


@pytest.mark.parametrize("text, expected", [
    ("1 INVITE", (1, "INVITE")), (" 0   ACK ", (0, "ACK")), ("2147483647 BYE", (2**31 - 1, "BYE")),
])
def test_parse_cseq(text, expected):
    assert parse_cseq(text) == expected


@pytest.mark.parametrize("text", ["", "INVITE", "1", "-1 INVITE", "2147483648 INVITE", "1 IN VITE",
                                  "99999999999 INVITE", "1.5 INVITE", "١ INVITE", None])
def test_bad_cseq(text):
    with pytest.raises(SipParseError):
        parse_cseq(text)


# -- responses and identifiers ------------------------------------------------------


def test_make_response_copies_what_rfc3261_says():
    req = parse_message(invite(
        replace={"Via": "Via: SIP/2.0/UDP p1;branch=z9hG4bK1, SIP/2.0/UDP p2;branch=z9hG4bK2"},
        add=["Via: SIP/2.0/UDP p3;branch=z9hG4bK3", "Record-Route: <sip:p1;lr>", "Timestamp: 54"],
    ))
    resp = make_response(req, 200, to_tag="srs1", headers=[("Contact", "<sip:srs@10.0.0.2>")],
                         body=b"v=0\r\n", content_type="application/sdp")
    assert resp.to_bytes().decode() == (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP p1;branch=z9hG4bK1, SIP/2.0/UDP p2;branch=z9hG4bK2\r\n"
        "Via: SIP/2.0/UDP p3;branch=z9hG4bK3\r\n"
        'From: "SBC One" <sip:src@10.0.0.1>;tag=1928301774\r\n'
        "To: <sip:srs@10.0.0.2>;tag=srs1\r\n"
        "Call-ID: a84b4c76e66710@10.0.0.1\r\n"
        "CSeq: 314159 INVITE\r\n"
        "Contact: <sip:srs@10.0.0.2>\r\n"
        "Content-Type: application/sdp\r\n"
        "Content-Length: 5\r\n\r\nv=0\r\n"
    )
    trying = make_response(req, 100)
    assert (trying.reason, trying.to.tag, trying.headers.get("Timestamp")) == ("Trying", None, "54")
    assert "Timestamp" not in resp.headers and "Record-Route" not in resp.headers


def test_make_response_keeps_an_existing_to_tag_and_bare_to():
    req = parse_message(invite(replace={"To": "To: sip:srs@h;tag=old"}))
    assert make_response(req, 481, to_tag="new").to.tag == "old"
    req = parse_message(invite(replace={"To": "t: sip:srs@h"}))
    assert make_response(req, 486, to_tag="new").headers.get("To") == "sip:srs@h;tag=new"


@pytest.mark.parametrize("to", ["<sip:srs@h>;tag", "<sip:srs@h>;tag=;x=1"])
def test_valueless_to_tag_is_refused_and_replaced_in_the_answer(to):
    with pytest.raises(SipParseError) as info:
        parse_message(invite(replace={"To": f"To: {to}"}))
    assert info.value.reason == "Bad To header"
    answer = make_response(info.value.request, 400, to_tag="new")
    assert answer.to.tag == "new"
    check_error(info.value)


@pytest.mark.parametrize("status, reason", [
    (200, "OK"), (420, "Bad Extension"), (488, "Not Acceptable Here"), (503, "Service Unavailable"),
    (513, "Message Too Large"), (299, "Success"), (699, "Global Failure"),
])
def test_default_reason_phrases(status, reason):
    req = parse_message(invite())
    assert make_response(req, status).reason == reason
    assert make_response(req, status, "Custom words").reason == "Custom words"


def test_make_response_refuses_bad_status_and_reason():
    req = parse_message(invite())
    for status in (99, 700, "200"):
        with pytest.raises(ValueError):
            make_response(req, status)
    with pytest.raises(ValueError):
        make_response(req, 400, "a\r\nVia: x")
    assert all(100 <= s <= 699 and r.isascii() for s, r in REASON_PHRASES.items())


def test_identifiers():
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100 and all(b.startswith("z9hG4bK") for b in branches)
    tags = {new_tag() for _ in range(100)}
    assert len(tags) == 100 and all(len(t) >= 8 for t in tags)
    call_id = new_call_id("10.0.0.2")
    assert call_id.endswith("@10.0.0.2") and call_id != new_call_id("10.0.0.2")
    # They are valid where they go.
    via = parse_via(f"SIP/2.0/UDP h;branch={new_branch()}")
    assert via.branch.startswith("z9hG4bK")
    assert parse_name_addr(f"<sip:a@h>;tag={new_tag()}").tag


# -- properties -------------------------------------------------------------------

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_error(raw, max_size=65536):
    try:
        msg = parse_message(raw, max_size)
    except SipParseError as error:
        check_error(error)
        return error
    assert isinstance(msg, (Request, Response))
    # Whatever was accepted writes out to something that reads back the same.
    again = parse_message(msg.to_bytes())
    assert parse_message(again.to_bytes()) == again
    assert again.body == msg.body
    return msg


def check_stream_items(items):
    for item in items:
        if isinstance(item, SipParseError):
            check_error(item)
        else:
            assert isinstance(item, (Request, Response, KeepAlive))


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_ever_raise_sip_parse_error(raw):
    parse_or_error(raw)
    parse_or_error(b"INVITE sip:a@b SIP/2.0\r\n" + raw)
    check_stream_items(StreamParser().feed(raw))


@st.composite
def mutated_messages(draw):
    """Valid messages with bytes flipped, inserted, deleted or cut off."""
    data = bytearray(draw(st.sampled_from([invite(b"v=0\r\n"), sip(OK_LINES), make_siprec_invite()[0]])
                          | sips.messages.map(lambda m: m.to_bytes())))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.sampled_from(b"\x00\r\n \t:;,<>\"@\xff\xc3") | st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\r\n ", b",", b"\"", b"\x80", b"l: 3\r\n",
                                                b"Via: x\r\n"]) | st.binary(max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 20))]
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(mutated_messages(), st.integers(200, 70000), st.data())
def test_mutated_messages_only_ever_raise_sip_parse_error(raw, max_size, data):
    parse_or_error(raw, max_size)
    parser = StreamParser(max_size)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=5)))
    items = feed_all(parser, [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])])
    check_stream_items(items)
    if parser.broken:
        assert isinstance(items[-1], SipParseError)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8), st.sampled_from([256, 1024, 65536]))
def test_stream_parser_on_arbitrary_chunks(chunks, max_size):
    parser = StreamParser(max_size)
    check_stream_items(feed_all(parser, chunks))


@given(sips.messages)
def test_generated_messages_round_trip(msg):
    assert parse_message(msg.to_bytes()) == msg


@given(sips.streams(), st.data())
def test_any_chunking_gives_the_same_messages(stream, data):
    raw, expected = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    parser = StreamParser()
    assert feed_all(parser, [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]) == expected
    assert not parser.broken


@given(sips.uris)
def test_uris_round_trip(uri):
    assert parse_uri(str(uri)) == uri


@given(sips.vias())
def test_vias_round_trip(via):
    assert parse_via(str(via)) == via


@given(sips.name_addrs())
def test_name_addrs_round_trip(addr):
    assert parse_name_addr(str(addr)) == addr


def test_an_empty_from_tag_is_not_answered_with_an_invalid_400():
    """Found by the mutation property test: a request whose From has an
    empty tag cannot be answered (the answer would copy the bad From)."""
    raw = (b"INVITE sip:srs@127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
           b"To: <sip:srs@127.0.0.1>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
           b"From: <sip:a@b>;tag=\r\n0\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(SipParseError) as e:
        parse_message(raw)
    assert e.value.request is None
