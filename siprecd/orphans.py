"""No orphaned dialogs: what a node stores of each call's SIP dialog, and
the BYEs sent from it when the node that had the call is gone.

:class:`DialogKeeper` is an ICallListener: when a call is offered (before
its 200 OK goes out, so an answered call always has its row), and again
when it is updated, it stores the call's dialog (a ``DialogRecord``:
Call-ID, tags, route set, remote target, transport, CSeq numbers, the
SRC's address and the listener it reached); when the call ends, the row
is deleted.

:class:`OrphanReaper` is told by the cluster service
(:class:`siprecd.cluster.ClusterService`, ``on_node_gone``) when a node's
calls were ended without it: at start, for the calls this node had before
it restarted (a SIGKILL or a crash), and on the surviving node that reaps
a dead one. It takes that node's stored dialogs out of storage (taken:
each is hung up once, whoever asks) and sends a BYE in each
(:class:`siprecd.siprec.orphans.OrphanedDialogs`), so the SBCs stop
streaming to ports that nobody reads or, worse, that a new call gets.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.interfaces import ICallListener, StorageError
from siprecd.storage.records import DialogRecord

__all__ = ["DialogKeeper", "OrphanReaper", "dialog_record"]


def _address(host, port):
    host = host or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dialog_record(session, node):
    """The DialogRecord of *session*'s dialog (a RecordingSession)."""
    dialog, source = session.dialog, session.source
    return DialogRecord(
        call_id=dialog.call_id, local_tag=dialog.local_tag, remote_tag=dialog.remote_tag or "",
        node=node, guid=session.guid.value, transport=source.transport,
        local_uri=dialog.local, remote_uri=dialog.remote, remote_target=dialog.remote_target,
        route_set=list(dialog.route_set), local_seq=dialog.local_seq,
        remote_seq=dialog.remote_seq, source=_address(source.host, source.port),
        local_address=_address(source.local_host, source.local_port), secure=dialog.secure)


@implementer(ICallListener)
class DialogKeeper:
    log = Logger()

    def __init__(self, storage, node):
        self.storage = storage
        self.node = node

    def call_offered(self, session):
        # Waited for: the call is answered only once its dialog is stored.
        return self.storage.save_dialog(dialog_record(session, self.node))

    def call_updated(self, session):
        if session.dialog is None:
            return
        d = self.storage.save_dialog(dialog_record(session, self.node))
        d.addErrback(lambda f: self.log.info(
            "cannot store the dialog of call {call_id}: {error}", call_id=session.call_id,
            error=f.getErrorMessage()))

    def call_ended(self, session, reason):
        dialog = session.dialog
        if dialog is None:
            return
        d = self.storage.forget_dialog(dialog.call_id, dialog.local_tag, dialog.remote_tag)
        # Left behind, the row costs one BYE answered 481 after a restart.
        d.addErrback(lambda f: self.log.info(
            "cannot forget the dialog of call {call_id}: {error}", call_id=session.call_id,
            error=f.getErrorMessage()))


class OrphanReaper:
    """*hang_up* is an OrphanedDialogs; see the module docstring."""

    log = Logger()

    def __init__(self, storage, hang_up):
        self.storage = storage
        self.hang_up = hang_up
        self.results = []       # (node, reason, {call_id: status}) per round, for tests

    def node_gone(self, node, reason, before_ms=None):
        """Hang up the stored dialogs of *node* (those stored before
        *before_ms*, when given: a restarted node's own new calls stay)."""
        return defer.ensureDeferred(self._node_gone(node, reason, before_ms))

    async def _node_gone(self, node, reason, before_ms):
        try:
            records = await self.storage.take_dialogs_of_node(node, before_ms)
        except StorageError as e:
            self.log.warn("cannot read the dialogs node {node} had ({reason}); their SBCs are "
                          "not told: {error}", node=node, reason=reason, error=str(e))
            return {}
        if not records:
            return {}
        self.log.warn("sending BYE for {count} call(s) node {node} had ({reason})",
                      count=len(records), node=node, reason=reason)
        statuses = await self.hang_up.hang_up_all(records, reason)
        self.results.append((node, reason, statuses))
        return statuses
