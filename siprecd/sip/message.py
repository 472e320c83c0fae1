"""SIP messages as values (RFC 3261 §7, §20, §25): bytes in, objects out, and back.

Sans-IO: nothing here touches a socket or a clock. The transports hand whole
datagrams to :func:`parse_message` and stream bytes to :class:`StreamParser`;
the layers above work on :class:`Request` and :class:`Response` and turn them
back into bytes with ``to_bytes()``.

Reading is tolerant where real peers are sloppy but the meaning is plain
(leading CRLFs, LF-only line ends, folded lines, spaces around ``:``, compact
header names) and strict where sloppiness would change the meaning: framing,
the start line, and the headers that identify a transaction. A few slips
that SBCs in the field are known to make, and whose meaning is still plain,
are mended and noted in ``Request.tolerated`` (the endpoint logs one line
for them): a From/To/Contact whose ``<`` is never closed (read as if it were
not there), ``[`` or ``]`` in a URI user part, and an ACK or BYE whose CSeq
method says INVITE (the request line decides). Every failure is
a :class:`SipParseError` whose reason can go straight into a 400, and which
carries the partly parsed request whenever that is enough to answer, so a bad
message always gets an answer instead of a crash or a silent drop.

Header values are kept as text, as received apart from unfolding and trimming.
The structured views (:class:`Via`, :class:`NameAddr`, :class:`SipUri`, CSeq)
are parsed when asked for, so headers nobody looks at cost one string each and
are passed on unchanged.

Written here rather than taken from a library (``sipmessage`` was looked at)
because what matters most for a server facing untrusted SBCs is stream
framing, a hard size bound and that partial request for the 400, and those
shape the whole parser. ``twisted.protocols.sip`` follows RFC 2543 and is not
used.
"""

import ipaddress
import re
import secrets

import attrs

__all__ = [
    "SipParseError",
    "Headers",
    "Request",
    "Response",
    "Message",
    "parse_message",
    "StreamParser",
    "KeepAlive",
    "Via",
    "parse_via",
    "NameAddr",
    "parse_name_addr",
    "SipUri",
    "parse_uri",
    "parse_cseq",
    "make_response",
    "REASON_PHRASES",
    "new_branch",
    "new_tag",
    "new_call_id",
]


class SipParseError(Exception):
    """A malformed message or header value.

    ``reason`` is short ASCII text without CR/LF, fit for the reason phrase of
    the answer. ``status`` is the answer to give: 400 for most problems, 505
    for a SIP version other than 2.0, 513 for an oversize message, 416 for an
    unsupported URI scheme. ``request`` is the partly parsed :class:`Request`
    when it holds what an answer needs (a parseable top Via, From, To and
    CSeq, and a Call-ID), else None; responses never carry one, since nobody
    answers a response.
    """

    def __init__(self, reason, request=None, status=400):
        super().__init__(reason)
        self.reason = reason
        self.request = request
        self.status = status


# -- header names -----------------------------------------------------------

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)

# RFC 3261 §7.3.3 and the extensions that define compact forms.
_COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "u": "allow-events",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

_WELL_KNOWN = """
    Accept Accept-Contact Accept-Encoding Accept-Language Accept-Resource-Priority
    Alert-Info Allow Allow-Events Answer-Mode Authentication-Info Authorization
    Call-ID Call-Info Contact Content-Disposition Content-Encoding Content-ID
    Content-Language Content-Length Content-Type CSeq Date Diversion Error-Info
    Event Expires Flow-Timer From Geolocation History-Info Identity Identity-Info
    In-Reply-To Join Max-Breadth Max-Forwards MIME-Version Min-Expires Min-SE
    Organization P-Asserted-Identity P-Charging-Vector P-Preferred-Identity Path
    Priority Privacy Proxy-Authenticate Proxy-Authorization Proxy-Require RAck
    Reason Record-Route Recv-Info Refer-Sub Refer-To Referred-By Reject-Contact
    Remote-Party-ID Replaces Reply-To Request-Disposition Require
    Resource-Priority Retry-After Route RSeq Security-Client Security-Server
    Security-Verify Server Service-Route Session-Expires Session-ID SIP-ETag
    SIP-If-Match Subject Subscription-State Supported Target-Dialog Timestamp To
    Unsupported User-Agent User-to-User Via Warning WWW-Authenticate
""".split()
_CANONICAL = {name.lower(): name for name in _WELL_KNOWN}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): only these
# may be split, since a comma means something else in Date, Subject, ...
_LIST_HEADERS = frozenset(
    """via route record-route contact allow supported require proxy-require
    unsupported accept accept-encoding accept-language allow-events
    content-encoding in-reply-to path""".split()
)

# Headers a message may carry once: a second copy is a smuggling risk, not a list.
_SINGLE_HEADERS = tuple(
    "from to call-id cseq content-length content-type max-forwards".split()
)


def _names(name):
    """(lookup key, name to show) for a header name as written."""
    lower = name.lower()
    key = _COMPACT.get(lower, lower)
    return key, _CANONICAL.get(key, name)


def _key(name):
    lower = name.lower()
    return _COMPACT.get(lower, lower)


# One list element: quoted strings and <...> are opaque, so commas inside a
# display name or a URI do not split. An unterminated quote or bracket runs to
# the end rather than failing: splitting must never raise.
_LIST_ELEMENT_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|<[^>]*>?|[^,"<])+', re.S)


def _split_list(value):
    if "," not in value:
        return [value] if value else []
    elements = (m.group().strip(" \t") for m in _LIST_ELEMENT_RE.finditer(value))
    return [e for e in elements if e]


class Headers:
    """Ordered, case-insensitive, multi-valued header list.

    Each entry is one header line as received (after unfolding and trimming);
    names are stored in their canonical spelling, compact forms under their
    full names. ``get_all`` splits the list-valued headers (RFC 3261 §7.3.1)
    on commas outside quotes and ``<...>``; other headers are never split.
    """

    __slots__ = ("_items",)
    __hash__ = None

    def __init__(self, items=()):
        self._items = []  # (key, shown name, value)
        for name, value in items:
            self.add(name, value)

    def get(self, name, default=None):
        """The first value (for list headers, the first list element)."""
        key = _key(name)
        for k, _, value in self._items:
            if k == key:
                if key in _LIST_HEADERS:
                    elements = _split_list(value)
                    if elements:
                        return elements[0]
                    continue
                return value
        return default

    def get_all(self, name):
        """Every value in order, list headers split into their elements."""
        key = _key(name)
        if key in _LIST_HEADERS:
            out = []
            for k, _, value in self._items:
                if k == key:
                    out.extend(_split_list(value))
            return out
        return [value for k, _, value in self._items if k == key]

    def add(self, name, value):
        """Append one header line."""
        key, shown = _names(_check_name(name))
        self._items.append((key, shown, _check_value(value)))

    def set(self, name, value):
        """Replace every line of *name* by one, where the first one was."""
        key, shown = _names(_check_name(name))
        entry = (key, shown, _check_value(value))
        for i, (k, _, _) in enumerate(self._items):
            if k == key:
                self._items[i] = entry
                self._items[i + 1:] = [e for e in self._items[i + 1:] if e[0] != key]
                return
        self._items.append(entry)

    def remove(self, name):
        """Drop every line of *name* (no error when there is none)."""
        key = _key(name)
        self._items = [e for e in self._items if e[0] != key]

    def __contains__(self, name):
        key = _key(name)
        return any(k == key for k, _, _ in self._items)

    def items(self):
        """Every header line as (canonical name, value), in order."""
        return [(shown, value) for _, shown, value in self._items]

    def copy(self):
        new = Headers()
        new._items = list(self._items)
        return new

    def __iter__(self):
        return iter(self.items())

    def __len__(self):
        return len(self._items)

    def __eq__(self, other):
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    def __repr__(self):
        return f"Headers({self.items()!r})"


def _check_name(name):
    if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"not a valid SIP header name: {name!r}")
    return name


def _check_value(value):
    # A CR or LF in a value would let it inject header lines when sent.
    if not isinstance(value, str) or "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"not a valid SIP header value: {value!r}")
    return value.strip(" \t")


# -- parameters, shared by URIs, Via and name-addr ----------------------------

# One parameter, with the whitespace around it. Matched one at a time from
# where the last ended, so a bad list fails in linear time.
_PARAM_RE = re.compile(
    r'[ \t]*;[ \t]*(' + _TOKEN + r')(?:[ \t]*(=)[ \t]*("(?:[^"\\]|\\.)*"|[^ \t;",]*))?[ \t]*',
    re.S,
)


def _parse_params(text, what):
    """``;a=1;b;c="x;y"`` -> {"a": "1", "b": None, "c": '"x;y"'}.

    Names are lower-cased (they are case-insensitive); values are kept as
    written, quotes included, so that printing gives back what was read. The
    first of two same-named parameters wins.
    """
    params = {}
    pos, end = 0, len(text) if text else 0
    while pos < end:
        m = _PARAM_RE.match(text, pos)
        if m is None:
            if not text[pos:].strip(" \t"):
                break
            raise SipParseError(f"Bad {what} parameters")
        name, eq, value = m.groups()
        params.setdefault(name.lower(), value if eq else None)
        pos = m.end()
    return params


def _format_params(params):
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _host_text(host, port):
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _check_ipv6(text, what):
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise SipParseError(f"Bad IPv6 address in {what}") from None


def _port(text, what):
    if text is None:
        return None
    port = int(text)  # at most 5 ASCII digits, by the regexes that call this
    if port > 65535:
        raise SipParseError(f"Bad port in {what}")
    return port


# -- URIs ------------------------------------------------------------------

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):([^ \t\r\n]*)")
_HOSTPORT_RE = re.compile(
    r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9\-_.]+))(?::([0-9]{1,5}))?(;[^?]*)?(?:\?(.*))?",
    re.S,
)
_USER_RE = re.compile(r'[^ \t<>"@\[\]]+')
# What a user part may hold when read tolerantly: brackets too (seen from
# SBCs that copy a display string into the user part), never blanks,
# quotes or angle brackets, which would change where the URI ends.
_LOOSE_USER_RE = re.compile(r'[^ \t<>"@\x00-\x1f\x7f]+')
_TEL_RE = re.compile(r'([^;?@ \t<>"]+)((?:;[^?]*)?)')
# Shape of any absolute URI, for places that carry URIs of any scheme
# (Request-URI, name-addr): a scheme, a colon and no whitespace or delimiters.
_URI_SHAPE_RE = re.compile(r'[A-Za-z][A-Za-z0-9+.\-]*:[^ \t<>"]+')


@attrs.frozen
class SipUri:
    """A ``sip:``, ``sips:`` or ``tel:`` URI (RFC 3261 §19.1, RFC 3966).

    IPv6 hosts are held without brackets (ready for a socket) and printed
    with them. A ``tel:`` URI keeps its number in ``user`` and an empty host.
    Parameter names are lower-cased; a parameter without a value is None.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict = attrs.field(factory=dict)
    headers: dict = attrs.field(factory=dict)
    password: str | None = None
    # What was mended to read it (stray punctuation in the user part), or None.
    repaired: str | None = attrs.field(default=None, eq=False, repr=False)

    def param(self, name):
        """A parameter's value; '' for one present without a value, None if absent."""
        value = self.params.get(name.lower(), _ABSENT)
        if value is _ABSENT:
            return None
        return "" if value is None else value

    def __str__(self):
        params = _format_params(self.params)
        if self.scheme == "tel":
            return f"tel:{self.user}{params}"
        userinfo = ""
        if self.user is not None:
            password = "" if self.password is None else f":{self.password}"
            userinfo = f"{self.user}{password}@"
        headers = ""
        if self.headers:
            headers = "?" + "&".join(f"{k}={v}" for k, v in self.headers.items())
        return f"{self.scheme}:{userinfo}{_host_text(self.host, self.port)}{params}{headers}"


_ABSENT = object()


def parse_uri(value):
    """Parse a sip:, sips: or tel: URI; other schemes raise with status 416."""
    m = _SCHEME_RE.fullmatch(value.strip(" \t")) if isinstance(value, str) else None
    if m is None:
        raise SipParseError("Bad URI")
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "tel":
        t = _TEL_RE.fullmatch(rest)
        if t is None:
            raise SipParseError("Bad tel URI")
        return SipUri("tel", t.group(1), "", None, _parse_params(t.group(2), "URI"))
    if scheme not in ("sip", "sips"):
        raise SipParseError("Unsupported URI scheme", status=416)
    # The user part ends at the first '@' before any '?': an '@' after '?'
    # belongs to a URI header (?Replaces=...@host), seen unescaped in the wild.
    query = rest.find("?")
    at = rest.find("@", 0, len(rest) if query == -1 else query)
    user = password = repaired = None
    if at != -1:
        user, colon, password = rest[:at].partition(":")
        if not colon:
            password = None
        if not _USER_RE.fullmatch(user) or (password and not _USER_RE.fullmatch(password)):
            if not _LOOSE_USER_RE.fullmatch(user) or (
                    password and not _LOOSE_USER_RE.fullmatch(password)):
                raise SipParseError("Bad user part in URI")
            repaired = "stray punctuation in a URI user part"
        rest = rest[at + 1:]
    h = _HOSTPORT_RE.fullmatch(rest)
    if h is None:
        raise SipParseError("Bad host in URI")
    host = h.group(1)
    if host is not None:
        _check_ipv6(host, "URI")
    else:
        host = h.group(2)
    headers = {}
    if h.group(5):
        for pair in h.group(5).split("&"):
            name, _, hvalue = pair.partition("=")
            if not name:
                raise SipParseError("Bad URI header")
            headers[name] = hvalue
    return SipUri(
        scheme, user, host, _port(h.group(3), "URI"),
        _parse_params(h.group(4), "URI"), headers, password, repaired,
    )


# -- Via -------------------------------------------------------------------

_VIA_RE = re.compile(
    r"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*(" + _TOKEN + r")[ \t]+"
    r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9\-_.]+))"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
    r"[ \t]*(;.*)?",
    re.S | re.I,
)


@attrs.frozen
class Via:
    """One Via value (RFC 3261 §20.42). Parameter names are lower-cased.

    IPv6 hosts are held without brackets and printed with them; the
    transport is upper-cased, as RFC 3261 writes it.
    """

    transport: str
    host: str
    port: int | None = None
    params: dict = attrs.field(factory=dict)

    @property
    def branch(self):
        return self.params.get("branch")

    @property
    def received(self):
        return self.params.get("received")

    @property
    def rport(self):
        """The rport value (RFC 3581); '' when asked for without a value."""
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        return "" if value is None else value

    def with_params(self, **changes):
        """A copy with parameters set: a string sets a value, None sets a
        parameter without a value (``;rport``), False removes it."""
        params = dict(self.params)
        for name, value in changes.items():
            name = name.lower()
            if value is False:
                params.pop(name, None)
            else:
                params[name] = value
        return attrs.evolve(self, params=params)

    def __str__(self):
        return f"SIP/2.0/{self.transport} {_host_text(self.host, self.port)}{_format_params(self.params)}"


def parse_via(value):
    """Parse one Via value (not a comma-joined list: use ``Headers.get_all``)."""
    m = _VIA_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise SipParseError("Bad Via header")
    host = m.group(2)
    if host is not None:
        _check_ipv6(host, "Via")
    else:
        host = m.group(3)
    return Via(m.group(1).upper(), host, _port(m.group(4), "Via"),
               _parse_params(m.group(5), "Via"))


# -- name-addr (From, To, Contact, Route, ...) ------------------------------

_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_ESCAPE_RE = re.compile(r"\\(.)", re.S)


@attrs.frozen
class NameAddr:
    """An address with optional display name and header parameters
    (RFC 3261 §20.10, §20.20, §20.39): From, To, Contact, Route, ...

    ``display_name`` is unquoted and unescaped; it is printed quoted. The URI
    is kept as text (any scheme); :func:`parse_uri` reads it when needed.
    """

    uri: str
    display_name: str | None = None
    params: dict = attrs.field(factory=dict)
    # What was mended to read it (a '<' never closed), or None.
    repaired: str | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def tag(self):
        return self.params.get("tag")

    def with_tag(self, tag):
        return attrs.evolve(self, params={**self.params, "tag": tag})

    def __str__(self):
        # Always <...>: without them, URI parameters would read as header
        # parameters (RFC 3261 §20).
        shown = f"<{self.uri}>{_format_params(self.params)}"
        if self.display_name is None:
            return shown
        escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" {shown}'


def parse_name_addr(value):
    """Parse ``"Name" <uri>;params``, ``Name <uri>``, ``<uri>`` or ``uri;params``.

    In the last form, everything after the first ``;`` is header parameters,
    as RFC 3261 §20 says. A ``<`` that is never closed (``<sip:u@h;+sip.src``,
    as some SBCs send) is read as if it were not there, in that last form,
    and the result says so in ``repaired``.
    """
    if not isinstance(value, str):
        raise SipParseError("Bad address")
    text = value.strip(" \t")
    if text.startswith('"'):
        m = _QUOTED_RE.match(text)
        if m is None:
            raise SipParseError("Bad display name")
        display = m.group(1)
        if "\\" in display:
            display = _ESCAPE_RE.sub(r"\1", display)
        rest = text[m.end():].lstrip(" \t")
        if not rest.startswith("<"):
            raise SipParseError("Bad address")
    else:
        lt = text.find("<")
        if lt == -1:
            uri, semi, params = text.partition(";")
            uri = uri.rstrip(" \t")
            if not _URI_SHAPE_RE.fullmatch(uri):
                raise SipParseError("Bad address")
            return NameAddr(uri, None, _parse_params(semi + params, "header"))
        display = text[:lt].strip(" \t") or None
        if display is not None and ('"' in display or ">" in display):
            raise SipParseError("Bad display name")
        rest = text[lt:]
    gt = rest.find(">")
    if gt == -1:
        uri, semi, params = rest[1:].partition(";")
        uri = uri.strip(" \t")
        if not _URI_SHAPE_RE.fullmatch(uri):
            raise SipParseError("Bad address")
        return NameAddr(uri, display, _parse_params(semi + params, "header"),
                        repaired="'<' never closed")
    uri = rest[1:gt].strip(" \t")
    if not _URI_SHAPE_RE.fullmatch(uri):
        raise SipParseError("Bad address")
    return NameAddr(uri, display, _parse_params(rest[gt + 1:], "header"))


# -- CSeq ------------------------------------------------------------------

_CSEQ_RE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+(" + _TOKEN + r")[ \t]*")


def parse_cseq(value):
    """``"314 INVITE"`` -> ``(314, "INVITE")``; the number is below 2**31 (§8.1.1.5)."""
    m = _CSEQ_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise SipParseError("Bad CSeq header")
    number = int(m.group(1))
    if number >= 2**31:
        raise SipParseError("CSeq number out of range")
    return number, m.group(2)


# -- messages --------------------------------------------------------------


def _to_headers(value):
    return value if isinstance(value, Headers) else Headers(value)


class _HeaderViews:
    """Parsed views of the headers every request and response carries."""

    __slots__ = ()

    @property
    def call_id(self):
        return self.headers.get("Call-ID")

    @property
    def cseq(self):
        return parse_cseq(self.headers.get("CSeq"))

    @property
    def via(self):
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self):
        return parse_via(self.headers.get("Via"))

    @property
    def from_(self):
        return parse_name_addr(self.headers.get("From"))

    @property
    def to(self):
        return parse_name_addr(self.headers.get("To"))

    @property
    def content_type(self):
        """``type/subtype`` lower-cased, without parameters; None if absent."""
        value = self.headers.get("Content-Type")
        if value is None:
            return None
        return value.partition(";")[0].strip(" \t").lower() or None


def _serialise(start_line, headers, body):
    body = bytes(body)
    lines = [start_line]
    length_written = False
    for key, shown, value in headers._items:
        if key == "content-length":
            # The body decides; a stale or duplicated value would break framing.
            if length_written:
                continue
            length_written = True
            value = str(len(body))
        lines.append(f"{shown}: {value}")
    if not length_written:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8") + body


@attrs.define
class Request(_HeaderViews):
    method: str
    uri: str
    headers: Headers = attrs.field(converter=_to_headers)
    body: bytes = b""
    version: str = "SIP/2.0"
    # The slips mended while reading it (see the module docstring), one
    # short text each, for one log line.
    tolerated: tuple = attrs.field(default=(), eq=False, repr=False)

    def to_bytes(self):
        """Wire form: CRLF line ends, Content-Length set to the body's length."""
        return _serialise(f"{self.method} {self.uri} {self.version}", self.headers, self.body)


@attrs.define
class Response(_HeaderViews):
    status: int
    reason: str
    headers: Headers = attrs.field(converter=_to_headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def to_bytes(self):
        """Wire form: CRLF line ends, Content-Length set to the body's length."""
        return _serialise(f"{self.version} {self.status} {self.reason}", self.headers, self.body)


Message = Request | Response


@attrs.frozen
class KeepAlive:
    """An RFC 5626 keep-alive ping (CRLFCRLF) on a stream; answer with b"\\r\\n"."""


# -- parsing ---------------------------------------------------------------

_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_REQUEST_LINE_RE = re.compile(r"(" + _TOKEN + r") ([^ \t]+) ([Ss][Ii][Pp]/[0-9]+\.[0-9]+)")
_STATUS_LINE_RE = re.compile(r"([Ss][Ii][Pp]/[0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?", re.S)
_DIGITS_RE = re.compile(r"[0-9]{1,10}")


class _Head:
    """A header block read as far as it goes, with the first problem found."""

    __slots__ = ("start_line", "headers", "error")

    def __init__(self, start_line, headers, error):
        self.start_line = start_line
        self.headers = headers
        self.error = error


def _find_blank_line(data, start=0, end=None):
    """(where the blank line ending the headers starts, where the body starts), or None.

    The blank line is ``[CR] LF [CR] LF``; two ``find`` calls locate it several
    times faster than a regex search, and this runs on every message.
    """
    if end is None:
        end = len(data)
    crlf = data.find(b"\n\r\n", start, end)
    lf = data.find(b"\n\n", start, end if crlf == -1 else crlf + 2)
    if lf != -1:
        first, stop = lf, lf + 2
    elif crlf != -1:
        first, stop = crlf, crlf + 3
    else:
        return None
    if first > 0 and data[first - 1] == 13:
        first -= 1
    return first, stop


def _parse_head(raw):
    """Read a header block (start line and header lines, no blank line).

    Never raises: problems are recorded and reading goes on, so that a
    request with one bad line can still be answered with a 400.
    """
    error = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
        error = SipParseError("Invalid UTF-8 in headers")
    if "\x00" in text:
        error = error or SipParseError("NUL byte in headers")
        text = text.replace("\x00", "\ufffd")
    if "\n " in text or "\n\t" in text:
        text = _FOLD_RE.sub(" ", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            error = error or SipParseError("Bare CR in headers")
            text = text.replace("\r", " ")
    lines = text.split("\n")
    headers = Headers()
    items = headers._items
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            error = error or SipParseError("Malformed header line")
            continue
        name = name.rstrip(" \t")
        lower = name.lower()
        key = _COMPACT.get(lower, lower)
        shown = _CANONICAL.get(key)
        if shown is None:
            if not _TOKEN_RE.fullmatch(name):
                error = error or SipParseError("Malformed header line")
                continue
            shown = name
        items.append((key, shown, value.strip(" \t")))
    return _Head(lines[0], headers, error)


def _content_length(headers):
    """(length or None, error or None). Differing copies are a framing error."""
    values = [v for k, _, v in headers._items if k == "content-length"]
    if not values:
        return None, None
    if any(v != values[0] for v in values[1:]):
        return None, SipParseError("Conflicting Content-Length headers")
    if not _DIGITS_RE.fullmatch(values[0]):
        return None, SipParseError("Bad Content-Length header")
    return int(values[0]), None


def _request_from_head(head, body):
    """The Request a head describes, or None if its start line is not one."""
    m = _REQUEST_LINE_RE.fullmatch(head.start_line)
    if m is None:
        return None
    version = m.group(3)
    if version.upper() == "SIP/2.0":
        version = "SIP/2.0"
    return Request(m.group(1), m.group(2), head.headers, body, version)


def _is_response(head):
    return head.start_line[:4].upper() == "SIP/"


def _answerable(request):
    """Whether a response to *request* can be built (what make_response copies)."""
    h = request.headers
    try:
        if not h.get("Call-ID"):
            return False
        parse_cseq(h.get("CSeq"))
        parse_via(h.get("Via"))
        # An answer copies From as it is: an empty tag there would make
        # the answer itself malformed. (make_response mends an empty To tag.)
        if _empty_tag(parse_name_addr(h.get("From"))):
            return False
        parse_name_addr(h.get("To"))
    except SipParseError:
        return False
    return True


def _empty_tag(name_addr):
    """A tag parameter without a value (RFC 3261 §19.3 wants a token)."""
    return "tag" in name_addr.params and not name_addr.tag


def _with_request(error, request):
    if request is not None and _answerable(request):
        error.request = request
    return error


def _failure(head, error):
    """*error* for a message that failed before its body was taken."""
    if _is_response(head):
        return error
    return _with_request(error, _request_from_head(head, b""))


_MANDATORY = ("via", "from", "to", "call-id", "cseq")


def _check_headers(headers, notes=None):
    """Check the headers that identify a transaction.

    Returns (the first problem or None, the CSeq method or None). What had
    to be mended to read From, To and Contact is appended to *notes*.
    """
    counts = {}
    first = {}
    for key, _, value in headers._items:
        if key in counts:
            counts[key] += 1
        else:
            counts[key] = 1
            first[key] = value
    for key in _MANDATORY:
        if key not in counts:
            return SipParseError(f"Missing {_CANONICAL[key]} header"), None
    for key in _SINGLE_HEADERS:
        if counts.get(key, 0) > 1:
            return SipParseError(f"Duplicate {_CANONICAL[key]} header"), None
    try:
        _, method = parse_cseq(first["cseq"])
    except SipParseError as e:
        return e, None
    for name, parse, value in (
        ("Via", parse_via, headers.get("Via")),
        ("From", parse_name_addr, first["from"]),
        ("To", parse_name_addr, first["to"]),
    ):
        try:
            parsed = parse(value)
        except SipParseError:
            return SipParseError(f"Bad {name} header"), None
        # A tag, when present, is a token (RFC 3261 §19.3); an empty one
        # would make dialogs match on nothing.
        if name != "Via" and _empty_tag(parsed):
            return SipParseError(f"Bad {name} header"), None
        if notes is not None and name != "Via":
            _note_repairs(name, parsed, notes)
    if not first["call-id"]:
        return SipParseError("Empty Call-ID header"), None
    if notes is not None and "contact" in first:
        try:
            _note_repairs("Contact", parse_name_addr(headers.get("Contact")), notes)
        except SipParseError:
            pass  # read (and refused) where it is used
    return None, method


def _note_repairs(name, addr, notes):
    if addr.repaired:
        notes.append(f"{name}: {addr.repaired}")
    if addr.uri[:4].lower() in ("sip:", "sips"):
        try:
            uri = parse_uri(addr.uri)
        except SipParseError:
            return
        if uri.repaired:
            notes.append(f"{name}: {uri.repaired}")


# Methods whose CSeq some SRCs fill with the INVITE's method: the request
# line decides what they are (an ACK still matches its INVITE by number).
_CSEQ_INVITE_TOLERATED = ("ACK", "BYE")


def _build(head, body):
    """The message a complete head and body make, or raise SipParseError."""
    if _is_response(head):
        m = _STATUS_LINE_RE.fullmatch(head.start_line)
        if m is None:
            raise SipParseError("Bad status line")
        status = int(m.group(2))
        if not 100 <= status <= 699:
            raise SipParseError("Bad status code")
        if m.group(1).upper() != "SIP/2.0":
            raise SipParseError("Version Not Supported", status=505)
        error = head.error or _check_headers(head.headers)[0]
        if error is not None:
            raise error
        return Response(status, m.group(3) or "", head.headers, body)
    request = _request_from_head(head, body)
    if request is None:
        raise SipParseError("Bad request line")
    error = head.error
    if error is None and request.version != "SIP/2.0":
        error = SipParseError("Version Not Supported", status=505)
    if error is None and not _URI_SHAPE_RE.fullmatch(request.uri):
        error = SipParseError("Bad Request-URI")
    if error is None:
        notes = []
        error, method = _check_headers(request.headers, notes)
        if error is None and method != request.method:
            if method == "INVITE" and request.method in _CSEQ_INVITE_TOLERATED:
                notes.append(f"CSeq method INVITE on a {request.method}")
            else:
                error = SipParseError("CSeq method does not match request method")
        request.tolerated = tuple(notes)
    if error is None:
        forwards = request.headers.get("Max-Forwards")
        if forwards is not None and not (_DIGITS_RE.fullmatch(forwards) and int(forwards) <= 255):
            error = SipParseError("Bad Max-Forwards header")
    if error is not None:
        raise _with_request(error, request)
    return request


def parse_message(data, max_size=65536):
    """Parse one whole message, such as a UDP datagram.

    The body is what follows the blank line, cut to Content-Length when that
    is smaller; without Content-Length it is the rest of the datagram
    (RFC 3261 §18.3). Raises :class:`SipParseError` and nothing else for any
    bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    try:
        return _parse_whole(bytes(data), max_size)
    except SipParseError:
        raise
    except Exception as e:  # pragma: no cover - a parser bug must still get a 400
        raise SipParseError("Malformed message") from e


def _parse_whole(data, max_size):
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    if not data:
        raise SipParseError("Empty message")
    too_large = len(data) > max_size
    blank = _find_blank_line(data, 0, max_size)
    if blank is None:
        error = (SipParseError("Message Too Large", status=513) if too_large
                 else SipParseError("Incomplete header block"))
        raise _failure(_parse_head(data[:max_size]), error)
    head = _parse_head(data[:blank[0]])
    if too_large:
        raise _failure(head, SipParseError("Message Too Large", status=513))
    length, error = _content_length(head.headers)
    if error is not None:
        raise _failure(head, error)
    body = data[blank[1]:]
    if length is not None:
        if length > len(body):
            raise _failure(head, SipParseError("Content-Length larger than message"))
        body = body[:length]
    return _build(head, body)


class StreamParser:
    """Frames messages on a TCP/TLS byte stream by Content-Length.

    ``feed`` returns what the bytes completed: requests, responses,
    :class:`SipParseError` for messages that were framed but malformed (the
    stream goes on), and :class:`KeepAlive` for RFC 5626 pings. A lone CRLF
    between messages (a pong) is skipped. Once framing is lost (an oversize
    message, a missing or bad Content-Length, which RFC 3261 §18.3 makes
    mandatory on streams) the last item is the error, ``broken`` is True and
    further bytes are ignored: the caller answers what it can and closes.

    Work is linear in the bytes fed, however they are chunked: the search for
    the end of the header block resumes where it stopped.
    """

    def __init__(self, max_size=65536):
        self.max_size = max_size
        self.broken = False
        self._buffer = bytearray()
        self._scan_from = 0
        self._pending = None  # (head, body start, message end) awaiting its body

    @property
    def buffered(self):
        """Bytes of a message not yet complete (0 between messages)."""
        return len(self._buffer)

    def feed(self, data):
        if self.broken:
            return []
        self._buffer += data
        out = []
        try:
            self._drain(out)
        except Exception as e:  # pragma: no cover - a parser bug must not kill the connection silently
            error = SipParseError("Malformed message")
            error.__cause__ = e
            self._break(out, error)
        return out

    def _break(self, out, error):
        out.append(error)
        self.broken = True
        self._buffer.clear()
        self._pending = None

    def _drain(self, out):
        buf = self._buffer
        while True:
            if self._pending is None:
                if not buf:
                    return
                first = buf[0]
                if first == 13 or first == 10:
                    if buf.startswith(b"\r\n\r\n"):
                        out.append(KeepAlive())
                        del buf[:4]
                        continue
                    if buf.startswith(b"\r\n"):
                        if len(buf) == 2 or (len(buf) == 3 and buf[2] == 13):
                            return  # may still grow into a ping
                        del buf[:2]
                        continue
                    if first == 10:
                        del buf[:1]
                        continue
                    if len(buf) == 1:
                        return  # a CR whose LF has not arrived yet
                blank = _find_blank_line(buf, self._scan_from)
                if blank is None:
                    if len(buf) > self.max_size:
                        head = _parse_head(bytes(buf[:self.max_size]))
                        self._break(out, _failure(head, SipParseError("Message Too Large", status=513)))
                        return
                    self._scan_from = max(0, len(buf) - 3)
                    return
                self._scan_from = 0
                head_end, body_start = blank
                head = _parse_head(bytes(buf[:head_end]))
                length, error = _content_length(head.headers)
                if error is None and length is None:
                    error = SipParseError("Missing Content-Length header")
                if error is None and body_start + length > self.max_size:
                    error = SipParseError("Message Too Large", status=513)
                if error is not None:
                    self._break(out, _failure(head, error))
                    return
                self._pending = (head, body_start, body_start + length)
            head, body_start, end = self._pending
            if len(buf) < end:
                return
            body = bytes(buf[body_start:end])
            del buf[:end]
            self._pending = None
            try:
                out.append(_build(head, body))
            except SipParseError as e:
                out.append(e)


# -- building responses ------------------------------------------------------

# RFC 3261 §21, with the codes later RFCs added that SIPREC peers use.
REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

_CLASS_REASONS = {
    1: "Provisional", 2: "Success", 3: "Redirection",
    4: "Client Error", 5: "Server Error", 6: "Global Failure",
}


def make_response(request, status, reason=None, *, to_tag=None, headers=(), body=b"",
                  content_type=None):
    """A response to *request* (RFC 3261 §8.2.6.2).

    Copies every Via (in order), From, To, Call-ID and CSeq, and Timestamp on
    a 100 (§8.2.6.1); adds *to_tag* to To when To has none yet. Record-Route,
    Contact and the like are the dialog layer's business. *headers* are added
    after those, then Content-Type when given.
    """
    if not isinstance(status, int) or not 100 <= status <= 699:
        raise ValueError(f"SIP status must be 100-699, got {status!r}")
    if reason is None:
        reason = REASON_PHRASES.get(status) or _CLASS_REASONS[status // 100]
    elif "\r" in reason or "\n" in reason:
        raise ValueError(f"reason phrase must be one line: {reason!r}")
    source = request.headers
    out = Headers()
    items = out._items
    items.extend(e for e in source._items if e[0] == "via")
    for key in ("from", "to", "call-id", "cseq"):
        value = source.get(key)
        if value is None:
            continue
        if key == "to" and to_tag is not None:
            addr = parse_name_addr(value)
            if not addr.tag:
                # Appending keeps the value as the peer wrote it, which is right
                # for both the <uri> and the bare addr-spec forms; a valueless
                # ";tag" has to be replaced instead.
                value = str(addr.with_tag(to_tag)) if "tag" in addr.params else f"{value};tag={to_tag}"
        items.append((key, _CANONICAL[key], value))
    if status == 100 and "Timestamp" in source:
        items.append(("timestamp", "Timestamp", source.get("Timestamp")))
    for name, value in headers:
        out.add(name, value)
    if content_type is not None:
        out.set("Content-Type", content_type)
    return Response(status, reason, out, bytes(body))


# -- identifiers -------------------------------------------------------------
# RFC 3261 asks for cryptographic randomness for tags (§19.3) and for Call-IDs
# (§8.1.1.4); branches must be unique across space and time (§8.1.1.7).


def new_branch():
    """A Via branch with the RFC 3261 magic cookie."""
    return "z9hG4bK" + secrets.token_hex(8)


def new_tag():
    """A From/To tag (64 random bits; RFC 3261 asks for at least 32)."""
    return secrets.token_hex(8)


def new_call_id(host):
    """A globally unique Call-ID, ``<128 random bits>@host``."""
    return f"{secrets.token_hex(16)}@{host}"
