"""Recording metadata (RFC 7865, and the dialects SRCs actually send) as objects.

One reader serves every dialect, because they differ in spelling
more than in meaning:

- RFC 7865, namespace ``urn:ietf:params:xml:ns:recording:1``: ``session_id``,
  ``participant_id``, ``stream_id`` attributes, ``nameID aor=``, and
  ``participantstreamassoc`` with ``send``/``recv``;
- the pre-RFC draft, namespace ``urn:ietf:params:xml:ns:recording`` (Oracle /
  Acme Packet): ``id=``/``session=`` attributes, ``aor``/``name`` or
  ``nameID`` in the participant, ``send``/``recv`` inside ``participant``;
- either of them with a prefix (Ribbon's ``tns:``), or with no namespace;
- ``datamode`` or ``dataMode`` (element names are matched without regard to
  case or namespace; only their place in the tree matters);
- Cisco BroadWorks: root ``<recording_metadata>`` in the namespace
  ``urn:ietf:params:xml:ns:siprec``, draft-style ``id=``/``session=``
  attributes, ``<dataMode>``, and a ``<broadWorksRecordingMetadata>``
  element (wherever it is) whose ``extTrackingID`` and ``callID`` name the
  call on the BroadWorks side (``broadworks_tracking_id``,
  ``broadworks_call_id``: guid candidates).

A participant whose ``participantsessionassoc`` (or, in the draft form, the
participant itself) carries a ``disassociate-time`` has left the session
(``Participant.disassociated``): the stream of whoever replaces it takes
its place (see ``siprecd.siprec.session``).

Extension data is flattened into ``RecordingMetadata.extensions``:

- every leaf element below an ``extensiondata`` element, and below a
  ``callData`` element wherever it is, becomes one entry;
- the key is the path from just below ``extensiondata`` down to the leaf,
  parts joined by ``.``; a part is the element's name as written, with its
  prefix when the element is in a foreign namespace (``apkt:ucid``,
  ``ac:AvayaUCID``) and without one when it is in the recording namespace
  (Ribbon's ``tns:callData/tns:gcid`` is ``callData.gcid``); an element with
  a ``label`` (or ``name``) attribute has it appended in brackets
  (``apkt:header[P-Asserted-Identity].value``);
- the value is the leaf's text with surrounding whitespace removed;
- a key seen again (one per participant, say) gets ``#2``, ``#3``, ...

Safety: the XML is parsed by ``defusedxml`` with DTDs, entity declarations
and external references all refused, after a size check and with an element
depth limit enforced while parsing. Anything wrong -- not XML, hostile XML,
not recording metadata -- is a :class:`MetadataError` and nothing else.
"""

import re
from collections import deque
from xml.etree.ElementTree import ParseError
from xml.parsers.expat import errors as expat_errors

import attrs
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

__all__ = [
    "DRAFT_NAMESPACE",
    "MetadataError",
    "MediaStream",
    "Participant",
    "RFC7865_NAMESPACE",
    "RecordingMetadata",
    "merge_metadata",
    "parse_metadata",
]

RFC7865_NAMESPACE = "urn:ietf:params:xml:ns:recording:1"
DRAFT_NAMESPACE = "urn:ietf:params:xml:ns:recording"
BROADWORKS_NAMESPACE = "urn:ietf:params:xml:ns:siprec"
_DIALECTS = {RFC7865_NAMESPACE: "rfc7865", DRAFT_NAMESPACE: "draft",
             BROADWORKS_NAMESPACE: "broadworks", "": "none"}
_ROOTS = ("recording", "recording_metadata")

DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_DEPTH = 32


class MetadataError(ValueError):
    """The metadata is not usable recording metadata (or is hostile)."""


@attrs.frozen
class Participant:
    id: str
    aors: tuple[str, ...] = ()
    name: str | None = None
    sends: tuple[str, ...] = ()      # ids of the streams this participant sends
    receives: tuple[str, ...] = ()
    # True once it has left the session (a disassociate-time); None: not said.
    disassociated: bool | None = None


@attrs.frozen
class MediaStream:
    id: str
    label: str | None = None         # the SDP a=label this stream is carried on
    session_id: str | None = None


@attrs.frozen
class RecordingMetadata:
    """What one metadata document (or a merge of several) says.

    ``dialect`` is ``"rfc7865"``, ``"draft"`` (the namespace without ``:1``),
    ``"broadworks"``, ``"none"`` (no namespace) or ``"other"`` (some other
    namespace).
    """

    data_mode: str | None = None                 # "complete" | "partial" | None
    dialect: str = "rfc7865"
    session_ids: tuple[str, ...] = ()
    sip_session_ids: tuple[str, ...] = ()
    group_ids: tuple[str, ...] = ()
    participants: tuple[Participant, ...] = ()
    streams: tuple[MediaStream, ...] = ()
    extensions: dict[str, str] = attrs.field(factory=dict)
    ucid: str | None = None          # any "*:ucid" extension (Oracle: apkt:ucid)
    avaya_ucid: str | None = None    # AudioCodes' AvayaUCID extension
    genesys_uuid: str | None = None  # AudioCodes' GenesysUUID extension
    broadworks_tracking_id: str | None = None  # BroadWorks extTrackingID
    broadworks_call_id: str | None = None      # BroadWorks callID

    def streams_for_label(self, label):
        """The streams carried on SDP label *label* (usually one)."""
        return tuple(s for s in self.streams if s.label == label)

    def participant_for_label(self, label):
        """The participant that sends the stream with SDP label *label*, if known."""
        return self.label_to_participant().get(label)

    def label_to_participant(self):
        """``{label: sending participant}`` for every label whose sender is known.

        When several participants send one stream (a mixed stream), the
        first listed wins; when several streams share a label, the first
        one with a known sender does.
        """
        sender = {}
        for participant in self.participants:
            for stream_id in participant.sends:
                sender.setdefault(stream_id, participant)
        out = {}
        for stream in self.streams:
            if stream.label is not None and stream.label not in out and stream.id in sender:
                out[stream.label] = sender[stream.id]
        return out


# -- parsing XML safely ------------------------------------------------------


class _TooDeep(Exception):
    pass


class _UnboundPrefix(Exception):
    pass


_UNBOUND_PREFIX = expat_errors.codes[expat_errors.XML_ERROR_UNBOUND_PREFIX]


class _Node:
    """An element: enough of ElementTree's, plus the prefix it was written with."""

    __slots__ = ("ns", "local", "lname", "prefix", "attrs", "children", "text")

    def __init__(self, ns, local, prefix, attrs_):
        self.ns = ns
        self.local = local
        self.lname = local.lower()
        self.prefix = prefix
        self.attrs = attrs_
        self.children = []
        self.text = []

    def value(self):
        return "".join(self.text).strip()

    def attr(self, *names):
        for name in names:
            value = self.attrs.get(name, "").strip()
            if value:
                return value
        return None

    def each(self, *lnames):
        return [c for c in self.children if c.lname in lnames]


def _split_tag(tag):
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


class _Builder:
    """A parser target that builds :class:`_Node` trees and limits depth."""

    def __init__(self, max_depth):
        self.max_depth = max_depth
        self.stack = []
        self.root = None
        self.closed = False
        self.prefixes = {}

    def start_ns(self, prefix, uri):
        self.prefixes.setdefault(uri, prefix)

    def start(self, tag, attrib):
        if len(self.stack) >= self.max_depth:
            raise _TooDeep()
        ns, local = _split_tag(tag)
        attrs_ = {}
        for key, value in attrib.items():
            attrs_.setdefault(_split_tag(key)[1].lower(), value)
        node = _Node(ns, local, self.prefixes.get(ns, "") if ns else "", attrs_)
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    def end(self, tag):
        self.stack.pop()
        self.closed = not self.stack

    def data(self, text):
        if self.stack:
            self.stack[-1].text.append(text)

    def close(self):
        return self.root


_PREFIX_USES = re.compile(
    rb"<\s*([A-Za-z_][\w.\-]*):[A-Za-z_]|\s([A-Za-z_][\w.\-]*):[A-Za-z_][\w.\-]*\s*="
)
_PREFIX_DECLS = re.compile(rb"xmlns:([A-Za-z_][\w.\-]*)\s*=")
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_][\w.\-:]*")


def _declare_missing_prefixes(data):
    """*data* with undeclared prefixes declared on its root element, or None.

    AudioCodes documents its extension elements as ``<ac:AvayaUCID ...>``;
    an SRC that forgets the matching ``xmlns:ac`` should not lose the call's
    metadata over it.
    """
    used = {a or b for a, b in _PREFIX_USES.findall(data)}
    missing = used - set(_PREFIX_DECLS.findall(data)) - {b"xml", b"xmlns"}
    first = _FIRST_ELEMENT.search(data)
    if not missing or first is None:
        return None
    decls = b"".join(
        b' xmlns:' + p + b'="urn:x-siprecd:undeclared-prefix:' + p + b'"'
        for p in sorted(missing)
    )
    return data[:first.end()] + decls + data[first.end():]


def _parse_tree(data, max_depth):
    builder = _Builder(max_depth)
    parser = DefusedXMLParser(
        target=builder, forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(data)
        parser.close()
    except _TooDeep:
        raise MetadataError(f"metadata nested deeper than {max_depth} elements") from None
    except DefusedXmlException as e:
        raise MetadataError(f"metadata uses a forbidden XML feature ({type(e).__name__})") from None
    except ParseError as e:
        if builder.closed:
            # Text trailing the root element: the document is whole.
            return builder.root
        if getattr(e, "code", None) == _UNBOUND_PREFIX:
            raise _UnboundPrefix() from None
        raise MetadataError(f"metadata is not well-formed XML: {e}") from None
    except Exception as e:  # expat and the parser may raise odd things on hostile bytes
        raise MetadataError(f"metadata could not be parsed: {type(e).__name__}") from None
    if builder.root is None:
        raise MetadataError("metadata has no root element")
    return builder.root


def _parse_xml(xml, max_bytes, max_depth):
    if isinstance(xml, str):
        xml = xml.encode("utf-8", "surrogateescape")
    if not isinstance(xml, (bytes, bytearray, memoryview)):
        raise MetadataError("metadata must be bytes")
    data = bytes(xml)
    if len(data) > max_bytes:
        raise MetadataError(f"metadata is larger than {max_bytes} bytes")
    # Leading blank lines before the XML declaration are a common slip.
    data = data.lstrip(b" \t\r\n")
    if not data:
        raise MetadataError("metadata is empty")
    try:
        return _parse_tree(data, max_depth)
    except _UnboundPrefix:
        fixed = _declare_missing_prefixes(data)
        if fixed is not None:
            try:
                return _parse_tree(fixed, max_depth)
            except _UnboundPrefix:
                pass
        raise MetadataError("metadata uses an undeclared namespace prefix") from None


# -- reading the tree --------------------------------------------------------


def _find_recording(root):
    """The ``recording`` (BroadWorks: ``recording_metadata``) element: the
    root, or failing that the first one inside."""
    queue = deque([root])
    while queue:
        node = queue.popleft()
        if node.lname in _ROOTS:
            return node
        queue.extend(node.children)
    raise MetadataError(f"metadata root element is <{root.local}>, not <recording>")


def _find_all(node, lname):
    """Every element named *lname* at or below *node*, in document order."""
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        if current.lname == lname:
            out.append(current)
        stack.extend(reversed(current.children))
    return out


def _disassociated(node):
    """True when *node* has a non-empty disassociate-time child, else None."""
    return True if any(d.value() for d in node.each("disassociate-time")) else None


def _dedupe(values):
    return tuple(dict.fromkeys(v for v in values if v))


class _Extensions:
    """Flattens extension data into keys as the module docstring describes."""

    def __init__(self, recording_ns):
        self.recording_ns = recording_ns
        self.values = {}
        self.counts = {}
        self.firsts = {}

    def segment(self, node):
        foreign = node.ns and node.ns != self.recording_ns and node.ns not in _DIALECTS
        seg = f"{node.prefix}:{node.local}" if foreign and node.prefix else node.local
        label = node.attr("label", "name")
        return f"{seg}[{label}]" if label else seg

    def collect(self, node):
        for child in node.children:
            if child.lname == "extensiondata":
                self.flatten(child, "")
            elif child.lname in ("calldata", "broadworksrecordingmetadata"):
                self.flatten(child, self.segment(child))
            else:
                self.collect(child)

    def flatten(self, node, path):
        for child in node.children:
            seg = self.segment(child)
            key = f"{path}.{seg}" if path else seg
            if child.children:
                self.flatten(child, key)
            else:
                self.put(key, child)

    def put(self, key, node):
        value = node.value()
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen:
            key = f"{key}#{seen + 1}"
            while key in self.values:  # a literal "x#2" element name; rare
                key += "+"
        self.values[key] = value
        if value and node.lname not in self.firsts:
            self.firsts[node.lname] = value


def _participant(node):
    aors, names = [], []
    for name_id in node.each("nameid"):
        aors.append(name_id.attr("aor"))
        aors.extend(a.value() for a in name_id.each("aor"))
        names.extend(n.value() for n in name_id.each("name"))
    aors.extend(a.value() for a in node.each("aor"))
    names.extend(n.value() for n in node.each("name"))
    return Participant(
        id=node.attr("participant_id", "id"),
        aors=_dedupe(aors),
        name=next((n for n in names if n), None),
        sends=_dedupe(s.value() for s in node.each("send")),
        receives=_dedupe(r.value() for r in node.each("recv", "receive")),
        disassociated=_disassociated(node),
    )


def _stream(node):
    label = next((n.value() for n in node.each("label") if n.value()), None)
    return MediaStream(
        id=node.attr("stream_id", "id"),
        label=label if label is not None else node.attr("label"),
        session_id=node.attr("session_id", "session"),
    )


def _read(recording):
    ns = recording.ns.strip()
    dialect = _DIALECTS.get(ns, "other")
    mode = next((d.value().lower() for d in recording.each("datamode")), None)

    sessions = recording.each("session")
    participants = {}
    for node in recording.each("participant"):
        p = _participant(node)
        if p.id is None:
            continue  # nothing can refer to it
        old = participants.get(p.id)
        participants[p.id] = p if old is None else _combine(old, p)
    for assoc in recording.each("participantstreamassoc"):
        pid = assoc.attr("participant_id", "participant")
        if pid is None:
            continue
        p = participants.get(pid, Participant(pid))
        participants[pid] = attrs.evolve(
            p,
            sends=_dedupe(p.sends + tuple(s.value() for s in assoc.each("send"))),
            receives=_dedupe(
                p.receives + tuple(r.value() for r in assoc.each("recv", "receive"))
            ),
        )
    for assoc in recording.each("participantsessionassoc"):
        pid = assoc.attr("participant_id", "participant")
        if pid is not None and _disassociated(assoc):
            p = participants.get(pid, Participant(pid))
            participants[pid] = attrs.evolve(p, disassociated=True)
    streams = {}
    for node in recording.each("stream"):
        s = _stream(node)
        if s.id is not None:
            streams.setdefault(s.id, s)

    ext = _Extensions(ns)
    ext.collect(recording)
    broadworks = _find_all(recording, "broadworksrecordingmetadata")

    def broadworks_value(lname):
        return next((leaf.value() for b in broadworks for leaf in _find_all(b, lname)
                     if leaf.value()), None)

    return RecordingMetadata(
        data_mode=mode if mode in ("complete", "partial") else None,
        dialect=dialect,
        session_ids=_dedupe(s.attr("session_id", "id") for s in sessions),
        sip_session_ids=_dedupe(
            i.value() for s in sessions for i in s.each("sipsessionid")
        ),
        group_ids=_dedupe(g.attr("group_id", "id") for g in recording.each("group")),
        participants=tuple(participants.values()),
        streams=tuple(streams.values()),
        extensions=ext.values,
        ucid=ext.firsts.get("ucid"),
        avaya_ucid=ext.firsts.get("avayaucid"),
        genesys_uuid=ext.firsts.get("genesysuuid"),
        broadworks_tracking_id=broadworks_value("exttrackingid"),
        broadworks_call_id=broadworks_value("callid"),
    )


def parse_metadata(xml, *, max_bytes=DEFAULT_MAX_BYTES, max_depth=DEFAULT_MAX_DEPTH):
    """Parse one rs-metadata document; raises :class:`MetadataError` only.

    *max_bytes* and *max_depth* bound the work hostile input can cause; a
    *max_depth* above 500 is refused (ValueError), as reading the tree
    recurses that deep.
    """
    if not 1 <= max_depth <= 500:
        raise ValueError(f"max_depth must be 1-500, got {max_depth}")
    root = _parse_xml(xml, max_bytes, max_depth)
    return _read(_find_recording(root))


# -- partial updates ---------------------------------------------------------


def _combine(old, new):
    """*new* over *old*, field by field: what *new* leaves empty, *old* keeps.

    A partial update often repeats a participant only to change one thing
    (its name after a caller-ID UPDATE, its streams after a transfer), so an
    empty field in the update means "unchanged", not "cleared".
    """
    return type(new)(**{
        f.name: (getattr(new, f.name) if getattr(new, f.name) not in (None, ())
                 else getattr(old, f.name))
        for f in attrs.fields(type(new))
    })


def _merge_by_id(old, new):
    merged = {item.id: item for item in old}
    for item in new:
        merged[item.id] = _combine(merged[item.id], item) if item.id in merged else item
    return tuple(merged.values())


def _merge_participants(old, new):
    """Participants merged by id; a stream the update gives a sender loses its old ones.

    After a transfer the SRC names the new party as the sender of the
    transferred party's stream; the party who left must stop being its
    sender, or the label would still point at them. Likewise for receivers.
    """
    merged = _merge_by_id(old, new)
    sent = {p.id: p.sends for p in new if p.sends}
    heard = {p.id: p.receives for p in new if p.receives}
    claimed = {s for sends in sent.values() for s in sends}
    listened = {r for receives in heard.values() for r in receives}
    return tuple(
        attrs.evolve(
            p,
            sends=p.sends if p.id in sent else tuple(s for s in p.sends if s not in claimed),
            receives=(p.receives if p.id in heard
                      else tuple(r for r in p.receives if r not in listened)),
        )
        for p in merged
    )


def merge_metadata(previous, update):
    """The state after *update* is applied to *previous* (RFC 7865 §6).

    ``complete`` (or no data mode) replaces everything. ``partial`` merges:
    participants and streams are matched by id, updated ones replace the old
    field by field (see :func:`_combine`), new ones are added, none removed;
    a stream the update gives senders (receivers) is no longer sent
    (received) by anyone else; ids and extensions accumulate.
    """
    if previous is None or update.data_mode != "partial":
        return update
    return RecordingMetadata(
        data_mode=previous.data_mode,
        dialect=update.dialect,
        session_ids=_dedupe(previous.session_ids + update.session_ids),
        sip_session_ids=_dedupe(previous.sip_session_ids + update.sip_session_ids),
        group_ids=_dedupe(previous.group_ids + update.group_ids),
        participants=_merge_participants(previous.participants, update.participants),
        streams=_merge_by_id(previous.streams, update.streams),
        extensions={**previous.extensions, **update.extensions},
        ucid=update.ucid or previous.ucid,
        avaya_ucid=update.avaya_ucid or previous.avaya_ucid,
        genesys_uuid=update.genesys_uuid or previous.genesys_uuid,
        broadworks_tracking_id=update.broadworks_tracking_id or previous.broadworks_tracking_id,
        broadworks_call_id=update.broadworks_call_id or previous.broadworks_call_id,
    )
