"""SDP for a recording server: parse an SRC's offer, choose what to take,
write the answer (RFC 8866 SDP, RFC 3264 offer/answer, RFC 7866 SRS rules).

Sans-IO: text in, frozen objects or answer bytes out.

The parser is tolerant where real SBCs are sloppy (LF-only line ends, trailing
blanks, lines out of order, unknown lines and attributes, no ``s=``/``t=``,
junk after the last valid line when no m-line follows it)
and strict where a misreading would record the wrong thing or echo garbage
(``v=0``, the shape of ``o=``, ``m=``, ``c=``, ``a=rtpmap``, ``a=fmtp``,
``a=rtcp``). Anything it refuses raises :class:`SdpError`, and nothing else,
so the session layer can answer 400/488 instead of crashing.

Why not a library: the SDP parsers on PyPI are WebRTC-shaped (they drop or
reorder lines we must echo, or accept any garbage silently); what a recorder
needs from SDP is small enough to keep here, fuzzed.
"""

import ipaddress
import re

import attrs

__all__ = [
    "SdpError",
    "Codec",
    "MediaDescription",
    "SessionDescription",
    "StreamChoice",
    "DIRECTIONS",
    "parse_sdp",
    "negotiate",
    "answer_direction",
    "format_answer",
    "format_offer",
    "offer_codecs",
    "check_reoffer",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 3551 static audio payload types: (name, clock rate, channels).
_STATIC_PAYLOADS = {
    0: ("PCMU", 8000, None),
    3: ("GSM", 8000, None),
    4: ("G723", 8000, None),
    5: ("DVI4", 8000, None),
    6: ("DVI4", 16000, None),
    7: ("LPC", 8000, None),
    8: ("PCMA", 8000, None),
    9: ("G722", 8000, None),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, None),
    12: ("QCELP", 8000, None),
    13: ("CN", 8000, None),
    14: ("MPA", 90000, None),
    15: ("G728", 8000, None),
    16: ("DVI4", 11025, None),
    17: ("DVI4", 22050, None),
    18: ("G729", 8000, None),
}

# What the media plane decodes, with the RTP clock rate it is offered at.
_DECODABLE = {"PCMU": 8000, "PCMA": 8000, "G729": 8000, "G722": 8000, "OPUS": 48000}
# RFC 7587 §7: Opus is always offered as opus/48000/2, whatever it carries.
_CHANNELS = {"OPUS": (2,)}

TELEPHONE_EVENT = "TELEPHONE-EVENT"

# Plain RTP, and SDES-keyed SRTP (RFC 4568; pylibsrtp can do it). DTLS-SRTP
# (UDP/TLS/...) and RTP over TCP are never taken: nothing here speaks them.
_PLAIN_RTP = frozenset({"RTP/AVP", "RTP/AVPF"})
_SDES_SRTP = frozenset({"RTP/SAVP", "RTP/SAVPF"})

# Digits are matched by hand: int() also takes "+5", " 5", "5_0" and
# non-ASCII digits, none of which are SDP.
_UINT = re.compile(r"[0-9]{1,10}", re.ASCII)
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+", re.ASCII)
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?", re.ASCII)
_DOTTED = re.compile(r"[0-9.]+", re.ASCII)


def _attributes_repr(attributes):
    """repr() of attribute pairs with SDES keys left out: logs show
    ``('crypto', '...')``, never the key."""
    return repr(tuple((n, "...") if n.lower() == "crypto" else (n, v) for n, v in attributes))


class SdpError(ValueError):
    """The SDP cannot be used; ``args[0]`` is a short reason fit for a log
    line or a SIP reason phrase."""


@attrs.frozen
class Codec:
    """One RTP payload type offered on an m-line."""

    payload_type: int
    # Upper-cased encoding name; "" for a dynamic type with no a=rtpmap.
    name: str
    clock_rate: int
    channels: int | None
    fmtp: str | None


@attrs.frozen
class MediaDescription:
    """One m-section, with session-level defaults (c=, direction) applied."""

    index: int
    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    codecs: tuple[Codec, ...]
    connection: str | None
    label: str | None
    direction: str
    crypto: tuple[str, ...] = attrs.field(repr=False)  # SDES keys: never in a log line
    rtcp: tuple[int, str | None] | None
    ptime: int | None
    attributes: tuple[tuple[str, str | None], ...] = attrs.field(repr=_attributes_repr)

    @property
    def on_hold(self):
        """True when the SRC says no media will flow: ``a=inactive``, or the
        RFC 2543 way, a connection address of 0.0.0.0 (or ``::``)."""
        return self.direction == "inactive" or _is_unspecified(self.connection)

    @property
    def is_audio_rtp(self):
        return self.media.lower() == "audio" and _is_rtp(self.proto)


@attrs.frozen
class SessionDescription:
    version: int
    # username, sess-id, sess-version, nettype, addrtype, address
    origin: tuple[str, str, str, str, str, str]
    session_name: str
    connection: str | None
    direction: str | None
    attributes: tuple[tuple[str, str | None], ...] = attrs.field(repr=_attributes_repr)
    media: tuple[MediaDescription, ...] = attrs.field()
    # Lines of junk after the last valid line, left unread (0: none).
    ignored_lines: int = attrs.field(default=0, eq=False)

    def audio(self):
        """The audio m-lines in SDP order (roles are assigned by this order)."""
        return [m for m in self.media if m.media.lower() == "audio"]


@attrs.frozen
class StreamChoice:
    """What the answer takes on one m-line."""

    codec: Codec
    # Echoed only when offered, with the offered payload type and fmtp.
    telephone_event: Codec | None = None
    # The answer's a=crypto value once SRTP keys exist; negotiate() never
    # sets it (keys are the session's business), attrs.evolve() does.
    crypto: str | None = attrs.field(default=None, repr=False)


def _is_rtp(proto):
    return "RTP/" in proto.upper()


def _is_unspecified(address):
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _uint(text, what, high=None):
    if not _UINT.fullmatch(text):
        raise SdpError(f"{what} is not a number: {_show(text)}")
    value = int(text)
    if high is not None and value > high:
        raise SdpError(f"{what} out of range: {value}")
    return value


def _show(text):
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _address(addrtype, address, what):
    """Check one c= or a=rtcp address against its type; return it without
    the multicast /ttl/count suffix."""
    address = address.split("/", 1)[0]
    if addrtype == "IP4":
        if _DOTTED.fullmatch(address):
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise SdpError(f"{what}: bad IPv4 address {_show(address)}") from None
            return address
    elif addrtype == "IP6":
        if ":" in address:
            try:
                ipaddress.IPv6Address(address)
            except ValueError:
                raise SdpError(f"{what}: bad IPv6 address {_show(address)}") from None
            return address
    else:
        raise SdpError(f"{what}: address type must be IP4 or IP6, got {_show(addrtype)}")
    # RFC 8866 allows a fully qualified domain name in either family.
    if not _HOSTNAME.fullmatch(address) or _DOTTED.fullmatch(address):
        raise SdpError(f"{what}: bad address {_show(address)}")
    return address


def _connection(value):
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"c= must be 'IN IP4|IP6 address', got {_show(value)}")
    nettype, addrtype, address = parts
    if nettype.upper() != "IN":
        raise SdpError(f"c= network type must be IN, got {_show(nettype)}")
    return _address(addrtype.upper(), address, "c=")


def _origin(value):
    parts = value.split()
    if len(parts) != 6:
        raise SdpError("o= must have six fields")
    return tuple(parts)


def _media_line(value):
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"m= must be 'media port proto format...', got {_show(value)}")
    media, port_text, proto, *formats = parts
    if not _TOKEN.fullmatch(media) or not _TOKEN.fullmatch(proto.replace("/", "")):
        raise SdpError(f"m= has a bad media or proto field: {_show(value)}")
    port_text, slash, count_text = port_text.partition("/")
    port = _uint(port_text, "m= port", 65535)
    port_count = None
    if slash:
        port_count = _uint(count_text, "m= port count", 65535)
        if port_count < 1:
            raise SdpError("m= port count must be at least 1")
    if _is_rtp(proto):
        for fmt in formats:
            _uint(fmt, "m= RTP payload type", 127)
    return media, port, port_count, proto, tuple(formats)


def _split_attribute(value):
    name, colon, rest = value.partition(":")
    return name.strip(), (rest.strip() if colon else None)


def _rtpmap(value):
    """'96 telephone-event/8000[/1]' -> (96, name, rate, channels)."""
    pt_text, encoding = ((value or "").split(None, 1) + ["", ""])[:2]
    pt = _uint(pt_text, "a=rtpmap payload type", 127)
    fields = encoding.strip().split("/")
    if len(fields) not in (2, 3) or not fields[0]:
        raise SdpError(f"a=rtpmap must be 'pt name/rate[/channels]', got {_show(value)}")
    rate = _uint(fields[1], "a=rtpmap clock rate")
    if rate == 0:
        raise SdpError("a=rtpmap clock rate must not be 0")
    channels = _uint(fields[2], "a=rtpmap channels", 255) if len(fields) == 3 else None
    return pt, fields[0].upper(), rate, channels


def _fmtp(value):
    pt_text, params = ((value or "").split(None, 1) + ["", ""])[:2]
    return _uint(pt_text, "a=fmtp payload type", 127), params.strip()


def _rtcp(value):
    parts = (value or "").split()
    if len(parts) not in (1, 4):
        raise SdpError(f"a=rtcp must be 'port [IN IP4|IP6 address]', got {_show(value or '')}")
    port = _uint(parts[0], "a=rtcp port", 65535)
    if len(parts) == 1:
        return port, None
    if parts[1].upper() != "IN":
        raise SdpError("a=rtcp network type must be IN")
    return port, _address(parts[2].upper(), parts[3], "a=rtcp")


def _ptime(value):
    """Packet time in ms; advisory, so an odd value is ignored, not refused."""
    if value and re.fullmatch(r"[0-9]{1,5}(\.0*)?", value, re.ASCII):
        ptime = int(value.split(".")[0])
        return ptime or None
    return None


_M_LINE = re.compile(r"[ \t]*m=")


def _lines(data, max_size, ignored=None):
    if isinstance(data, str):
        # Lone surrogates cannot be encoded later; they become U+FFFD.
        data = data.encode("utf-8", "surrogatepass")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise SdpError("SDP must be bytes or text")
    data = bytes(data)
    if len(data) > max_size:
        raise SdpError(f"SDP larger than {max_size} bytes")
    if b"\0" in data:
        raise SdpError("SDP contains a NUL byte")
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = text.split("\n")
    valid = 0
    for number, line in enumerate(lines, 1):
        line = line.rstrip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isascii() or not line[0].isalpha():
            if valid and not any(_M_LINE.match(rest) for rest in lines[number:]):
                # Junk after the last valid line (a multipart delimiter and
                # the next part pasted into the SDP part, as some SRCs send):
                # the description before it is whole, so it is used.
                if ignored is not None:
                    ignored.append(len([r for r in lines[number - 1:] if r.strip()]))
                return
            raise SdpError(f"line {number}: expected 'x=value', got {_show(line)}")
        if "\r" in line:
            # A CR inside a line would end the line for some peers: echoing
            # the rest of it (a label, say) could inject lines into our answer.
            raise SdpError(f"line {number}: stray carriage return")
        valid += 1
        yield number, line[0], line[2:]


@attrs.define
class _Section:
    """Lines of one m-section (or the session section) while parsing."""

    connection: str | None = None
    attributes: list = attrs.Factory(list)
    m_line: tuple | None = None


def parse_sdp(data, *, max_size=65536, max_media=64):
    """Parse SDP bytes (or text) into a :class:`SessionDescription`.

    Raises :class:`SdpError` for anything unusable, never another exception.
    """
    version = origin = None
    session_name = ""
    session = _Section()
    sections = []
    current = session
    ignored = []
    for number, kind, value in _lines(data, max_size, ignored):
        try:
            if version is None:
                if kind != "v":
                    raise SdpError("SDP must start with v=0")
                if value.strip() != "0":
                    raise SdpError(f"unsupported SDP version {_show(value.strip())}")
                version = 0
            elif kind == "v":
                raise SdpError("second v= line")
            elif kind == "m":
                if len(sections) >= max_media:
                    raise SdpError(f"more than {max_media} m-lines")
                current = _Section(m_line=_media_line(value))
                sections.append(current)
            elif kind == "o":
                if current is not session or origin is not None:
                    raise SdpError("o= must appear once, before any m=")
                origin = _origin(value)
            elif kind == "s":
                if current is session:
                    session_name = value.strip()
            elif kind == "c":
                address = _connection(value)
                # Several c= lines only occur with multicast; keep the first.
                if current.connection is None:
                    current.connection = address
            elif kind == "a":
                name, attr_value = _split_attribute(value)
                if name:  # an empty "a=" says nothing
                    current.attributes.append((name, attr_value))
            # i= u= e= p= b= t= r= z= k= and unknown letters: nothing to use.
        except SdpError as e:
            raise SdpError(f"line {number}: {e.args[0]}") from None
    if version is None:
        raise SdpError("empty SDP")
    if origin is None:
        raise SdpError("no o= line")
    session_direction = _direction(session.attributes)
    media = tuple(
        _media_description(index, section, session.connection, session_direction)
        for index, section in enumerate(sections)
    )
    return SessionDescription(
        version=version,
        origin=origin,
        session_name=session_name,
        connection=session.connection,
        direction=session_direction,
        attributes=tuple(session.attributes),
        media=media,
        ignored_lines=ignored[0] if ignored else 0,
    )


def _direction(attributes):
    for name, value in attributes:
        if value is None and name.lower() in DIRECTIONS:
            return name.lower()
    return None


def _media_description(index, section, session_connection, session_direction):
    media, port, port_count, proto, formats = section.m_line
    where = f"m-line {index}"
    rtpmaps, fmtps, crypto = {}, {}, []
    label = rtcp = ptime = None
    try:
        for name, value in section.attributes:
            lname = name.lower()
            if lname == "rtpmap":
                pt, *rest = _rtpmap(value)
                rtpmaps.setdefault(pt, tuple(rest))
            elif lname == "fmtp":
                pt, params = _fmtp(value)
                fmtps.setdefault(pt, params)
            elif lname == "rtcp" and rtcp is None:
                rtcp = _rtcp(value)
            elif lname == "label" and label is None and value:
                label = value
            elif lname == "ptime" and ptime is None:
                ptime = _ptime(value)
            elif lname == "crypto" and value:
                crypto.append(value)
    except SdpError as e:
        raise SdpError(f"{where}: {e.args[0]}") from None
    codecs = []
    if _is_rtp(proto):
        seen = set()
        for fmt in formats:
            pt = int(fmt)
            if pt in seen:
                continue
            seen.add(pt)
            if pt in rtpmaps:
                name, rate, channels = rtpmaps[pt]
            elif pt in _STATIC_PAYLOADS:
                name, rate, channels = _STATIC_PAYLOADS[pt]
            else:
                name, rate, channels = "", 0, None
            codecs.append(Codec(pt, name, rate, channels, fmtps.get(pt)))
    return MediaDescription(
        index=index,
        media=media,
        port=port,
        port_count=port_count,
        proto=proto,
        formats=formats,
        codecs=tuple(codecs),
        connection=section.connection or session_connection,
        label=label,
        direction=_direction(section.attributes) or session_direction or "sendrecv",
        crypto=tuple(crypto),
        rtcp=rtcp,
        ptime=ptime,
        attributes=tuple(section.attributes),
    )


def _acceptable_proto(media, accept_srtp):
    proto = media.proto.upper()
    if proto in _PLAIN_RTP:
        return True
    # SDES needs keys in the offer; without a=crypto there is nothing to use.
    return accept_srtp and proto in _SDES_SRTP and bool(media.crypto)


def _choose_codec(media, allowed):
    for codec in media.codecs:
        if (
            codec.name in allowed
            and codec.clock_rate == _DECODABLE[codec.name]
            and codec.channels in (None, 1, *_CHANNELS.get(codec.name, ()))
        ):
            return codec
    return None


def negotiate(offer, codec_preference, *, accept_srtp=False):
    """Decide, per m-line of *offer*, what to take: a :class:`StreamChoice`,
    or None for a stream the answer refuses with port 0.

    The SRC's order wins (README, "SIP and SIPREC"): the codec is the first
    one the m-line offers, at its clock rate, that is among
    *codec_preference* (the codecs this server takes). An SRC that lists
    G.729 first will keep sending G.729, whatever else it offers, so
    answering anything else would lose its audio.
    """
    preference = tuple(name.upper() for name in codec_preference)
    unknown = [name for name in preference if name not in _DECODABLE]
    if unknown:
        raise ValueError(f"cannot decode codec {unknown[0]!r}")
    choices = []
    for media in offer.media:
        codec = None
        if media.is_audio_rtp and media.port != 0 and _acceptable_proto(media, accept_srtp):
            codec = _choose_codec(media, preference)
        if codec is None:
            choices.append(None)
            continue
        # RFC 4733 §2.5.1: events share the audio codec's clock.
        event = next(
            (c for c in media.codecs
             if c.name == TELEPHONE_EVENT and c.clock_rate == codec.clock_rate),
            None,
        )
        choices.append(StreamChoice(codec=codec, telephone_event=event))
    return choices


_SENDS = {"sendrecv": True, "sendonly": True, "recvonly": False, "inactive": False}
_RECEIVES = {"sendrecv": True, "sendonly": False, "recvonly": True, "inactive": False}


def _direction_of(send, receive):
    return {(True, True): "sendrecv", (True, False): "sendonly",
            (False, True): "recvonly", (False, False): "inactive"}[(send, receive)]


def answer_direction(media, wanted="recvonly"):
    """The direction attribute for the answer to one offered m-line.

    RFC 3264 §6.1 only lets the answer narrow the offer, seen from our side:
    we receive only if the SRC sends (sendonly -> recvonly, recvonly ->
    inactive, inactive -> inactive), and a held stream (c=0.0.0.0) sends
    nothing, so it is inactive too.
    """
    if wanted not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {wanted!r}")
    if media.on_hold:
        return "inactive"
    they_send, they_receive = _SENDS[media.direction], _RECEIVES[media.direction]
    return _direction_of(_SENDS[wanted] and they_receive, _RECEIVES[wanted] and they_send)


def _addrtype(address):
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        if _HOSTNAME.fullmatch(address) and not _DOTTED.fullmatch(address):
            return "IP4"
        raise ValueError(f"not an IP address or host name: {address!r}") from None


# Encoding names are case-insensitive (RFC 4855), but some SBCs compare them
# as written; answer in the spelling the registrations use.
_SPELLING = {TELEPHONE_EVENT: "telephone-event", "OPUS": "opus"}


def _rtpmap_line(codec):
    encoding = f"{_SPELLING.get(codec.name, codec.name)}/{codec.clock_rate}"
    if codec.channels is not None:
        encoding += f"/{codec.channels}"
    return f"a=rtpmap:{codec.payload_type} {encoding}"


def _answer_lines(media, choice, port, direction):
    if choice is None or not port:
        return [f"m={media.media} 0 {media.proto} {media.formats[0]}"]
    codecs = [choice.codec] + ([choice.telephone_event] if choice.telephone_event else [])
    lines = [f"m={media.media} {port} {media.proto} "
             + " ".join(str(c.payload_type) for c in codecs)]
    for codec in codecs:
        lines.append(_rtpmap_line(codec))
        if codec.fmtp:
            lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
    if media.ptime is not None:
        lines.append(f"a=ptime:{media.ptime}")
    if choice.crypto:
        lines.append(f"a=crypto:{choice.crypto}")
    if media.label is not None:
        lines.append(f"a=label:{media.label}")
    lines.append(f"a={answer_direction(media, direction)}")
    return lines


def format_answer(
    offer,
    choices,
    ports,
    *,
    address,
    session_id,
    session_version,
    username="siprecd",
    session_name="siprecd",
    direction="recvonly",
):
    """Write the RFC 3264 answer to *offer* as CRLF-terminated bytes.

    *choices* comes from :func:`negotiate`; *ports* holds our RTP port for
    each m-line. A stream with no choice, or with port None or 0 (nothing
    could be allocated), is refused with port 0. *direction* is what we
    want (recvonly for a recorder); each stream gets it narrowed to what its
    offer allows (:func:`answer_direction`).
    """
    if not (len(choices) == len(ports) == len(offer.media)):
        raise ValueError("need one choice and one port per offered m-line")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    lines = _session_lines(address, session_id, session_version, username, session_name)
    for port in ports:
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
    for media, choice, port in zip(offer.media, choices, ports):
        lines.extend(_answer_lines(media, choice, port, direction))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# What we offer for each codec when the SRC sent no SDP (RFC 3551 static
# types; Opus on a dynamic one, as RFC 7587 registers it).
_OFFERED = {
    "PCMU": Codec(0, "PCMU", 8000, None, None),
    "PCMA": Codec(8, "PCMA", 8000, None, None),
    "G729": Codec(18, "G729", 8000, None, None),
    "G722": Codec(9, "G722", 8000, None, None),
    "OPUS": Codec(111, "OPUS", 48000, 2, None),
}
_OFFERED_EVENT = Codec(101, TELEPHONE_EVENT, 8000, None, "0-15")


def offer_codecs(codec_preference):
    """The codecs of our offer, in *codec_preference* order, then telephone-event."""
    preference = [name.upper() for name in codec_preference]
    unknown = [name for name in preference if name not in _OFFERED]
    if unknown:
        raise ValueError(f"cannot offer codec {unknown[0]!r}")
    return [_OFFERED[name] for name in preference] + [_OFFERED_EVENT]


def _session_lines(address, session_id, session_version, username, session_name):
    """The session-level lines of an SDP we write (v=, o=, s=, c=, t=),
    after checking what goes into them."""
    if not re.fullmatch(r"[0-9]{1,32}", str(session_id), re.ASCII):
        raise ValueError(f"session_id must be decimal digits, got {session_id!r}")
    if not isinstance(session_version, int) or session_version < 0:
        raise ValueError(f"session_version must be an integer >= 0, got {session_version!r}")
    if not _TOKEN.fullmatch(username):
        raise ValueError(f"username must be a token, got {username!r}")
    if re.search(r"[\r\n\0]", session_name):
        raise ValueError("session_name must be one line")
    addrtype = _addrtype(address)
    return [
        "v=0",
        f"o={username} {session_id} {session_version} IN {addrtype} {address}",
        f"s={session_name or '-'}",
        f"c=IN {addrtype} {address}",
        "t=0 0",
    ]


def format_offer(count, codec_preference, ports, *, address, session_id, session_version,
                 username="siprecd", session_name="siprecd", labels=None):
    """Our SDP offer of *count* recvonly audio streams (RFC 7866 §7.1.1: an
    SRS may offer when the SRC's INVITE had none), one port each, every
    codec of *codec_preference* plus telephone-event."""
    if len(ports) != count:
        raise ValueError("need one port per offered stream")
    lines = _session_lines(address, session_id, session_version, username, session_name)
    codecs = offer_codecs(codec_preference)
    labels = labels or [str(i + 1) for i in range(count)]
    for port, label in zip(ports, labels):
        lines.append(f"m=audio {port} RTP/AVP " + " ".join(str(c.payload_type) for c in codecs))
        for codec in codecs:
            lines.append(_rtpmap_line(codec))
            if codec.fmtp:
                lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
        lines += ["a=ptime:20", f"a=label:{label}", "a=recvonly"]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def check_reoffer(previous, offer):
    """Refuse a re-offer that drops m-lines (RFC 3264 §8: the i-th m-line
    keeps meaning the i-th stream, so an offer has at least as many).

    *previous* is the last offer taken in this session.
    """
    if len(offer.media) < len(previous.media):
        raise SdpError(
            f"re-offer has {len(offer.media)} m-lines, fewer than the {len(previous.media)} before"
        )
