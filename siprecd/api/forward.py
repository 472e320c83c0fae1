"""start/stop-streaming for a call owned by another node: forwarded there.

With several nodes behind one SIP load balancer, a call lives on the node
its INVITE reached (the ``node`` of its stored Call), while the API
request may reach any node. :class:`ForwardingCalls` wraps this node's
:class:`~siprecd.api.control.LocalCalls` (any ICallController): a guid this node does not have
is looked up in storage and, when an active call of a live node owns it,
the request is sent to that node's internal endpoint
(``/internal/v1/{start,stop}-streaming``) over HTTPS, authenticated with
``cluster.secret``; the owner's answer (success or error code) is the
answer. Only when no live node owns the call is it 400-203.

The entry node has already authenticated the app; the owner trusts that
(it checks the cluster secret), checks the request again in full, and
applies the same app isolation.
"""

import hashlib
import hmac
import json

import treq
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from zope.interface import implementer

from siprecd.api import errors
from siprecd.api.control import ICallController
from siprecd.interfaces import StorageError
from siprecd.storage.records import App

__all__ = ["ForwardingCalls", "SECRET_HEADER", "secret_matches"]

SECRET_HEADER = "x-siprecd-cluster-secret"
TIMEOUT = 15.0


def secret_matches(expected, given):
    """Constant-time comparison of cluster secrets (of any length)."""
    if not expected or not given:
        return False
    digest = lambda v: hashlib.sha256(v.encode("utf-8")).digest()  # noqa: E731
    return hmac.compare_digest(digest(expected), digest(given))


class ForwardedError(errors.ApiError):
    """The owner node's error answer, passed on as it came."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.code = code if isinstance(code, str) and "-" in code else f"{status}-01"


@implementer(ICallController)
class ForwardingCalls:
    """*local* is this node's ICallController; *storage* finds which node
    owns a call; *cluster* which nodes are alive and where."""

    log = Logger()

    def __init__(self, local, storage, cluster, secret, reactor, ca_bundle=None, agent=None):
        self.local = local
        self.storage = storage
        self.cluster = cluster
        self.secret = secret
        self.reactor = reactor
        if agent is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 8
            agent = Agent(reactor, contextFactory=_policy(ca_bundle), pool=pool)
        self.http = treq.client.HTTPClient(agent)

    @classmethod
    def from_config(cls, config, local, storage, cluster, reactor):
        return cls(local, storage, cluster, config.cluster.secret, reactor,
                   config.cluster.ca_bundle)

    def has_call(self, guid):
        return self.local.has_call(guid)

    def live(self, guid):
        return self.local.live(guid)

    async def start(self, app, request):
        owner = await self._owner(request.guid)
        if owner is None:
            return await self.local.start(app, request)
        return await self._forward(owner, "start", app, request.body)

    async def stop(self, app, guid):
        owner = await self._owner(guid)
        if owner is None:
            return await self.local.stop(app, guid)
        return await self._forward(owner, "stop", app, {"namespace": "siprec", "guid": guid})

    async def _owner(self, guid):
        """The API URL of the live node that owns *guid*, or None to answer
        here (this node has the call, or nobody alive has it)."""
        if self.local.has_call(guid) or not self.secret:
            return None
        try:
            call = await self.storage.get_call_by_guid(guid)
            if call is None or call.state != "active" or call.node == self.cluster.node:
                return None
            return await self.cluster.live_address(call.node)
        except StorageError:
            raise errors.ServiceUnavailable("storage is unavailable; try again",
                                            headers={"Retry-After": 5}) from None

    async def _forward(self, address, action, app, body):
        url = f"{address}/internal/v1/{action}-streaming"
        payload = {"app": {"apiId": app.api_id, "webhookTarget": app.webhook_target},
                   "request": body}
        try:
            response = await self.http.post(
                url, data=json.dumps(payload).encode(), timeout=TIMEOUT,
                headers={"content-type": "application/json", SECRET_HEADER: self.secret})
            answer = await response.json()
        except Exception as e:
            self.log.warn("cannot forward {action}-streaming for guid {guid} to {url}: {error}",
                          action=action, guid=body.get("guid"), url=url, error=str(e))
            raise errors.ServiceUnavailable(
                "the node that has this call cannot be reached; try again",
                headers={"Retry-After": 2}) from None
        if response.code == 200 and isinstance(answer, dict):
            # The owner's answer as a controller's result: {role: ...} and
            # the extra keys (streams, settings, legId) beside them.
            result = dict(answer.get("autotranscribeResponse", {}))
            result.update({key: answer[key] for key in ("streams", "settings", "legId")
                           if key in answer})
            return result
        error = (answer or {}).get("error", {}) if isinstance(answer, dict) else {}
        raise ForwardedError(response.code, error.get("code"),
                             error.get("message", "the owner node refused the request"))


def _policy(ca_bundle):
    if ca_bundle is None:
        return BrowserLikePolicyForHTTPS()
    from twisted.internet import ssl

    from siprecd.tls import load_certificates

    return BrowserLikePolicyForHTTPS(
        trustRoot=ssl.trustRootFromCertificates(
            load_certificates(ca_bundle, "cluster.ca_bundle")))


def app_of(payload):
    """The App the entry node authenticated, from a forwarded payload."""
    app = payload.get("app") if isinstance(payload, dict) else None
    if not isinstance(app, dict) or not isinstance(app.get("apiId"), str):
        raise errors.BadRequest("a forwarded request names its app")
    target = app.get("webhookTarget")
    return App(app["apiId"], target if isinstance(target, str) else None, None, 0)


__all__ += ["app_of", "ForwardedError"]
