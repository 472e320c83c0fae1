"""A recording session's state (RFC 7866): streams, participants, call
identifiers, and how each new SDP offer changes the streams.

Sans-IO: offers and metadata go in, an SDP answer and a description of
what changed come out. Ports come from an IMediaPortAllocator. Roles are
not decided here (the start-streaming request decides them); streams are
described by their position among the audio m-lines, their label, and
their *seat*: which of the first two parties' places they hold.

Seats
    The first two audio streams of a session hold seats 0 and 1 (their
    audio_index). A stream that closes (its m-line set to port 0 or gone)
    leaves its seat vacant, and the next new stream takes it: a transfer
    signalled as a new m-line goes on in the transferred party's place. So
    does a new stream whose sender, by the metadata, comes while the sender
    of a seated stream has been disassociated from the session (RFC 7865
    ``disassociate-time``). Any other new stream (a third party of a
    3-way call or conference, a supervisor's barge-in) has no seat (None).
"""

import uuid

import attrs

from siprecd.media import srtp as srtpmod
from siprecd.siprec import sdp as sdpmod
from siprecd.siprec.metadata import merge_metadata

__all__ = ["RecordedStream", "RecordingSession", "NotAcceptable"]


class NotAcceptable(Exception):
    """No m-line of the offer can be recorded (answer 488)."""


@attrs.define
class RecordedStream:
    """One recorded audio stream (an accepted audio m-line)."""

    index: int                      # m-line position in the SDP
    audio_index: int                # position among the audio m-lines
    label: str | None
    codec: object                   # sdp.Codec
    telephone_event: object | None  # sdp.Codec
    local_port: int
    remote_host: str | None
    remote_port: int
    on_hold: bool = False
    crypto: tuple = attrs.field(default=(), repr=False)   # offered a=crypto values (keys)
    srtp: object = attrs.field(default=None, repr=False)  # srtp.SrtpChoice of an SRTP stream
    # The first two parties' place it holds (0 or 1), or None (see the
    # module docstring); by default its audio_index for the first two.
    seat: int | None = attrs.field(
        default=attrs.Factory(lambda self: self.audio_index if self.audio_index < 2 else None,
                              takes_self=True))

    @property
    def key(self):
        """Streams are matched across offers by label, else by position."""
        return ("label", self.label) if self.label else ("index", self.index)


@attrs.define
class RecordingSession:
    call_id: str
    guid: object                     # guid.CallIdentifier
    identifiers: list                # every guid.CallIdentifier seen
    metadata: object | None          # metadata.RecordingMetadata
    started_at: float
    transport: str
    remote: tuple                    # (host, port) of the SRC
    session_id: str | None = None    # the SRC's Session-ID (RFC 7989), if sent
    local_session_id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    streams: list = attrs.field(factory=list)
    refused: list = attrs.field(factory=list)   # m-line indexes answered with port 0
    state: str = "offered"           # offered -> confirmed -> ended
    ended_reason: str | None = None
    sdp_session_id: str = attrs.field(factory=lambda: str(uuid.uuid4().int % 10**12))
    sdp_version: int = 0
    answer: bytes | None = attrs.field(default=None, repr=False)  # holds our SRTP keys
    dialog: object = None
    source: object = None            # endpoint.Source the INVITE came from
    timer: tuple | None = None       # (Session-Expires seconds, refresher) when in use
    delayed_offer: bool = False      # the INVITE had no SDP: our offer, the answer in the ACK
    awaiting_answer: bool = False    # our offer is out; the SRC's answer is due in its ACK
    _seats: dict = attrs.field(factory=dict, repr=False)    # stream key -> seat, ever given
    _holders: dict = attrs.field(factory=dict, repr=False)  # seat -> key of the stream in it

    @property
    def mixed(self):
        """One stream carries both parties (single-stream recording)."""
        return len(self.streams) == 1

    @property
    def on_hold(self):
        return bool(self.streams) and all(s.on_hold for s in self.streams)

    def participants(self):
        return self.metadata.participants if self.metadata is not None else ()

    def participant_for(self, stream):
        if self.metadata is None or stream.label is None:
            return None
        return self.metadata.participant_for_label(stream.label)

    def update_metadata(self, metadata):
        self.metadata = merge_metadata(self.metadata, metadata)

    def apply_offer(self, offer, *, codecs, ports, address, accept_srtp=False, srtp=None):
        """Work out the answer to *offer*; returns (answer bytes, changed).

        Streams keep their port across offers (matched by label, else by
        m-line position); new labels get new streams and ports; m-lines
        no longer offered, or refused, give their ports back. *srtp* is
        the ``media.srtp`` mode (default "allowed" with *accept_srtp*,
        else "off"); SRTP streams keep their keys while the SRC's are
        unchanged (see ``siprecd.media.srtp.secure_choices``).
        """
        mode = srtp or ("allowed" if accept_srtp else "off")
        choices = sdpmod.negotiate(offer, tuple(codecs), accept_srtp=mode != "off")
        old = {s.key: s for s in self.streams}
        before = {}
        for media in offer.media:
            stream = old.get(("label", media.label) if media.label else ("index", media.index))
            if stream is not None and stream.srtp is not None:
                before[media.index] = stream.srtp
        try:
            choices, keys = srtpmod.secure_choices(offer, choices, mode, before)
        except srtpmod.CryptoRefused as e:
            raise NotAcceptable(str(e)) from None
        if not any(choices):
            if mode == "off" and any(m.proto.upper() in srtpmod.SDES_PROTOS for m in offer.media):
                raise NotAcceptable("SRTP is turned off here (media.srtp) and no plain RTP "
                                    "audio was offered")
            raise NotAcceptable("no audio stream with a codec in common")
        new_streams, answer_ports, refused = [], [], []
        allocated = []
        audio_index = -1
        try:
            for media, choice, keying in zip(offer.media, choices, keys):
                if media.media == "audio":
                    audio_index += 1
                if choice is None:
                    answer_ports.append(None)
                    refused.append(media.index)
                    continue
                key = ("label", media.label) if media.label else ("index", media.index)
                previous = old.pop(key, None)
                if previous is not None:
                    port = previous.local_port
                else:
                    port = ports.allocate()
                    allocated.append(port)
                new_streams.append(RecordedStream(
                    index=media.index, audio_index=audio_index, label=media.label,
                    codec=choice.codec, telephone_event=choice.telephone_event,
                    local_port=port, remote_host=media.connection, remote_port=media.port,
                    on_hold=media.on_hold, crypto=media.crypto, srtp=keying,
                ))
                answer_ports.append(port)
        except Exception:
            for port in allocated:
                ports.release(port)
            raise
        for gone in old.values():
            ports.release(gone.local_port)
        self._seat(new_streams)
        changed = _describe(self.streams) != _describe(new_streams)
        self.streams, self.refused = new_streams, refused
        if changed or self.answer is None:
            self.sdp_version += 1
        self.answer = sdpmod.format_answer(
            offer, choices, answer_ports, address=address,
            session_id=self.sdp_session_id, session_version=self.sdp_version,
        )
        return self.answer, changed

    def _seat(self, streams):
        """Give each new stream its seat (module docstring); streams seen
        before keep theirs."""
        open_keys = {s.key for s in streams}
        for seat, key in list(self._holders.items()):
            if key not in open_keys:
                del self._holders[seat]          # closed: the seat is vacant
        for stream in streams:
            if stream.key in self._seats:
                stream.seat = self._seats[stream.key]
                continue
            given = {v for v in self._seats.values() if v is not None}
            vacant = sorted(given - set(self._holders))
            if vacant:
                seat = vacant[0]
            else:
                seat = self._handed_over(stream)
                if seat is None and stream.audio_index < 2 and stream.audio_index not in given:
                    seat = stream.audio_index
            stream.seat = seat
            self._seats[stream.key] = seat
            if seat is not None:
                self._holders[seat] = stream.key

    def _handed_over(self, stream):
        """The seat of a stream whose sender the metadata says has left
        (disassociated), when *stream*'s own sender is someone else."""
        if self.metadata is None or stream.label is None:
            return None
        newcomer = self.metadata.participant_for_label(stream.label)
        if newcomer is None or newcomer.disassociated:
            return None
        labels = {s.key: s.label for s in self.streams}
        for seat, key in sorted(self._holders.items()):
            label = labels.get(key)
            sender = self.metadata.participant_for_label(label) if label else None
            if sender is not None and sender.disassociated and sender.id != newcomer.id:
                return seat
        return None

    def make_offer(self, count, *, codecs, ports, address):
        """Our offer for an INVITE that came without SDP (delayed offer):
        *count* recvonly audio streams with every codec we take; the SRC's
        answer comes in its ACK (:meth:`apply_answer`). Until then each
        stream waits on its port with our first codec."""
        allocated = []
        try:
            for _ in range(count):
                allocated.append(ports.allocate())
        except Exception:
            for port in allocated:
                ports.release(port)
            raise
        first = sdpmod.offer_codecs(codecs)[0]
        self.streams = [
            RecordedStream(index=i, audio_index=i, label=str(i + 1), codec=first,
                           telephone_event=None, local_port=port, remote_host=None,
                           remote_port=0)
            for i, port in enumerate(allocated)
        ]
        self._seat(self.streams)
        self.sdp_version += 1
        self.delayed_offer = True
        self.awaiting_answer = True
        self.answer = sdpmod.format_offer(
            count, codecs, allocated, address=address, session_id=self.sdp_session_id,
            session_version=self.sdp_version)
        return self.answer

    def apply_answer(self, answer, *, codecs, ports):
        """The SRC's answer to our offer (in its ACK): each stream takes the
        codec the answer names (the first of ours it lists), where the SRC
        sends from, and its hold state; a stream the answer refuses (port 0,
        no codec of ours) is closed. Returns whether anything changed.
        Labels stay ours (streams are known by them); the m-line order is
        the offer's (RFC 3264 §6)."""
        self.awaiting_answer = False
        choices = sdpmod.negotiate(answer, tuple(codecs))
        kept, changed = [], False
        for stream in self.streams:
            media = answer.media[stream.index] if stream.index < len(answer.media) else None
            choice = choices[stream.index] if media is not None else None
            if choice is None:
                ports.release(stream.local_port)
                changed = True
                continue
            updated = attrs.evolve(stream, codec=choice.codec,
                                   telephone_event=choice.telephone_event,
                                   remote_host=media.connection, remote_port=media.port,
                                   on_hold=media.on_hold)
            changed = changed or _describe([stream]) != _describe([updated])
            kept.append(updated)
        self._seat(kept)
        self.streams = kept
        return changed

    def release_ports(self, ports):
        for stream in self.streams:
            ports.release(stream.local_port)
        self.streams = []


def _describe(streams):
    return [
        (s.index, s.label, s.codec, s.local_port, s.remote_host, s.remote_port, s.on_hold, s.seat,
         s.srtp.remote if s.srtp is not None else None)
        for s in streams
    ]
