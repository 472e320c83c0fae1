"""Nodes sharing one database: heartbeats, dead nodes, and this node's past.

Each node writes a heartbeat (its id and the URL of its API) every
``cluster.heartbeat_interval``. A node not heard from for
``cluster.dead_after`` is dead. "Not heard from" is judged by each node on
its own monotonic clock -- how long another node's stored heartbeat has
not changed -- never by comparing clocks: nodes' wall clocks may be skewed
or stepped, and a node whose clock jumps must not take live nodes for dead.
When a node is dead, one surviving node at a time (the "reaper"
lease) marks its active calls ended ("node lost"), so the API stops
offering them and their transcripts are kept and served by the others.
At start a node also ends the calls it owned before it restarted (a
SIGKILL or a crash leaves them active in the database, but they are gone).
Either way ``on_node_gone(node, reason, before_ms)`` is told, so that the
SBCs of those calls get a BYE (:mod:`siprecd.orphans`).

With SQLite there is one node; the same code runs and finds nobody else.
"""

import socket
import time

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from siprecd.hooks import Hook
from siprecd.outage import OutageLog

__all__ = ["ClusterService", "advertise_url"]

_LEASE = "reaper"
# Nodes seen this long ago or more are all looked at for calls to end.
_EVERYONE = 10 * 365 * 86400 * 1000


def advertise_url(config):
    """Where other nodes reach this node's API."""
    if config.cluster.advertise_url:
        return config.cluster.advertise_url.rstrip("/")
    host = config.api.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{config.api.port}"


class ClusterService(service.Service):
    log = Logger()
    name = "cluster"

    def __init__(self, storage, node, clock, address, heartbeat_interval=2.0, dead_after=10.0,
                 monotonic=time.monotonic, on_reaped=(), on_node_gone=()):
        self.storage = storage
        self.node = node
        self.clock = clock
        self.address = address
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self._loop = None
        self._beating = None
        self.monotonic = monotonic
        # node -> (its heartbeat as last read, our monotonic time it changed)
        self._seen = {}
        self.reaped = {}            # dead node -> (its last heartbeat, guids ended)
        # Told ``(node, guids)`` when a dead node's calls were ended.
        self.on_reaped = Hook("on_reaped", *on_reaped)
        # Told ``(node, reason, before_ms)`` when the calls a node had were
        # ended without it: this node's own after a restart (those stored
        # before *before_ms*), a dead node's (before_ms None).
        self.on_node_gone = Hook("on_node_gone", *on_node_gone)
        self.heartbeats = OutageLog(clock, self.log, "cluster: heartbeat", state="failed",
                                    ongoing="still failing", back="working again")

    @classmethod
    def from_config(cls, config, storage, clock, on_reaped=(), on_node_gone=()):
        c = config.cluster
        return cls(storage, config.node.name, clock, advertise_url(config),
                   c.heartbeat_interval, c.dead_after, on_reaped=on_reaped,
                   on_node_gone=on_node_gone)

    def startService(self):
        service.Service.startService(self)
        return defer.ensureDeferred(self._start())

    async def _start(self):
        # Calls this node had before it restarted are gone with it.
        started_ms = int(self.clock.seconds() * 1000)
        ended = await self.storage.end_calls_of_node(self.node, "node restarted")
        if ended:
            self.log.warn("ended {count} calls this node had before it restarted",
                          count=len(ended))
        self.on_node_gone(self.node, "node restarted", started_ms)
        await self.storage.heartbeat_node(self.node, self.address)
        self._loop = task.LoopingCall(self.beat)
        self._loop.clock = self.clock
        self._loop.start(self.heartbeat_interval, now=False)

    def beat(self):
        """One heartbeat, then a look for dead nodes; never raises."""
        if self._beating is not None:
            return self._beating
        self._beating = defer.ensureDeferred(self._beat())
        self._beating.addBoth(self._done)
        return self._beating

    def _done(self, result):
        self._beating = None
        return None

    async def _beat(self):
        try:
            await self.storage.heartbeat_node(self.node, self.address)
            nodes = await self.storage.live_nodes(_EVERYONE)
            self._observe(nodes)
            ttl = int(self.dead_after * 1000)
            if await self.storage.try_lease(_LEASE, self.node, ttl):
                await self._reap(nodes)
        except Exception as e:
            self.heartbeats.failed(str(e), retry_in=self.heartbeat_interval)
        else:
            self.heartbeats.succeeded()

    def _observe(self, nodes):
        now = self.monotonic()
        for info in nodes:
            seen = self._seen.get(info.id)
            if seen is None or seen[0] != info.heartbeat_ms:
                self._seen[info.id] = (info.heartbeat_ms, now)

    def _silent_for(self, node):
        """Seconds (monotonic, ours) since *node*'s heartbeat last changed,
        or None if we have not watched it yet."""
        seen = self._seen.get(node)
        return None if seen is None else self.monotonic() - seen[1]

    async def _reap(self, nodes):
        for info in nodes:
            silent = self._silent_for(info.id)
            if info.id == self.node or silent is None or silent < self.dead_after:
                continue
            if self.reaped.get(info.id, (None,))[0] == info.heartbeat_ms:
                continue        # already ended what it had at this heartbeat
            guids = await self.storage.end_calls_of_node(info.id, "node lost")
            self.reaped[info.id] = (info.heartbeat_ms, guids)
            self.on_node_gone(info.id, "node lost", None)
            if guids:
                self.on_reaped(info.id, guids)
                self.log.warn(
                    "cluster: node {dead} not heard from for {seconds:.0f}s; ended its "
                    "{count} calls", dead=info.id, count=len(guids), seconds=silent)

    async def live_address(self, node):
        """The API URL of *node* if it is alive, else None."""
        for info in await self.storage.live_nodes(_EVERYONE):
            if info.id != node:
                continue
            self._observe([info])
            silent = self._silent_for(node)
            return info.address if silent is not None and silent < self.dead_after else None
        return None

    def stopService(self):
        service.Service.stopService(self)
        self.heartbeats.stop()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._beating
