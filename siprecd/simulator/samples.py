"""Sample SIPREC INVITE bodies in each SRC vendor's flavour.

What the call simulator (``siprecd-src``) offers, and what the tests
parse: :func:`sample_invite` returns the multipart body (SDP plus
recording metadata), the Content-Type to send it with, the vendor's
identifying SIP headers (User-to-User, Cisco-Guid, ...) and the guid
siprecd should pick for it with the default ``sip.guid_sources`` order. The metadata follows what each vendor documents
(namespace, attribute spelling, where extension data goes); identifiers are
derived from *call_key* so that two sample calls never collide.

Body layout quirks that real SRCs produce (LF-only, quoted boundary, parts
reversed, per-part Content-Length, no closing delimiter, junk after the
metadata) are keyword options, passed on to
:func:`siprecd.siprec.multipart.build_multipart`.
"""

import uuid
from xml.sax.saxutils import escape, quoteattr

import attrs

from siprecd.siprec.multipart import DEFAULT_BOUNDARY, build_multipart

__all__ = ["FLAVOURS", "SiprecSample", "sample_invite", "sample_metadata", "sample_sdp"]

FLAVOURS = ("rfc7865", "oracle", "ribbon", "audiocodes", "cisco", "avaya-sbce", "genesys",
            "broadworks")

RFC7865_NS = "urn:ietf:params:xml:ns:recording:1"
DRAFT_NS = "urn:ietf:params:xml:ns:recording"
APKT_NS = "http://acmepacket.com/siprec/extensiondata"
AC_NS = "http://AudioCodes"
BROADWORKS_NS = "urn:ietf:params:xml:ns:siprec"
BROADWORKS_EXT_NS = "http://schema.broadsoft.com/broadWorksRecordingMetadata"

# The 16 hex digits of an Avaya UCID: node, sequence, UNIX time (README, "SIP and SIPREC").
DEFAULT_UCID_HEX = "0002D3DF63111234"
DEFAULT_CISCO_GUID = "3735928559-305419896-2882400001-42"

_PAYLOAD_TYPES = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000"), "G729": (18, "G729/8000"),
                  "G722": (9, "G722/8000"), "opus": (111, "opus/48000/2")}


@attrs.frozen
class SiprecSample:
    flavour: str
    content_type: str
    body: bytes
    sdp: bytes
    metadata: bytes
    headers: tuple[tuple[str, str], ...]   # extra INVITE headers the vendor sends
    labels: tuple[str, ...]
    guid: str                              # chosen with the default guid order
    call_id: str


def _ucid_decimal(ucid_hex):
    return (f"{int(ucid_hex[0:4], 16):05d}{int(ucid_hex[4:8], 16):05d}"
            f"{int(ucid_hex[8:16], 16):010d}")


def _cisco_decimal(value):
    return "-".join(f"{int(w):010d}" for w in value.split("-"))


def sample_sdp(labels=("1", "2"), *, host="192.0.2.10", first_port=16384,
               codecs=("PCMU", "PCMA"), telephone_event=True, line_end="\r\n"):
    """An SRC's SDP offer: one sendonly audio m-line per label."""
    pts = [_PAYLOAD_TYPES[c] for c in codecs]
    lines = ["v=0", f"o=SRC 1826 1826 IN IP4 {host}", "s=SIPREC", f"c=IN IP4 {host}", "t=0 0"]
    for i, label in enumerate(labels):
        fmts = [str(pt) for pt, _ in pts] + (["101"] if telephone_event else [])
        lines.append(f"m=audio {first_port + 2 * i} RTP/AVP {' '.join(fmts)}")
        lines += [f"a=rtpmap:{pt} {name}" for pt, name in pts]
        if telephone_event:
            lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]
        lines += [f"a=label:{label}", "a=sendonly", "a=ptime:20"]
    return (line_end.join(lines) + line_end).encode("ascii")


@attrs.frozen
class _Ids:
    session: str
    sip_session: str
    group: str
    participants: tuple[str, ...]
    streams: tuple[str, ...]


def _ids(call_key, labels, parties):
    def make(name):
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"siprecd-sample:{call_key}:{name}"))

    return _Ids(
        session=make("session"),
        sip_session=make("sip-session").replace("-", ""),
        group=make("group"),
        participants=tuple(make(f"participant-{i}") for i in range(parties)),
        streams=tuple(make(f"stream-{i}") for i in range(len(labels))),
    )


def _parties(labels, caller, callee):
    """(aor, name, [stream indexes it sends]) per participant.

    The caller sends on the first label, the callee on the second, further
    labels get parties of their own; with one label (a mixed stream) both
    send on it.
    """
    count = max(2, len(labels))
    out = []
    for i in range(count):
        aor, name = (caller if i == 0 else callee if i == 1
                     else (f"sip:party{i + 1}@cc.example.com", f"Party {i + 1}"))
        sends = [i] if i < len(labels) else ([0] if len(labels) == 1 else [])
        out.append((aor, name, sends))
    return out


def sample_metadata(flavour="rfc7865", labels=("1", "2"), *, call_key="sample",
                    data_mode="complete", ucid_hex=DEFAULT_UCID_HEX,
                    caller=("sip:+15551230001@carrier.example.net", "Caller"),
                    callee=("sip:agent2001@cc.example.com", "Agent 2001")):
    """Recording metadata for *labels* in *flavour*'s dialect (bytes)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    parties = _parties(labels, caller, callee)
    ids = _ids(call_key, labels, len(parties))
    q = quoteattr
    if flavour == "oracle":
        return _oracle_metadata(labels, parties, ids, data_mode, ucid_hex)
    if flavour == "broadworks":
        return _broadworks_metadata(labels, parties, ids, data_mode, call_key)
    p = "tns:" if flavour == "ribbon" else ""
    xmlns = (f' xmlns:tns="{RFC7865_NS}"' if flavour == "ribbon"
             else f' xmlns="{RFC7865_NS}"')
    if flavour == "audiocodes":
        xmlns += f' xmlns:ac="{AC_NS}"'
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f"<{p}recording{xmlns}>",
           f"  <{p}datamode>{data_mode}</{p}datamode>",
           f"  <{p}group group_id={q(ids.group)}/>",
           f"  <{p}session session_id={q(ids.session)}>"]
    remote = ";remote=00000000000000000000000000000000" if flavour == "cisco" else ""
    out.append(f"    <{p}sipSessionID>{ids.sip_session}{remote}</{p}sipSessionID>")
    out.append(f"    <{p}group-ref>{escape(ids.group)}</{p}group-ref>")
    if flavour == "audiocodes":
        out += ["    <extensiondata>",
                '      <ac:AvayaUCID xmlns="urn:ietf:params:xml:ns:Avaya">'
                f"FA08{ucid_hex}</ac:AvayaUCID>",
                "    </extensiondata>"]
    if flavour == "ribbon":
        out += ["    <tns:extensiondata>", "      <tns:callData>",
                f"        <tns:gcid>{int(ids.group[:6], 16)}</tns:gcid>",
                f"        <tns:callid>{escape(call_key)}@192.0.2.70</tns:callid>",
                "      </tns:callData>", "    </tns:extensiondata>"]
    out.append(f"  </{p}session>")
    for pid, (aor, name, _) in zip(ids.participants, parties):
        out += [f"  <{p}participant participant_id={q(pid)}>",
                f"    <{p}nameID aor={q(aor)}><{p}name>{escape(name)}</{p}name></{p}nameID>",
                f"  </{p}participant>"]
    for sid, label in zip(ids.streams, labels):
        out.append(f"  <{p}stream stream_id={q(sid)} session_id={q(ids.session)}>"
                   f"<{p}label>{escape(label)}</{p}label></{p}stream>")
    for pid, (_, _, sends) in zip(ids.participants, parties):
        out.append(f"  <{p}participantstreamassoc participant_id={q(pid)}>")
        out += [f"    <{p}send>{ids.streams[i]}</{p}send>" for i in sends]
        out += [f"    <{p}recv>{sid}</{p}recv>" for j, sid in enumerate(ids.streams)
                if j not in sends]
        out.append(f"  </{p}participantstreamassoc>")
    out.append(f"</{p}recording>")
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


def _oracle_metadata(labels, parties, ids, data_mode, ucid_hex):
    q = quoteattr
    out = ["<?xml version='1.0' encoding='UTF-8'?>",
           f"<recording xmlns='{DRAFT_NS}'>",
           f"  <datamode>{data_mode}</datamode>",
           f"  <session id={q(ids.session)}>",
           "    <associate-time>2024-04-11T09:15:42</associate-time>",
           f'    <extensiondata xmlns:apkt="{APKT_NS}">',
           f"      <apkt:ucid>00FA08{ucid_hex};encoding=hex</apkt:ucid>",
           "      <apkt:callerOrig>true</apkt:callerOrig>",
           "    </extensiondata>",
           "  </session>"]
    for n, (pid, (aor, name, sends)) in enumerate(zip(ids.participants, parties)):
        out += [f"  <participant id={q(pid)} session={q(ids.session)}>",
                f"    <nameID aor={q(aor)}><name>{escape(name)}</name></nameID>"]
        out += [f"    <send>{ids.streams[i]}</send>" for i in sends]
        out += [f"    <recv>{sid}</recv>" for j, sid in enumerate(ids.streams) if j not in sends]
        out += [f'    <extensiondata xmlns:apkt="{APKT_NS}">',
                f"      <apkt:callingParty>{'true' if n == 0 else 'false'}</apkt:callingParty>",
                "    </extensiondata>",
                "  </participant>"]
    mode = "mixed" if len(labels) == 1 else "separate"
    for sid, label in zip(ids.streams, labels):
        out.append(f"  <stream id={q(sid)} session={q(ids.session)}>"
                   f"<label>{escape(label)}</label><mode>{mode}</mode></stream>")
    out.append("</recording>")
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


def broadworks_tracking_id(call_key):
    """The extTrackingID a BroadWorks sample carries (``<number>:<leg>``)."""
    return f"{uuid.uuid5(uuid.NAMESPACE_URL, call_key).int % 10**7}:1"


def _broadworks_metadata(labels, parties, ids, data_mode, call_key):
    """Cisco BroadWorks' form, as its SIPREC interface describes it: root
    ``recording_metadata`` in urn:ietf:params:xml:ns:siprec, ``id``/``session``
    attributes, send/recv inside the participant, and BroadWorks' own call
    identifiers in a ``broadWorksRecordingMetadata`` extension."""
    q = quoteattr
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<recording_metadata xmlns="{BROADWORKS_NS}">',
           f"  <dataMode>{data_mode}</dataMode>",
           f"  <session id={q(ids.session)}>",
           "    <start-time>2024-04-11T09:15:42.000Z</start-time>",
           "  </session>"]
    for pid, (aor, name, sends) in zip(ids.participants, parties):
        out += [f"  <participant id={q(pid)} session={q(ids.session)}>",
                f"    <nameID aor={q(aor)}><name>{escape(name)}</name></nameID>"]
        out += [f"    <send>{ids.streams[i]}</send>" for i in sends]
        out += [f"    <recv>{sid}</recv>" for j, sid in enumerate(ids.streams) if j not in sends]
        out.append("  </participant>")
    for sid, label in zip(ids.streams, labels):
        out.append(f"  <stream id={q(sid)} session={q(ids.session)}>"
                   f"<label>{escape(label)}</label></stream>")
    out += ["  <extensiondata>",
            f'    <broadWorksRecordingMetadata xmlns="{BROADWORKS_EXT_NS}">',
            f"      <extTrackingID>{broadworks_tracking_id(call_key)}</extTrackingID>",
            "      <serviceProviderID>sp-example</serviceProviderID>",
            "      <groupID>contact-centre</groupID>",
            "      <userID>agent2001@cc.example.com</userID>",
            f"      <callID>callhalf-{int(ids.group[:6], 16)}:0</callID>",
            "      <recordingMode>Always</recordingMode>",
            "    </broadWorksRecordingMetadata>",
            "  </extensiondata>",
            "</recording_metadata>"]
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


def _vendor_headers(flavour, ucid_hex, cisco_guid, genesys_uuid):
    if flavour == "avaya-sbce":
        return (("User-to-User", f"00FA08{ucid_hex};encoding=hex"),)
    if flavour == "cisco":
        return (("Cisco-Guid", cisco_guid),)
    if flavour == "genesys":
        return (("X-Genesys-CallUUID", genesys_uuid),)
    return ()


def _expected_guid(flavour, ids, call_key, ucid_hex, cisco_guid, genesys_uuid):
    if flavour in ("oracle", "audiocodes", "avaya-sbce"):
        return _ucid_decimal(ucid_hex)
    if flavour == "cisco":
        return _cisco_decimal(cisco_guid)
    if flavour == "genesys":
        return genesys_uuid
    if flavour == "broadworks":
        return broadworks_tracking_id(call_key)
    return ids.sip_session


def sample_invite(flavour="rfc7865", *, labels=("1", "2"), call_key="sample",
                  host="192.0.2.10", first_port=16384, codecs=("PCMU", "PCMA"),
                  ucid_hex=DEFAULT_UCID_HEX, cisco_guid=DEFAULT_CISCO_GUID,
                  genesys_uuid=None, reverse_parts=False, trailing_junk=b"",
                  boundary=DEFAULT_BOUNDARY, **layout):
    """A complete sample: body, Content-Type, vendor headers and expected guid.

    *layout* goes to ``build_multipart`` (``line_end``, ``quote_boundary``,
    ``part_content_length``, ``closing``, ``preamble``, ``epilogue``);
    *reverse_parts* puts the metadata first; *trailing_junk* is appended to
    the metadata inside its part (text after ``</recording>``).
    """
    labels = tuple(labels)
    genesys_uuid = genesys_uuid or uuid.uuid5(
        uuid.NAMESPACE_URL, f"siprecd-sample:{call_key}:genesys").hex.upper()
    line_end = layout.get("line_end", "\r\n")
    sdp = sample_sdp(labels, host=host, first_port=first_port, codecs=codecs,
                     line_end=line_end)
    metadata = sample_metadata(flavour, labels, call_key=call_key, ucid_hex=ucid_hex)
    if line_end != "\r\n":
        metadata = metadata.replace(b"\r\n", line_end.encode("ascii"))
    parts = [("application/sdp", sdp), ("application/rs-metadata+xml", metadata + trailing_junk)]
    if reverse_parts:
        parts.reverse()
    content_type, body = build_multipart(parts, boundary, **layout)
    ids = _ids(call_key, labels, max(2, len(labels)))
    return SiprecSample(
        flavour=flavour,
        content_type=content_type,
        body=body,
        sdp=sdp,
        metadata=metadata,
        headers=_vendor_headers(flavour, ucid_hex, cisco_guid, genesys_uuid),
        labels=labels,
        guid=_expected_guid(flavour, ids, call_key, ucid_hex, cisco_guid, genesys_uuid),
        call_id=f"{call_key}@{host}",
    )
