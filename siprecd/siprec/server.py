"""The Session Recording Server user agent (RFC 7866 SRS, UAS side).

It is the SIP endpoint's transaction user: it answers SIPREC INVITEs,
re-INVITEs, UPDATEs, BYEs, OPTIONS, INFO and CANCEL, keeps each call's
dialog and RecordingSession, runs session timers (RFC 4028) and the
maximum call length, and tells an ICallListener what happens. On drain
it refuses new calls (503) and, when the grace period is over, hangs up
the calls still running with a BYE of its own.
"""

import collections
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.clock import monotonic_for
from siprecd.interfaces import IDrainable, PortsExhausted, StorageError
from siprecd.resources import is_exhaustion
from siprecd.sip.dialog import Dialog, OutOfOrder
from siprecd.sip.endpoint import DEFAULT_PORTS, ITransactionUser, Source
from siprecd.sip.limits import Admission, BurstLog
from siprecd.sip.message import make_response, new_tag, parse_uri
from siprecd.siprec import guid as guidmod
from siprecd.siprec.metadata import MetadataError, parse_metadata
from siprecd.siprec.multipart import BodyError, find_siprec_parts, split_body
from siprecd.siprec.sdp import SdpError, parse_sdp
from siprecd.siprec.session import NotAcceptable, RecordingSession

__all__ = ["RecordingServer", "RecordingService", "SUPPORTED", "ALLOWED"]

SUPPORTED = ("siprec", "timer")
ALLOWED = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"
ACCEPTED = "application/sdp, application/rs-metadata+xml, application/rs-metadata, multipart/mixed"
MIN_SE = 90


def local_address_towards(host):
    """Our address on the route to *host* (no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host.strip("[]"), 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


@implementer(ITransactionUser)
class RecordingServer:
    log = Logger()

    def __init__(self, endpoint, clock, config, listener, ports, readiness, codecs=None):
        self.endpoint = endpoint
        self.clock = clock
        self.monotonic = monotonic_for(clock)
        self.config = config
        # The codecs we answer with, in preference order: media.codecs less
        # any this machine cannot decode (G.729 without libbcg729).
        self.codecs = tuple(codecs if codecs is not None else config.media.codecs)
        self.listener = listener
        self.ports = ports
        self.readiness = readiness
        self.calls = {}          # dialog id -> RecordingSession
        self.pending = {}        # INVITE server-transaction key -> RecordingSession
        self.draining = False
        self._drained = []
        self._timers = {}        # dialog id -> {name: DelayedCall}
        # Stream connections -> calls (pending or up) that came on them:
        # a connection a dialog uses is never closed for being idle.
        self._connections = collections.Counter()
        # Per-source rate, max_calls, max_streams (siprecd.sip.limits).
        self.admission = Admission.from_config(config, clock)
        # Calls refused because storage or resources failed them: logged
        # once when it starts and summed up when it stops.
        self._cannot_record = BurstLog(clock, self.log, "the call could not be taken",
                                       subject="new calls", kind="cannot record")
        endpoint.bind(self)

    # -- addresses ------------------------------------------------------------

    def _advertised(self, source):
        for host in (self.config.sip.advertised_host, source.local_host):
            if host and host not in ("0.0.0.0", "::"):
                return host
        return local_address_towards(source.host)

    def _media_address(self, source):
        """Where the SBC should send RTP: configured, else the address it
        reached us on, else our address on the route towards it."""
        media = self.config.media
        for host in (media.advertised_host, media.host, self.config.sip.advertised_host,
                     source.local_host):
            if host and host not in ("0.0.0.0", "::"):
                return host
        return local_address_towards(source.host)

    def _contact(self, source):
        host = self._advertised(source)
        host = f"[{host}]" if ":" in host else host
        port = source.local_port or DEFAULT_PORTS[source.transport]
        scheme = "sips" if source.transport == "TLS" else "sip"
        transport = "" if source.transport == "UDP" else f";transport={source.transport.lower()}"
        return f"<{scheme}:siprecd@{host}:{port}{transport}>;+sip.srs"

    # -- requests from the endpoint ------------------------------------------------

    def handle_request(self, request, txn, source):
        to_tag = request.to.tag
        if to_tag is None and request.method == "BYE":
            to_tag = self._untagged_bye(request, source)
        if to_tag is not None:
            self._in_dialog(request, txn, source, to_tag)
            return
        method = request.method
        if method == "OPTIONS":
            self._options(request, txn, source)
        elif method == "INVITE":
            self._new_invite(request, txn, source)
        elif method in ("BYE", "UPDATE", "INFO"):
            txn.respond(make_response(request, 481))
        else:
            txn.respond(make_response(request, 405, headers=[("Allow", ALLOWED)]))

    def _untagged_bye(self, request, source):
        """Our tag for a BYE that came without a To tag, when its Call-ID and
        From tag name exactly one dialog (some SRCs drop the tag on BYE);
        never a guess between two."""
        from_tag = request.from_.tag
        matches = [s for s in self.calls.values()
                   if s.dialog.call_id == request.call_id and s.dialog.remote_tag == from_tag]
        if len(matches) != 1:
            return None
        self.log.info("tolerated from {address}: BYE without To tag taken for the one dialog "
                      "of call {call_id} with that From tag", call_id=request.call_id,
                      address=f"{source.host}:{source.port}")
        return matches[0].dialog.local_tag

    def admit(self, request, source):
        """Called by the endpoint before it makes a transaction: a 503 to
        send (statelessly) for a new INVITE or OPTIONS over a limit, else
        None. In-dialog requests are never refused here."""
        if request.method not in ("INVITE", "OPTIONS") or request.to.tag is not None:
            return None
        calls = len(self.calls) + len(self.pending)
        streams = self._streams_in_progress() if request.method == "INVITE" else 0
        return self.admission.check(request, source.host, calls, streams)

    def connection_in_use(self, connection):
        """Whether a call (offered or up) came on the stream *connection*."""
        return self._connections.get(connection, 0) > 0

    def _use_connection(self, session, delta):
        connection = getattr(getattr(session, "source", None), "connection", None)
        if connection is None:
            return
        count = self._connections[connection] + delta
        if count > 0:
            self._connections[connection] = count
        else:
            self._connections.pop(connection, None)

    def _streams_in_progress(self):
        return (sum(len(s.streams) for s in self.calls.values())
                + sum(len(s.streams) for s in self.pending.values()))

    def stats(self):
        """Calls and streams in progress and refusals so far (for metrics)."""
        return {"calls": len(self.calls), "pending": len(self.pending),
                "streams": self._streams_in_progress(), **self.admission.counters}

    def _capabilities(self):
        return [("Allow", ALLOWED), ("Accept", ACCEPTED), ("Supported", ", ".join(SUPPORTED)),
                ("User-Agent", self.config.sip.user_agent)]

    def _unavailable(self, request, reason):
        return make_response(request, 503, reason, headers=[("Retry-After", "30")])

    def _options(self, request, txn, source):
        if self.draining or not self.readiness.ready:
            reason = "Draining" if self.draining else "Not Ready"
            txn.respond(self._unavailable(request, reason))
            return
        txn.respond(make_response(request, 200, headers=self._capabilities()))

    def _unsupported(self, request):
        required = [r.strip().lower() for r in request.headers.get_all("Require") if r.strip()]
        return [r for r in required if r not in SUPPORTED]

    def _new_invite(self, request, txn, source):
        unsupported = self._unsupported(request)
        if unsupported:
            txn.respond(make_response(request, 420, headers=[("Unsupported", ", ".join(unsupported))]))
            return
        if self.draining:
            txn.respond(self._unavailable(request, "Draining"))
            return
        if not self.readiness.ready:
            txn.respond(self._unavailable(request, "Not Ready"))
            return
        if len(self.calls) + len(self.pending) >= self.config.sip.max_calls:
            txn.respond(self._unavailable(request, "Too Many Calls"))
            return
        timer = self._session_timer(request)
        if isinstance(timer, int):
            txn.respond(make_response(request, 422, headers=[("Min-SE", str(MIN_SE))]))
            return
        try:
            offer, metadata = self._read_body(request)
        except _BadBody as e:
            txn.respond(make_response(request, e.status, e.reason))
            return
        wanted = (len(offer.audio()) if offer is not None
                  else self.config.sip.delayed_offer_streams)
        refusal = self.admission.over_streams(
            request, source.host, self._streams_in_progress(), wanted)
        if refusal is not None:
            txn.respond(refusal)
            return
        dialog = Dialog.from_invite(request, new_tag())  # SipParseError -> 400
        identifiers = guidmod.find_identifiers(request.headers, metadata, request.call_id)
        chosen = guidmod.choose_guid(identifiers, tuple(self.config.sip.guid_sources))
        session_id = request.headers.get("Session-ID")
        session = RecordingSession(
            call_id=request.call_id, guid=chosen, identifiers=identifiers, metadata=metadata,
            started_at=self.clock.seconds(), transport=source.transport,
            remote=(source.host, source.port),
            session_id=session_id.split(";")[0].strip() if session_id else None,
        )
        try:
            if offer is None:
                # Delayed offer: we offer, the SRC answers in its ACK.
                answer = session.make_offer(
                    self.config.sip.delayed_offer_streams, codecs=self.codecs,
                    ports=self.ports, address=self._media_address(source))
            else:
                answer, _ = session.apply_offer(
                    offer, codecs=self.codecs, ports=self.ports,
                    address=self._media_address(source), srtp=self.config.media.srtp,
                )
        except NotAcceptable as e:
            txn.respond(_not_acceptable(request, e))
            return
        except PortsExhausted as e:
            self._cannot_record.refused(source.host, _phrase(e))
            self.log.info("no free RTP port; refusing call {call_id}", call_id=request.call_id)
            txn.respond(self._unavailable(request, "Media Ports Exhausted"))
            return
        session.dialog = dialog
        session.dialog.secure = session.dialog.secure or source.transport == "TLS"
        session.timer = timer
        session.source = source
        self.pending[txn.key] = session
        self._use_connection(session, 1)
        self.log.info(
            "recording session offered: guid {guid} from {address} ({n} stream(s){delayed})",
            guid=chosen.value, call_id=request.call_id, address=f"{source.host}:{source.port}",
            n=len(session.streams),
            delayed="; no SDP in the INVITE: our offer goes in the 200 OK" if offer is None else "",
        )
        d = defer.maybeDeferred(self.listener.call_offered, session)
        d.addCallbacks(
            lambda _: self._answer(request, txn, session, answer),
            lambda f: self._refuse(request, txn, session, f),
        )

    def _answer(self, request, txn, session, answer):
        if self.pending.pop(txn.key, None) is None:
            return  # cancelled meanwhile
        response = self._ok(request, session, source=session.source, body=answer)
        for rr in request.headers.get_all("Record-Route"):
            response.headers.add("Record-Route", rr)
        txn.respond(response)
        session.state = "confirmed"
        self.calls[session.dialog.id] = session
        self._arm_timers(session)

    def _ok(self, request, session, source, body=None):
        headers = [("Contact", self._contact(source))] + self._capabilities()
        if session.session_id:
            headers.append(("Session-ID", f"{session.local_session_id};remote={session.session_id}"))
        timer = getattr(session, "timer", None)
        if timer:
            expires, refresher = timer
            headers.append(("Session-Expires", f"{expires};refresher={refresher}"))
            if "timer" in [s.strip().lower() for s in request.headers.get_all("Supported")]:
                headers.append(("Require", "timer"))
        return make_response(
            request, 200, to_tag=session.dialog.local_tag, headers=headers,
            body=body or b"", content_type="application/sdp" if body else None,
        )

    def _refuse(self, request, txn, session, failure):
        self.pending.pop(txn.key, None)
        if failure.check(StorageError, PortsExhausted) or is_exhaustion(failure.value):
            # Expected under an outage or overload, and answered 503: one
            # warning per burst (storage logs its outage itself), no traceback.
            self._cannot_record.refused(session.source.host, _phrase(failure.value))
            self.log.info("refusing call {call_id} with 503: {error}",
                          call_id=request.call_id, error=_phrase(failure.value))
        else:
            self.log.failure("could not take call {call_id}", failure, call_id=request.call_id)
        if txn.state == "proceeding":
            txn.respond(self._unavailable(request, "Cannot Record"))
        # Listeners that did take the call get to forget it again.
        self._ended(session, "refused", notify=True)

    def _read_body(self, request):
        """(offer, metadata); the offer is None when the INVITE has no SDP
        (a delayed offer)."""
        if not request.body.strip():
            return None, None
        try:
            parts = split_body(request.headers.get("Content-Type"), request.body)
            sdp_bytes, metadata_bytes = find_siprec_parts(parts)
        except BodyError as e:
            raise _BadBody(400, f"Bad Body: {_phrase(e)}") from None
        offer = None
        if sdp_bytes is not None:
            try:
                offer = self._parse_sdp(sdp_bytes, request)
            except SdpError as e:
                raise _BadBody(400, f"Bad SDP: {_phrase(e)}") from None
        metadata = None
        if metadata_bytes is not None:
            try:
                metadata = parse_metadata(metadata_bytes)
            except MetadataError as e:
                # The audio is still worth recording; the call goes on
                # without participant details.
                self.log.warn("unusable recording metadata in {call_id}: {error}",
                              call_id=request.call_id, error=str(e))
        return offer, metadata

    def _parse_sdp(self, sdp_bytes, request):
        offer = parse_sdp(sdp_bytes, max_size=self.config.sip.max_message_size)
        if offer.ignored_lines:
            self.log.info("tolerated in {method} {call_id}: {n} line(s) of junk after the SDP "
                          "part's last valid line, ignored", method=request.method,
                          call_id=request.call_id, n=offer.ignored_lines)
        return offer

    def _session_timer(self, request):
        """(expires, refresher) when the SBC asked for a session timer;
        an int (our Min-SE) when its interval is too small; None otherwise.

        We may shorten the interval to ``sip.session_expires`` but never
        below the request's Min-SE (RFC 4028 §9)."""
        value = request.headers.get("Session-Expires")
        if not value:
            return None
        expires, *params = [p.strip() for p in value.split(";")]
        try:
            expires = int(expires)
            min_se = int((request.headers.get("Min-SE") or str(MIN_SE)).split(";")[0])
        except ValueError:
            return None
        if expires < MIN_SE:
            return MIN_SE
        expires = max(min(expires, int(self.config.sip.session_expires)), min_se, MIN_SE)
        refresher = "uac"
        for p in params:
            name, _, val = p.partition("=")
            if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
                refresher = val.strip().lower()
        return (expires, refresher)

    def handle_cancel(self, invite_txn):
        session = self.pending.pop(invite_txn.key, None)
        if session is not None:
            invite_txn.respond(make_response(invite_txn.request, 487, to_tag=session.dialog.local_tag))
            self._ended(session, "cancelled", notify=True)  # frees its ports
        elif invite_txn.state == "proceeding":
            invite_txn.respond(make_response(invite_txn.request, 487))

    def handle_ack(self, request, source):
        """The INVITE transaction stops retransmitting its 2xx (the
        endpoint's job); here, an ACK carrying the SRC's answer to our
        offer (delayed offer, or an offer-less re-INVITE) sets up the
        streams from it."""
        to_tag = request.to.tag
        session = self.calls.get((request.call_id, to_tag, request.from_.tag)) if to_tag else None
        if session is None or not session.awaiting_answer:
            return
        session.awaiting_answer = False
        answer = None
        try:
            parts = split_body(request.headers.get("Content-Type"), request.body)
            sdp_bytes, metadata_bytes = find_siprec_parts(parts)
            if metadata_bytes is not None:
                session.update_metadata(parse_metadata(metadata_bytes))
            if sdp_bytes is not None:
                answer = self._parse_sdp(sdp_bytes, request)
        except (BodyError, SdpError, MetadataError) as e:
            self.log.warn("unusable answer in the ACK of call {call_id}: {error}; the streams "
                          "stay as offered", call_id=request.call_id, error=str(e))
            return
        if answer is None:
            self.log.warn("no SDP answer in the ACK of call {call_id}; the streams stay as "
                          "offered", call_id=request.call_id)
            return
        session.apply_answer(answer, codecs=self.codecs, ports=self.ports)
        self.log.info("answer in the ACK of call {call_id}: {streams}", call_id=request.call_id,
                      guid=session.guid.value, streams=", ".join(
                          f"{s.label}={s.codec.name}" for s in session.streams) or "no stream")
        if not session.streams:
            self._hang_up(session, "the SRC's answer took no stream")
            return
        self.listener.call_updated(session)

    def handle_ack_timeout(self, request):
        """No ACK came for our 2xx to an INVITE: the SRC is gone."""
        for session in list(self.calls.values()):
            dialog = session.dialog
            if (dialog.call_id, dialog.remote_tag) == (request.call_id, request.from_.tag) \
                    and session.state == "confirmed":
                self.log.warn("no ACK for our 200 OK; ending call {call_id}",
                              call_id=request.call_id)
                self._hang_up(session, "no ACK")

    # -- in-dialog requests ---------------------------------------------------

    def _in_dialog(self, request, txn, source, to_tag):
        session = self.calls.get((request.call_id, to_tag, request.from_.tag))
        if session is None:
            txn.respond(make_response(request, 481))
            return
        try:
            session.dialog.check_request(request)
        except OutOfOrder:
            txn.respond(make_response(request, 500, "CSeq Out of Order"))
            return
        method = request.method
        if method == "BYE":
            txn.respond(make_response(request, 200, to_tag=to_tag))
            self._ended(session, "bye from SRC", notify=True)
        elif method in ("INVITE", "UPDATE"):
            self._modify(request, txn, source, session)
        elif method in ("OPTIONS", "INFO"):
            txn.respond(make_response(request, 200, headers=self._capabilities()))
        else:
            txn.respond(make_response(request, 405, headers=[("Allow", ALLOWED)]))

    def _modify(self, request, txn, source, session):
        unsupported = self._unsupported(request)
        if unsupported:
            txn.respond(make_response(request, 420, headers=[("Unsupported", ", ".join(unsupported))]))
            return
        body = None
        changed = False
        if request.body:
            try:
                parts = split_body(request.headers.get("Content-Type"), request.body)
                sdp_bytes, metadata_bytes = find_siprec_parts(parts)
            except BodyError as e:
                txn.respond(make_response(request, 400, f"Bad Body: {_phrase(e)}"))
                return
            if metadata_bytes is not None:
                try:
                    session.update_metadata(parse_metadata(metadata_bytes))
                    changed = True
                except MetadataError as e:
                    self.log.warn("unusable metadata update in {call_id}: {error}",
                                  call_id=request.call_id, error=str(e))
            if sdp_bytes is not None:
                try:
                    offer = self._parse_sdp(sdp_bytes, request)
                    body, streams_changed = session.apply_offer(
                        offer, codecs=self.codecs, ports=self.ports,
                        address=self._media_address(source), srtp=self.config.media.srtp,
                    )
                    changed = changed or streams_changed
                except SdpError as e:
                    txn.respond(make_response(request, 400, f"Bad SDP: {_phrase(e)}"))
                    return
                except NotAcceptable as e:
                    txn.respond(_not_acceptable(request, e))
                    return
                except PortsExhausted:
                    txn.respond(self._unavailable(request, "Media Ports Exhausted"))
                    return
        elif request.method == "INVITE":
            # Offer-less re-INVITE: our current session description is the
            # offer; the SBC answers in the ACK.
            body = session.answer
            session.awaiting_answer = True
        session.dialog.refresh_target(request)
        timer = self._session_timer(request)
        if isinstance(timer, int):
            txn.respond(make_response(request, 422, headers=[("Min-SE", str(MIN_SE))]))
            return
        if timer is not None:
            session.timer = timer
        txn.respond(self._ok(request, session, source, body=body))
        self._arm_session_timer(session)
        if changed:
            self.log.info("recording session updated: guid {guid}", guid=session.guid.value,
                          call_id=session.call_id)
            self.listener.call_updated(session)

    # -- timers and hanging up ---------------------------------------------------

    def _arm_timers(self, session):
        self._set_timer(session, "max", self.config.sip.max_call_duration,
                        lambda: self._hang_up(session, "maximum call length"))
        self._arm_session_timer(session)

    def _arm_session_timer(self, session):
        timer = getattr(session, "timer", None)
        if not timer:
            return
        expires, refresher = timer
        if refresher == "uas":
            self._set_timer(session, "refresh", expires / 2, lambda: self._refresh(session))
        else:
            # RFC 4028 §10: give the refresher until expiry minus a margin.
            self._set_timer(session, "expiry", expires - min(32, expires / 3),
                            lambda: self._hang_up(session, "session timer expired"))

    def _set_timer(self, session, name, delay, fn):
        timers = self._timers.setdefault(session.dialog.id, {})
        old = timers.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        due = self.monotonic() + delay
        timers[name] = self.clock.callLater(delay, self._guarded, fn, session, name, due)

    def _guarded(self, fn, session, name=None, due=None):
        # Twisted's timers follow the wall clock: after a step forward
        # (NTP) they fire early. Measured on the monotonic clock, the rest
        # of the wait is waited out instead of hanging calls up.
        if due is not None:
            remaining = due - self.monotonic()
            if remaining > 0.5:
                self._set_timer(session, name, remaining, fn)
                return
        try:
            fn()
        except Exception:
            self.log.failure("timer failed for call {call_id}", call_id=session.call_id)

    def _cancel_timers(self, session):
        for call in self._timers.pop(session.dialog.id, {}).values():
            if call.active():
                call.cancel()

    def _destination(self, session):
        uri = parse_uri(session.dialog.next_hop())
        source = session.source
        transport = (uri.params.get("transport") or source.transport).upper()
        host, port = uri.host, uri.port or DEFAULT_PORTS.get(transport, 5060)
        connection = source.connection if source.reliable else None
        if source.reliable and transport == source.transport:
            host, port = source.host, source.port
        return Source(transport, host, port, connection, source.local_host, source.local_port)

    def _send_in_dialog(self, session, method, on_done, extra=()):
        destination = self._destination(session)
        via = self.endpoint.via_for(
            destination.transport, self._advertised(session.source),
            session.source.local_port or DEFAULT_PORTS[destination.transport],
        )
        request = session.dialog.new_request(
            method, via, contact=self._contact(session.source), extra=extra
        )
        self.endpoint.send_request(
            request, destination,
            on_response=lambda r: r.status >= 200 and on_done(r.status),
            on_timeout=lambda: on_done(408),
        )

    def _refresh(self, session):
        if session.state != "confirmed":
            return
        expires, _ = session.timer

        def done(status):
            if status >= 300:
                self._hang_up(session, f"session refresh failed ({status})")
            else:
                self._arm_session_timer(session)

        self._send_in_dialog(session, "UPDATE", done,
                             extra=[("Session-Expires", f"{expires};refresher=uas")])

    def hang_up(self, session, reason):
        """End a call from our side (RTP timeout, operator action)."""
        return self._hang_up(session, reason)

    def _hang_up(self, session, reason):
        """Send BYE ourselves; the call ends when it is answered or times out."""
        if session.state != "confirmed":
            return defer.succeed(None)
        session.state = "ending"
        self.log.info("hanging up guid {guid}: {reason}", guid=session.guid.value,
                      call_id=session.call_id, reason=reason)
        done = defer.Deferred()

        def finished(status):
            self._ended(session, reason, notify=True)
            if not done.called:
                done.callback(status)

        self._send_in_dialog(session, "BYE", finished)
        return done

    def _ended(self, session, reason, notify):
        if session.state == "ended":
            return
        session.state = "ended"
        session.ended_reason = reason
        self._use_connection(session, -1)
        if session.dialog is not None:
            self.calls.pop(session.dialog.id, None)
            self._cancel_timers(session)
        self.log.info("recording session ended: guid {guid} ({reason})", guid=session.guid.value,
                      call_id=session.call_id, reason=reason)
        if notify:
            self.listener.call_ended(session, reason)
        session.release_ports(self.ports)
        if not self.calls and not self.pending:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def handle_stray_response(self, response, source):
        pass

    # -- draining -----------------------------------------------------------------

    def stop_accepting(self):
        self.draining = True

    def drain(self):
        """A Deferred that fires once every call has ended."""
        if not self.calls and not self.pending:
            return defer.succeed(None)

        def forget(d):
            if d in self._drained:
                self._drained.remove(d)

        d = defer.Deferred(forget)
        self._drained.append(d)
        return d

    def hang_up_all(self, reason):
        return defer.DeferredList(
            [self._hang_up(s, reason) for s in list(self.calls.values())], consumeErrors=True
        )


@implementer(IDrainable)
class RecordingService(service.Service):
    """The SRS as a child of the root service: on SIGTERM it refuses new
    calls, lets running calls end for the grace period, then hangs up the
    rest with a BYE of its own (waiting a little for the answers)."""

    name = "SIP"
    bye_wait = 2.0

    def __init__(self, server):
        self.server = server

    def stop_accepting(self):
        self.server.stop_accepting()

    def drain(self):
        return self.server.drain()

    def stopService(self):
        service.Service.stopService(self)
        self.server.admission.flush()
        self.server._cannot_record.flush()
        if not self.server.calls:
            return None
        d = self.server.hang_up_all("shutdown")
        d.addTimeout(self.bye_wait, self.server.clock)
        d.addErrback(lambda f: None)
        return d


class _BadBody(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _not_acceptable(request, error):
    """488 with the reason (codecs, SRTP keys) in a Warning (RFC 3261 §20.43)."""
    text = str(error).encode("ascii", "replace").decode()
    text = "".join(c if " " <= c < "\x7f" else " " for c in text)
    text = text.replace("\\", "/").replace('"', "'")[:200]
    return make_response(request, 488, headers=[("Warning", f'304 siprecd "{text}"')])


def _phrase(error):
    """A reason phrase from an error: one short ASCII line."""
    text = str(error).encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
    return text[:80]

