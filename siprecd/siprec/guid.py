"""Finding the call identifier (``guid``) an API client will know the call by.

Contact centres name a call by whatever their platform uses: Avaya's UCID
(in ``User-to-User``, an ``X-UCID``-style header, or copied into metadata
by an Oracle or AudioCodes SBC), Cisco's GUID, a Genesys UUID, BroadWorks'
external tracking id or call id, the SIPREC session id, or at worst the SIP
Call-ID. :func:`find_identifiers` collects
every candidate a recording INVITE carries and :func:`choose_guid` picks one
in the configured order (``sip.guid_sources``); all of them are
stored with the call so that a client can be matched whichever it uses.

Normalisation makes the same call look the same from every source: an Avaya
UCID is always the 20-digit decimal form, a Cisco GUID the four zero-padded
decimal words. Sans-IO and total: odd input gives ``None`` or the raw value,
never an exception.
"""

import re

import attrs

__all__ = [
    "CallIdentifier",
    "GENESYS_HEADERS",
    "SOURCES",
    "avaya_uui_to_ucid",
    "choose_guid",
    "cisco_guid",
    "find_identifiers",
    "normalise_ucid",
]

# Every source, in the default order (siprecd.config.Sip.guid_sources).
SOURCES = (
    "avaya-uui", "x-ucid", "x-isr-ucid", "oracle-ucid", "audiocodes-ucid",
    "cisco-guid", "genesys-uuid", "broadworks-tracking-id", "broadworks-call-id",
    "metadata-session", "call-id",
)

# Genesys Engage's SIP Server sends X-Genesys-CallUUID (AudioCodes copies it
# into metadata as GenesysUUID); Oracle's UCID SPL names Genesys-UUID;
# Genesys Cloud carries its conversation id in x-inin-cnv.
GENESYS_HEADERS = ("X-Genesys-CallUUID", "Genesys-UUID", "X-Genesys-UUID", "x-inin-cnv")

_HEX = re.compile(r"[0-9A-Fa-f]+")
_DECIMAL_UCID = re.compile(r"[0-9]{20}")
_CISCO_DECIMAL = re.compile(r"([0-9]{1,10})-([0-9]{1,10})-([0-9]{1,10})-([0-9]{1,10})")
_CISCO_HEX = re.compile(r"[0-9A-Fa-f]{32}")
# The UCID IE: type 0xFA, length 8 (Avaya UUI, "00FA08" + 16 hex digits).
_UCID_IE, _UCID_LEN = 0xFA, 8


@attrs.frozen
class CallIdentifier:
    source: str   # one of SOURCES
    value: str    # normalised: decimal UCID, formatted Cisco GUID, ...
    raw: str      # as it was found


def _ucid_from_payload(payload):
    """8 bytes -> node (5 digits) + sequence (5 digits) + UNIX time (10 digits)."""
    node = int.from_bytes(payload[0:2], "big")
    sequence = int.from_bytes(payload[2:4], "big")
    stamp = int.from_bytes(payload[4:8], "big")
    return f"{node:05d}{sequence:05d}{stamp:010d}"


def _walk_ies(data, start):
    """Follow type/length/value IEs from *start*; the UCID payload or None."""
    pos = start
    while pos + 2 <= len(data):
        kind, length = data[pos], data[pos + 1]
        value = data[pos + 2:pos + 2 + length]
        if len(value) < length:
            return None
        if kind == _UCID_IE and length == _UCID_LEN:
            return value
        pos += 2 + length
    return None


def avaya_uui_to_ucid(uui):
    """The 20-digit decimal UCID in an Avaya ``User-to-User`` value, or None.

    ``"00FA080002D3DF63111234;encoding=hex"`` -> ``"00002542391662063156"``.
    The value is hex (any case), optionally quoted, with parameters after
    ';'. It is read as Avaya lays it out -- a protocol discriminator byte,
    then type/length/value IEs -- so other IEs before or after the UCID
    (type 0xFA, length 8) do not matter; a value that does not walk cleanly
    (AudioCodes drops the leading ``00``, some SBCs truncate) is searched for
    ``FA08`` at a byte boundary instead.
    """
    if not isinstance(uui, str):
        return None
    text = uui.split(";", 1)[0].strip().strip('"').strip()
    if len(text) < 20 or len(text) % 2 or not _HEX.fullmatch(text):
        return None
    data = bytes.fromhex(text)
    # A leading 0x00 is the protocol discriminator; without it the IEs start at once.
    starts = (1, 0) if data[0] == 0 else (0, 1)
    payload = _walk_ies(data, starts[0]) or _walk_ies(data, starts[1])
    if payload is None:
        for pos in range(0, len(data) - 9):
            if data[pos] == _UCID_IE and data[pos + 1] == _UCID_LEN:
                payload = data[pos + 2:pos + 10]
                break
    return _ucid_from_payload(payload) if payload is not None else None


def normalise_ucid(value):
    """A UCID-bearing value as the 20-digit decimal UCID, or None if it is not one.

    Accepted: the decimal form itself, and the hex UUI forms
    (``00FA08...``, ``FA08...``, with or without ``;encoding=hex``).
    """
    if not isinstance(value, str):
        return None
    text = value.strip().strip('"').strip()
    if _DECIMAL_UCID.fullmatch(text):
        return text
    return avaya_uui_to_ucid(text)


def cisco_guid(value):
    """A ``Cisco-Guid`` value as ``NNNNNNNNNN-NNNNNNNNNN-NNNNNNNNNN-NNNNNNNNNN``, or None.

    CUBE writes four decimal 32-bit words without padding
    (``1234-5-678901-2``); each is zero-padded to 10 digits. The same GUID
    in 32 hex digits (as some SBCs copy it) is converted word by word.
    """
    if not isinstance(value, str):
        return None
    text = value.strip().strip('"').strip()
    match = _CISCO_DECIMAL.fullmatch(text)
    if match:
        words = [int(w) for w in match.groups()]
    elif _CISCO_HEX.fullmatch(text):
        words = [int(text[i:i + 8], 16) for i in range(0, 32, 8)]
    else:
        return None
    if any(w > 0xFFFFFFFF for w in words):
        return None
    return "-".join(f"{w:010d}" for w in words)


def _header_values(headers, name):
    if headers is None:
        return []
    try:
        values = headers.get_all(name) or []
    except (KeyError, LookupError):
        return []
    return [v for v in values if isinstance(v, str)]


def find_identifiers(headers, metadata, call_id):
    """Every call identifier the INVITE carries, in :data:`SOURCES` order.

    *headers* is anything with ``get_all(name) -> list[str]`` (names
    case-insensitive); *metadata* a RecordingMetadata or None. Each source
    contributes each distinct value once.
    """
    found = []
    seen = set()

    def add(source, value, raw):
        value = (value or "").strip()
        if value and (source, value) not in seen:
            seen.add((source, value))
            found.append(CallIdentifier(source, value, raw))

    for raw in _header_values(headers, "User-to-User"):
        for piece in raw.split(","):
            add("avaya-uui", avaya_uui_to_ucid(piece), raw)
    for source, header in (("x-ucid", "X-UCID"), ("x-isr-ucid", "X-ISR-UCID")):
        for raw in _header_values(headers, header):
            add(source, normalise_ucid(raw) or raw.strip(), raw)
    if metadata is not None:
        for source, raw in (("oracle-ucid", metadata.ucid),
                            ("audiocodes-ucid", metadata.avaya_ucid)):
            if raw:
                add(source, normalise_ucid(raw) or raw.strip(), raw)
    for raw in _header_values(headers, "Cisco-Guid"):
        add("cisco-guid", cisco_guid(raw) or raw.strip(), raw)
    for header in GENESYS_HEADERS:
        for raw in _header_values(headers, header):
            add("genesys-uuid", raw.strip().strip('"'), raw)
    if metadata is not None:
        if metadata.genesys_uuid:
            add("genesys-uuid", metadata.genesys_uuid, metadata.genesys_uuid)
        # BroadWorks names its calls in its own metadata extension.
        for source, raw in (("broadworks-tracking-id", metadata.broadworks_tracking_id),
                            ("broadworks-call-id", metadata.broadworks_call_id)):
            if raw:
                add(source, raw.strip(), raw)
        # A sipSessionID may be a Session-ID (RFC 7989) with ";remote=":
        # the local UUID alone names the call.
        for raw in metadata.sip_session_ids:
            add("metadata-session", raw.split(";", 1)[0], raw)
        for raw in metadata.session_ids:
            add("metadata-session", raw, raw)
    if isinstance(call_id, str):
        add("call-id", call_id, call_id)
    return found


def choose_guid(candidates, order=SOURCES):
    """The candidate from the earliest source in *order*; Call-ID as the last resort.

    Sources missing from *order* are not used, except Call-ID, which is
    taken when nothing else is (and failing that, the first candidate).
    Raises ValueError only when there are no candidates at all.
    """
    for source in order:
        for candidate in candidates:
            if candidate.source == source:
                return candidate
    for candidate in candidates:
        if candidate.source == "call-id":
            return candidate
    if candidates:
        return candidates[0]
    raise ValueError("no call identifier at all")
