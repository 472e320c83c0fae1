"""Splitting a SIPREC INVITE body into its parts (RFC 2046 multipart, tolerantly).

A SIPREC offer is ``multipart/mixed`` holding ``application/sdp`` and
``application/rs-metadata+xml`` (RFC 7866 §8). Session recording clients in
the field bend RFC 2046 in many small ways, and a recording that is refused
because of a stray space is a recording lost, so this parser accepts what it
can make sense of:

- parts in any order, preamble and epilogue text;
- a ``Content-Length`` on a part: honoured when it lands exactly before the
  next delimiter (it lets a part carry a line that looks like a delimiter),
  ignored when it does not;
- a missing closing delimiter (the last part runs to the end of the body);
- a quoted boundary, whitespace around ``=`` or before a delimiter line,
  LF-only line ends;
- a part with no headers (it is ``text/plain``, as RFC 2046 says; see
  :func:`find_siprec_parts` for how such parts are still recognised), and
  part headers not followed by a blank line;
- nested multiparts, which are flattened.

The standard library's ``email`` parser was not used: it never fails (so a
body with no delimiter at all cannot be told apart from an empty one), it
does not honour per-part Content-Length, and it decodes what it should pass
through. Sans-IO: bytes in, :class:`BodyPart` objects out.
"""

import re

import attrs

__all__ = [
    "BodyError",
    "BodyPart",
    "DEFAULT_BOUNDARY",
    "build_multipart",
    "find_siprec_parts",
    "parse_content_type",
    "split_body",
]

DEFAULT_BOUNDARY = "siprecd-boundary-5b9e2c"
METADATA_TYPES = ("application/rs-metadata+xml", "application/rs-metadata")
SDP_TYPE = "application/sdp"

# Nested multiparts deeper than this are kept whole rather than split: no
# SRC nests at all, so depth is only ever an attack.
_MAX_NESTING = 4
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+[ \t]*:")


class BodyError(ValueError):
    """The body says it is multipart but cannot be split (answer 400)."""


class _TooManyParts(BodyError):
    pass


@attrs.frozen
class BodyPart:
    """One leaf part of a message body."""

    content_type: str          # lower-cased "type/subtype", no parameters
    params: dict[str, str]     # content-type parameters, keys lower-cased, quotes removed
    headers: dict[str, str]    # part headers, keys lower-cased
    body: bytes


def _split_params(text):
    """Split on ';' outside double quotes."""
    pieces, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return pieces


def _unquote(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_content_type(value):
    """``'Multipart/Mixed; boundary="x"'`` -> ``('multipart/mixed', {'boundary': 'x'})``.

    Never fails: whatever is before the first ';' is the type, and
    parameters without '=' are dropped.
    """
    if not value:
        return "", {}
    pieces = _split_params(value)
    ctype = pieces[0].strip().lower()
    params = {}
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        name = name.strip().lower()
        if eq and name and name not in params:
            params[name] = _unquote(val)
    return ctype, params


def _sniff(body):
    """``(content type, params)`` for a body that came without a Content-Type."""
    head = body.lstrip()[:64]
    if head.startswith(b"--"):
        first = body.lstrip().split(b"\n", 1)[0].strip()[2:]
        if first and not first.endswith(b"--"):
            return "multipart/mixed", {"boundary": first.decode("utf-8", "surrogateescape")}
    if head.startswith(b"v="):
        return SDP_TYPE, {}
    if head.startswith(b"<") and b"recording" in body[:4096]:
        return METADATA_TYPES[0], {}
    return "text/plain", {}


def split_body(content_type, body, *, max_parts=16):
    """Split a message body into its leaf parts.

    A body that is not multipart is one part (an empty body is no part).
    With no Content-Type at all, a multipart body (first line
    ``--boundary``), SDP and recording metadata are recognised by their
    first bytes. Raises :class:`BodyError` when a multipart body has no
    boundary parameter, its boundary never occurs, or it has more than
    *max_parts* parts.
    """
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    body = bytes(body or b"")
    ctype, params = parse_content_type(content_type)
    if not body.strip():
        return []
    if not ctype:
        ctype, params = _sniff(body)
    if not ctype.startswith("multipart/"):
        return [BodyPart(ctype, params, {}, body)]
    parts = []
    _split_multipart(params, body, parts, max_parts, 0)
    return parts


def _delimiter_pattern(boundary):
    """Delimiter lines for *boundary*: may be indented, may carry trailing blanks."""
    return re.compile(
        rb"(?m)^[ \t]*--" + re.escape(boundary) + rb"(--)?[ \t]*\r?$"
    )


def _find_delimiters(params, body):
    raw = params.get("boundary", "")
    boundary = raw.strip().encode("utf-8", "surrogateescape")
    if not boundary:
        raise BodyError("multipart body without a boundary parameter")
    pattern = _delimiter_pattern(boundary)
    if pattern.search(body) is None and boundary.startswith(b"--"):
        # Some senders put the leading dashes into the parameter as well.
        alt = _delimiter_pattern(boundary[2:])
        if boundary[2:] and alt.search(body) is not None:
            return alt
    if pattern.search(body) is None:
        raise BodyError(f"multipart boundary {raw!r} not found in the body")
    return pattern


def _line_end(body, pos):
    """Index just past the line starting at *pos* (past its LF), or len(body)."""
    nl = body.find(b"\n", pos)
    return len(body) if nl < 0 else nl + 1


def _read_headers(body, pos, pattern):
    """Part headers from *pos*: returns (headers, body_start).

    Headers end at a blank line (consumed), at the first line that is not a
    header (a part whose headers are missing, or whose blank line is), or at
    a delimiter line.
    """
    headers = {}
    last = None
    while pos < len(body):
        end = _line_end(body, pos)
        line = body[pos:end].rstrip(b"\r\n")
        if not line.strip():
            return headers, end
        if pattern.match(body, pos):
            return headers, pos
        if line[:1] in (b" ", b"\t") and last is not None:
            headers[last] += " " + line.strip().decode("utf-8", "replace")
        elif _HEADER_LINE.match(line):
            name, _, value = line.partition(b":")
            last = name.strip().decode("ascii", "replace").lower()
            text = value.strip().decode("utf-8", "replace")
            if last in headers:
                # Two of the same header on one part: keep the first.
                last = None
            else:
                headers[last] = text
        else:
            return headers, pos
        pos = end
    return headers, pos


def _strip_line_end(content):
    """The line break before a delimiter belongs to the delimiter (RFC 2046)."""
    if content.endswith(b"\r\n"):
        return content[:-2]
    if content.endswith(b"\n"):
        return content[:-1]
    return content


def _declared_length(headers):
    value = headers.get("content-length", "").strip()
    if not value.isdigit() or not value.isascii() or len(value) > 9:
        return None
    return int(value)


def _split_multipart(params, body, parts, max_parts, depth):
    pattern = _find_delimiters(params, body)
    match = pattern.search(body)
    while match is not None and not match.group(1):
        start = _line_end(body, match.end())
        headers, body_start = _read_headers(body, start, pattern)
        following = pattern.search(body, body_start)
        content = None
        length = _declared_length(headers)
        if length is not None and body_start + length <= len(body):
            after = body_start + length
            nxt = pattern.search(body, after)
            gap = body[after:nxt.start()] if nxt is not None else body[after:]
            if not gap.strip():
                content, following = body[body_start:after], nxt
        if content is None:
            stop = following.start() if following is not None else len(body)
            # With no closing delimiter the body's last line break is the
            # one a delimiter would have owned; drop it all the same.
            content = _strip_line_end(body[body_start:stop])
        _add_part(headers, content, parts, max_parts, depth)
        match = following


def _add_part(headers, content, parts, max_parts, depth):
    ctype, params = parse_content_type(headers.get("content-type"))
    if not ctype:
        ctype = "text/plain"
    if ctype.startswith("multipart/") and depth + 1 < _MAX_NESTING:
        nested = []
        try:
            _split_multipart(params, content, nested, max_parts - len(parts), depth + 1)
        except _TooManyParts:
            raise
        except BodyError:
            nested = None  # an unsplittable inner multipart is kept whole
        if nested is not None:
            parts.extend(nested)
            return
    if len(parts) >= max_parts:
        raise _TooManyParts(f"multipart body has more than {max_parts} parts")
    parts.append(BodyPart(ctype, params, headers, content))


def _looks_like_sdp(part):
    return part.body.lstrip()[:2] == b"v="


def _looks_like_metadata(part):
    head = part.body.lstrip()[:1]
    return head == b"<" and b"recording" in part.body[:4096]


def find_siprec_parts(parts):
    """``(sdp, metadata)`` bytes from split parts; either may be None.

    The first ``application/sdp`` part and the first
    ``application/rs-metadata+xml`` (or ``application/rs-metadata``) part
    win. When no part is so labelled, an unlabelled one (``text/plain``,
    ``application/octet-stream`` or an empty type, as a part with no
    headers gets) that starts like SDP or like recording metadata is used.
    """
    sdp = next((p.body for p in parts if p.content_type == SDP_TYPE), None)
    metadata = next((p.body for p in parts if p.content_type in METADATA_TYPES), None)
    unlabelled = [
        p for p in parts
        if p.content_type in ("", "text/plain", "application/octet-stream")
    ]
    if sdp is None:
        sdp = next((p.body for p in unlabelled if _looks_like_sdp(p)), None)
    if metadata is None:
        metadata = next((p.body for p in unlabelled if _looks_like_metadata(p)), None)
    return sdp, metadata


def build_multipart(
    parts,
    boundary=DEFAULT_BOUNDARY,
    *,
    line_end="\r\n",
    quote_boundary=False,
    part_content_length=False,
    closing=True,
    preamble=b"",
    epilogue=b"",
):
    """``(Content-Type value, body)`` for *parts*, a list of ``(content_type, body)``.

    Recording metadata parts get ``Content-Disposition: recording-session``
    (RFC 7866 §8). The keyword options produce the variations real SRCs
    send, for tests and the call simulator: LF-only line ends, a quoted
    boundary, a Content-Length on each part, no closing delimiter, and text
    before the first or after the last delimiter.
    """
    eol = line_end.encode("ascii")
    mark = boundary.encode("ascii")
    out = [preamble] if preamble else []
    for ctype, content in parts:
        lines = [b"--" + mark, b"Content-Type: " + ctype.encode("ascii")]
        if parse_content_type(ctype)[0] in METADATA_TYPES:
            lines.append(b"Content-Disposition: recording-session")
        if part_content_length:
            lines.append(b"Content-Length: " + str(len(content)).encode("ascii"))
        out.append(eol.join(lines) + eol + eol + content + eol)
    if closing:
        out.append(b"--" + mark + b"--" + eol)
    out.append(epilogue)
    shown = f'"{boundary}"' if quote_boundary else boundary
    return f"multipart/mixed;boundary={shown}", b"".join(out)
