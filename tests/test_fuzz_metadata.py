"""Fuzzing rs-metadata (RFC 7865 XML): random bytes, mutations of every
vendor fixture with XML's dangerous constructs spliced in (DTDs, entities,
external references, CDATA, character references, namespace prefixes,
encodings), and random well-formed trees. ``parse_metadata`` and
``merge_metadata`` may only raise MetadataError, and never take long
(entity expansion is off, size and depth are bounded).

The fixed hostile documents (billion laughs, XXE, external DTD, parameter
entities, quadratic blow-up, depth bomb) are in tests/test_siprec_metadata.py.
"""

import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siprecd.siprec.metadata import MetadataError, merge_metadata, parse_metadata

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "siprec").glob("*.xml"))
SEEDS = [p.read_bytes() for p in FIXTURES]
# Bounded work: the slowest document a fuzzer may hand in must parse well
# within this (a generous bound for a loaded CI machine).
SLOW = 2.0

TOKENS = [
    b"<!DOCTYPE recording [<!ENTITY a 'aaaa'>]>", b"<!DOCTYPE r SYSTEM 'http://x/d.dtd'>",
    b"<!ENTITY x SYSTEM 'file:///etc/passwd'>", b"<!ENTITY % p SYSTEM 'http://x/p'> %p;",
    b"&a;", b"&x;", b"&lt;", b"&#0;", b"&#x110000;", b"&#65;", b"<![CDATA[", b"]]>",
    b"<?xml version='1.0' encoding='utf-16'?>", b"<?xml version='1.0' encoding='bogus'?>",
    b"<?pi x?>", b"<!-- c -->", b"xmlns:tns='urn:x'", b"tns:", b"apkt:", b"xmlns=''",
    b"<recording>", b"</recording>", b"<participant>", b"<stream>", b"<session>",
    b"participant_id=", b"session_id=", b"stream_id=", b"<label>", b"</label>",
    b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\r\n", b"'", b'"', b"<", b">", b"/>", b"=",
    b"<a>" * 40, b"</a>" * 40,
]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 4))
        i = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(i, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            del data[i:i + draw(st.integers(1, 80))]
        elif op == 2:
            data[i:i] = draw(st.sampled_from(TOKENS))
        elif op == 3:
            j = draw(st.integers(0, len(data)))
            data[i:i] = data[j:j + draw(st.integers(1, 300))]
        else:
            data = data[:i]
    return bytes(data)


TAGS = ["recording", "datamode", "dataMode", "session", "group", "participant", "nameID",
        "name", "aor", "send", "recv", "stream", "label", "associate-time", "mode",
        "participantstreamassoc", "sessionrecordingassoc", "extensiondata", "apkt:ucid",
        "apkt:callerOrig", "tns:callData", "sipSessionID", "AvayaUCID", "x"]
ATTRIBUTES = ["session_id", "participant_id", "stream_id", "group_id", "id", "session",
              "aor", "xmlns", "xmlns:apkt", "xmlns:tns", "xml:lang"]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def trees(depth=6):
    def element(children):
        return st.builds(
            lambda tag, attributes, body, kids: (
                f"<{tag}" + "".join(f' {k}="{v}"' for k, v in attributes.items()) + ">"
                + _escape(body) + "".join(kids) + f"</{tag}>"),
            st.sampled_from(TAGS), st.dictionaries(st.sampled_from(ATTRIBUTES),
                                                   text.map(_escape), max_size=3),
            text, st.lists(children, max_size=4))

    leaf = st.builds(lambda tag, body: f"<{tag}>{_escape(body)}</{tag}>", st.sampled_from(TAGS),
                     text)
    return st.recursive(leaf, element, max_leaves=30).map(
        lambda inner: (f'<recording xmlns="urn:ietf:params:xml:ns:recording:1">{inner}'
                       "</recording>").encode("utf-8"))


def _escape(value):
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def parse(data):
    """The parse, bounded in time; None when refused with MetadataError."""
    started = time.perf_counter()
    try:
        return parse_metadata(data)
    except MetadataError:
        return None
    finally:
        assert time.perf_counter() - started < SLOW, f"{len(data)} bytes took too long"


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    parse(data)


@FUZZ
@given(mutated())
def test_mutated_vendor_documents(data):
    parse(data)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), trees())
def test_random_trees_parse_and_merge(first, second):
    a, b = parse(first), parse(second)
    if a is not None and b is not None:
        merged = merge_metadata(a, b)
        assert merged is not None


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 60), st.sampled_from([b"<a>", b"<apkt:x>", b"<tns:y xmlns:tns='u'>"]))
def test_nesting_around_the_depth_limit(depth, opener):
    closer = b"</" + opener[1:].split(b" ")[0].rstrip(b">") + b">"
    doc = b"<recording>" + opener * depth + closer * depth + b"</recording>"
    result = parse(doc)
    if depth + 1 > 32:
        assert result is None
