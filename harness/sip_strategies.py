"""Hypothesis strategies for valid SIP messages and the values inside them.

Everything generated is already in the form the parser produces (names
lower-cased where the parser lower-cases them, values trimmed, Content-Length
equal to the body's length), so for any generated ``m``:
``parse_message(m.to_bytes()) == m``, ``parse_uri(str(u)) == u``,
``parse_via(str(v)) == v`` and ``parse_name_addr(str(a)) == a``.
Transaction and dialog tests can draw whole messages from here.
"""

import string

from hypothesis import strategies as st

from siprecd.sip.message import Headers, KeepAlive, NameAddr, Request, Response, SipUri, Via

__all__ = [
    "tokens",
    "hosts",
    "sip_uris",
    "tel_uris",
    "uris",
    "vias",
    "name_addrs",
    "requests",
    "responses",
    "messages",
    "streams",
]

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
# Characters a SIP URI user part may hold unescaped (RFC 3261 §25.1), less
# '?' and ':' whose placement is ambiguous on reading.
USER_CHARS = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;/"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
lower_tokens = tokens.map(str.lower)
# Printable text of any script, no control characters: what a header value
# or display name may hold.
text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), max_size=40
).map(lambda s: s.strip(" \t"))

_label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
hostnames = st.lists(_label, min_size=1, max_size=4).map(".".join)
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(str)
hosts = st.one_of(hostnames, ipv4s, ipv6s)
ports = st.none() | st.integers(1, 65535)

_param_values = st.none() | st.text(TOKEN_CHARS + ":[]", min_size=1, max_size=12)
params = st.dictionaries(lower_tokens, _param_values, max_size=3)


@st.composite
def sip_uris(draw):
    return SipUri(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=draw(st.none() | st.text(USER_CHARS, min_size=1, max_size=12)),
        host=draw(hosts),
        port=draw(ports),
        params=draw(params),
        headers=draw(st.dictionaries(tokens, tokens, max_size=2)),
    )


@st.composite
def tel_uris(draw):
    number = "+" + draw(st.text(string.digits, min_size=3, max_size=15))
    return SipUri("tel", number, "", None, draw(params))


uris = st.one_of(sip_uris(), tel_uris())


@st.composite
def vias(draw, transport=None):
    via_params = {"branch": "z9hG4bK" + draw(tokens)}
    if draw(st.booleans()):
        via_params["rport"] = draw(st.none() | st.integers(1, 65535).map(str))
    if draw(st.booleans()):
        via_params["received"] = draw(ipv4s)
    via_params.update({k: v for k, v in draw(params).items() if k not in via_params})
    return Via(
        transport=transport or draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"])),
        host=draw(hosts),
        port=draw(ports),
        params=via_params,
    )


@st.composite
def name_addrs(draw, tag=None):
    """A name-addr; *tag*: True always tagged, False never, None either."""
    header_params = dict(draw(params))
    header_params.pop("tag", None)
    if tag is None:
        tag = draw(st.booleans())
    if tag:
        header_params = {"tag": draw(tokens), **header_params}
    return NameAddr(
        uri=str(draw(uris)),
        display_name=draw(st.none() | text),
        params=header_params,
    )


_call_ids = st.builds(lambda a, b: f"{a}@{b}", tokens, hostnames) | tokens


@st.composite
def _extra_headers(draw):
    """Headers beyond the mandatory ones: extension headers and list headers."""
    extras = draw(st.lists(st.tuples(tokens.map(lambda t: "X-" + t), text), max_size=4))
    if draw(st.booleans()):
        extras.append(("Supported", ", ".join(draw(st.lists(lower_tokens, min_size=1, max_size=3)))))
    if draw(st.booleans()):
        extras.append(("Contact", ", ".join(str(a) for a in draw(st.lists(name_addrs(), min_size=1, max_size=2)))))
    if draw(st.booleans()):
        extras.append(("Subject", draw(text)))
    return extras


def _finish_headers(draw, lines, body):
    lines = draw(st.permutations(lines))
    if body:
        lines.append(("Content-Type", draw(st.sampled_from(
            ["application/sdp", "multipart/mixed;boundary=xyz", "application/rs-metadata+xml"]
        ))))
    lines.append(("Content-Length", str(len(body))))
    return Headers(lines)


def _via_lines(draw):
    values = [str(v) for v in draw(st.lists(vias(), min_size=1, max_size=3))]
    if len(values) > 1 and draw(st.booleans()):
        return [("Via", ", ".join(values))]
    return [("Via", v) for v in values]


@st.composite
def requests(draw, method=None):
    method = method or draw(st.sampled_from(
        ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO"]) | tokens)
    body = draw(st.binary(max_size=300))
    lines = _via_lines(draw) + [
        ("From", str(draw(name_addrs(tag=True)))),
        ("To", str(draw(name_addrs()))),
        ("Call-ID", draw(_call_ids)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ] + draw(_extra_headers())
    return Request(method, str(draw(uris)), _finish_headers(draw, lines, body), body)


@st.composite
def responses(draw):
    status = draw(st.integers(100, 699))
    body = draw(st.binary(max_size=300))
    lines = _via_lines(draw) + [
        ("From", str(draw(name_addrs(tag=True)))),
        ("To", str(draw(name_addrs()))),
        ("Call-ID", draw(_call_ids)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {draw(tokens)}"),
    ] + draw(_extra_headers())
    return Response(status, draw(text), _finish_headers(draw, lines, body), body)


messages = st.one_of(requests(), responses())


@st.composite
def streams(draw):
    """(bytes, expected items): messages and keep-alive pings as one stream.

    Lone CRLFs (pongs, which the parser skips) go only before a message, where
    they cannot merge with a ping into something else.
    """
    items = draw(st.lists(messages | st.just(KeepAlive()), min_size=1, max_size=5))
    chunks = []
    for item in items:
        if isinstance(item, KeepAlive):
            chunks.append(b"\r\n\r\n")
            continue
        if draw(st.booleans()) and (not chunks or chunks[-1] != b"\r\n\r\n"):
            chunks.append(b"\r\n")
        chunks.append(item.to_bytes())
    return b"".join(chunks), items
