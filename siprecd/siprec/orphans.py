"""BYE for dialogs whose node is gone: the SIP side of hanging them up.

When a node restarts after a crash, or is lost for good, the calls it had
are over for siprecd but not for their SBCs, which go on streaming until
told. :class:`OrphanedDialogs` sends a BYE in each such dialog from what
was stored of it when the call was answered (``siprecd.orphans`` stores
it): Call-ID, both tags, our To and the SRC's From, the route set, the
remote target, the transport and our CSeq.

The BYE goes where RFC 3261 §12.2.1.1 sends requests in a dialog (the
first route, else the remote target), over the transport the call came
on; over TCP or TLS a new connection is opened when none is open. Its
CSeq is the stored one plus :data:`CSEQ_MARGIN` (requests we sent after
the dialog was stored, such as session refreshes, used numbers up to
there; a UAS takes any higher number, RFC 3261 §12.2.2). A BYE that times
out or gets a 5xx is sent again, at most ``attempts`` times in all, a
little later each time. Each dialog gets one log line with its outcome.

*record* is anything with the attributes of
``siprecd.storage.records.DialogRecord``.
"""

from twisted.internet import defer
from twisted.logger import Logger

from siprecd.sip.dialog import Dialog
from siprecd.sip.endpoint import DEFAULT_PORTS, Source
from siprecd.sip.message import parse_uri
from siprecd.siprec.server import local_address_towards as _local_address_towards

__all__ = ["OrphanedDialogs", "CSEQ_MARGIN"]

CSEQ_MARGIN = 1000


class OrphanedDialogs:
    """See the module docstring. *endpoint* is the node's SipEndpoint,
    *clock* an IReactorTime, *config* the node's configuration (its
    ``sip`` section: advertised host, user agent, listener ports)."""

    log = Logger()

    def __init__(self, endpoint, clock, config, attempts=3, backoff=2.0,
                 local_address_towards=None):
        self.endpoint = endpoint
        self.clock = clock
        self.config = config
        self.attempts = attempts
        self.backoff = backoff
        self.local_address_towards = local_address_towards or _local_address_towards
        self.counters = {"dialogs": 0, "byes_sent": 0, "answered": 0, "unanswered": 0}

    def hang_up_all(self, records, reason):
        """BYE every dialog of *records*; fires with {call_id: final status}
        (408: never answered) once all are done."""
        records = list(records)
        ds = [self.hang_up(record, reason) for record in records]
        d = defer.gatherResults(ds, consumeErrors=True)
        return d.addCallback(lambda statuses: {r.call_id: s for r, s in zip(records, statuses)})

    def hang_up(self, record, reason):
        """BYE one dialog; fires with the final status of the last attempt."""
        self.counters["dialogs"] += 1
        done = defer.Deferred()
        try:
            dialog = Dialog(
                call_id=record.call_id, local_tag=record.local_tag,
                remote_tag=record.remote_tag or None, local=record.local_uri,
                remote=record.remote_uri, remote_seq=record.remote_seq,
                remote_target=record.remote_target, route_set=list(record.route_set),
                secure=bool(record.secure), local_seq=record.local_seq + CSEQ_MARGIN)
            destination = self._destination(dialog, record)
        except Exception as e:
            self.log.warn("cannot hang up call {call_id} (guid {guid}) left by node {node} "
                          "({reason}): its stored dialog is unusable: {error}",
                          call_id=record.call_id, guid=record.guid, node=record.node,
                          reason=reason, error=str(e))
            done.callback(None)
            return done
        self._attempt(dialog, destination, record, reason, 1, done)
        return done

    def _destination(self, dialog, record):
        uri = parse_uri(dialog.next_hop())
        transport = (uri.params.get("transport") or "").upper()
        if not transport:
            transport = "TLS" if uri.scheme == "sips" else record.transport.upper()
        port = uri.port or DEFAULT_PORTS.get(transport, 5060)
        return Source(transport, uri.host.strip("[]"), port)

    def _via(self, destination):
        """Our Via: this node's own listener for the transport (the node
        that sends the BYE may not be the one that took the call)."""
        sip = self.config.sip
        listener = {"UDP": sip.udp, "TCP": sip.tcp, "TLS": sip.tls}.get(destination.transport)
        host = sip.advertised_host
        if not host and listener is not None and listener.host not in ("0.0.0.0", "::"):
            host = listener.host
        if not host:
            host = self.local_address_towards(destination.host)
        port = listener.port if listener is not None else DEFAULT_PORTS[destination.transport]
        return self.endpoint.via_for(destination.transport, host, port)

    def _attempt(self, dialog, destination, record, reason, attempt, done):
        request = dialog.new_request(
            "BYE", self._via(destination),
            extra=[("User-Agent", self.config.sip.user_agent)])
        self.counters["byes_sent"] += 1
        answered = []

        def finished(status):
            if answered:
                return
            answered.append(status)
            again = status == 408 or 500 <= status < 600
            if again and attempt < self.attempts:
                self.clock.callLater(self.backoff * attempt, self._attempt, dialog, destination,
                                     record, reason, attempt + 1, done)
                return
            self.counters["answered" if status != 408 else "unanswered"] += 1
            outcome = "no answer" if status == 408 else f"answered {status}"
            self.log.info(
                "sent BYE for call {call_id} (guid {guid}) that node {node} had ({reason}) to "
                "{destination}: {outcome} after {attempts} attempt(s)",
                call_id=record.call_id, guid=record.guid, node=record.node, reason=reason,
                destination=f"{destination.transport} {destination.host}:{destination.port}",
                outcome=outcome, attempts=attempt)
            done.callback(status)

        try:
            self.endpoint.send_request(
                request, destination,
                on_response=lambda response: response.status >= 200 and finished(response.status),
                on_timeout=lambda: finished(408))
        except Exception as e:
            self.log.info("cannot send BYE for call {call_id}: {error}",
                          call_id=record.call_id, error=str(e))
            finished(408)
