"""What the simulated SRC offers: SDP, RFC 7865 metadata and call identifiers.

The metadata and the vendor's identifying headers come from
:mod:`siprecd.simulator.samples` (one dialect per SBC vendor); this
module adds fresh identifiers for every call, the identifier header a
chosen *guid style* sends, and our own SDP (the simulator's real ports,
one codec, ``a=inactive`` for hold).

The guid the SRS should pick is worked out with siprecd's own identifier
rules (:mod:`siprecd.siprec.guid`) in a given source order, the default
being siprecd's default ``sip.guid_sources``. The simulator prints it, so a
user can see which identifier an API client would use for the call.
"""

import secrets
import uuid

import attrs

from siprecd.simulator.samples import FLAVOURS, sample_invite
from siprecd.sip.message import Headers
from siprecd.siprec import guid as guidmod
from siprecd.siprec.metadata import MetadataError, parse_metadata
from siprecd.siprec.multipart import build_multipart

__all__ = [
    "FLAVOURS",
    "GUID_STYLES",
    "LABELS",
    "CallIdentity",
    "InviteContent",
    "new_identity",
    "offer_sdp",
    "build_invite",
    "PAYLOAD_TYPES",
    "TELEPHONE_EVENT_PT",
]

# Stream i is sent on the i-th audio m-line with label LABELS[i]; in the
# metadata the caller (customer) sends label "1", the callee (agent) "2".
LABELS = ("1", "2")
ROLES = ("customer", "agent")

PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8, "G729": 18, "G722": 9, "OPUS": 111}
# a=rtpmap encodings (RFC 3551; RFC 7587 for Opus, always /48000/2).
ENCODINGS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G729": "G729/8000",
             "G722": "G722/8000", "OPUS": "opus/48000/2"}
# RTP clock of each codec (G.722's is 8 kHz for 16 kHz audio, RFC 3551).
CLOCK_RATES = {"PCMU": 8000, "PCMA": 8000, "G729": 8000, "G722": 8000, "OPUS": 48000}
TELEPHONE_EVENT_PT = 101

# Which identifier header the SRC sends. "vendor": whatever the flavour's
# SBC sends by itself (Avaya SBCE: User-to-User, CUBE: Cisco-Guid, Genesys:
# X-Genesys-CallUUID, others none). Any other style replaces that header.
GUID_STYLES = ("vendor", "avaya-uui", "x-ucid", "x-isr-ucid", "cisco-guid", "genesys",
               "session-id", "call-id")


@attrs.frozen
class CallIdentity:
    """Identifiers of one call, fresh for every call and every run."""

    call_id: str
    call_key: str        # seeds the metadata's ids
    ucid_hex: str        # Avaya UCID: node (2 bytes), sequence (2), UNIX time (4)
    cisco_guid: str      # four decimal 32-bit words, as CUBE writes them
    genesys_uuid: str

    @property
    def ucid_decimal(self):
        return guidmod.avaya_uui_to_ucid("00FA08" + self.ucid_hex)


def new_identity(local_host, wallclock, sequence):
    """A new call's identifiers. Random parts come from ``secrets``, not
    from the run's seed: two runs must never reuse a guid, or the SRS
    would take the second call for the first."""
    node = secrets.randbelow(0xFFFF) + 1
    ucid_hex = f"{node:04X}{sequence & 0xFFFF:04X}{int(wallclock) & 0xFFFFFFFF:08X}"
    words = [secrets.randbits(32) for _ in range(4)]
    host = f"[{local_host}]" if ":" in local_host else local_host
    return CallIdentity(
        call_id=f"{secrets.token_hex(16)}@{host}",
        call_key=uuid.uuid4().hex,
        ucid_hex=ucid_hex,
        cisco_guid="-".join(str(w) for w in words),
        genesys_uuid=uuid.uuid4().hex.upper(),
    )


def _addrtype(host):
    return "IP6" if ":" in host else "IP4"


def offer_sdp(host, ports, codec, *, direction="sendonly", session_id="1", version=1,
              labels=LABELS, telephone_event=True, crypto=None):
    """Our SDP offer: one audio m-line per stream, one codec each (plus
    telephone-event), the label that ties it to the metadata, and
    *direction* (``sendonly``; ``inactive`` while on hold). *crypto*, one
    ``a=crypto`` value per stream, makes the m-lines RTP/SAVP (SDES-SRTP)."""
    codec = codec.upper()
    pt = PAYLOAD_TYPES[codec]
    lines = ["v=0", f"o=siprecd-src {session_id} {version} IN {_addrtype(host)} {host}",
             "s=SIPREC", f"c=IN {_addrtype(host)} {host}", "t=0 0"]
    for i, (port, label) in enumerate(zip(ports, labels)):
        formats = f"{pt} {TELEPHONE_EVENT_PT}" if telephone_event else f"{pt}"
        proto = "RTP/SAVP" if crypto else "RTP/AVP"
        lines.append(f"m=audio {port} {proto} {formats}")
        if crypto:
            lines.append(f"a=crypto:{crypto[i]}")
        lines.append(f"a=rtpmap:{pt} {ENCODINGS[codec]}")
        if codec == "G729":
            lines.append(f"a=fmtp:{pt} annexb=no")  # we send no SID frames
        if telephone_event:
            lines += [f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/{CLOCK_RATES[codec]}",
                      f"a=fmtp:{TELEPHONE_EVENT_PT} 0-15"]
        lines += ["a=ptime:20", f"a=label:{label}", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


@attrs.frozen
class InviteContent:
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...]   # identifier headers to add to the INVITE
    metadata: bytes
    guid: str                              # what the SRS should choose
    guid_source: str                       # where it comes from (guid.SOURCES)


def _style_headers(style, identity, flavour_headers):
    if style == "vendor":
        return tuple(flavour_headers)
    if style == "avaya-uui":
        return (("User-to-User", f"00FA08{identity.ucid_hex};encoding=hex"),)
    if style == "x-ucid":
        return (("X-UCID", identity.ucid_decimal),)
    if style == "x-isr-ucid":
        return (("X-ISR-UCID", identity.ucid_decimal),)
    if style == "cisco-guid":
        return (("Cisco-Guid", identity.cisco_guid),)
    if style == "genesys":
        return (("X-Genesys-CallUUID", identity.genesys_uuid),)
    if style in ("session-id", "call-id"):
        return ()
    raise ValueError(f"unknown guid style {style!r}; expected one of {', '.join(GUID_STYLES)}")


def build_invite(flavour, guid_style, identity, sdp, guid_order=guidmod.SOURCES):
    """The INVITE's body, Content-Type, identifier headers and expected guid."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    sample = sample_invite(
        flavour, labels=LABELS, call_key=identity.call_key, ucid_hex=identity.ucid_hex,
        cisco_guid=identity.cisco_guid, genesys_uuid=identity.genesys_uuid,
    )
    headers = _style_headers(guid_style, identity, sample.headers)
    content_type, body = build_multipart(
        [("application/sdp", sdp), ("application/rs-metadata+xml", sample.metadata)]
    )
    chosen = expected_guid(headers, sample.metadata, identity.call_id, guid_order)
    return InviteContent(content_type, body, headers, sample.metadata, chosen.value, chosen.source)


def expected_guid(headers, metadata, call_id, order=guidmod.SOURCES):
    """The CallIdentifier an SRS with guid source *order* picks."""
    try:
        parsed = parse_metadata(metadata) if metadata else None
    except MetadataError:
        parsed = None
    found = guidmod.find_identifiers(Headers(headers), parsed, call_id)
    return guidmod.choose_guid(found, tuple(order))
