"""The Klein resource tree of the HTTPS API (docs/api.rst).

Every request goes through :meth:`ControlApi._serve`: body size (413-01),
then authentication with the app id and secret headers (401-01; secrets
are checked by storage against salted hashes, in constant time), then the
app's rate limit (429-01 with Retry-After), then the route.

Checking a secret costs a slow hash on purpose, so an address may make
only so many failed attempts (429-01 past them). Each verification is
counted as a failure the moment it starts and given back when it
succeeds, so requests that arrive together cannot all pass the check
before any of them has failed; requests with the same credentials while
one verification of them is in flight wait for its answer instead of
hashing again. Storage failures reach the client as a generic 503; the
details are in the log. Anything a
route raises becomes the error envelope with a fresh requestId; an
unexpected exception is logged with its traceback and answered 500-01
without details. Start and stop are written to the audit log.
"""

import functools
import hashlib
import json
import re
from importlib import resources
from urllib.parse import quote, unquote_to_bytes, urlencode

from klein import Klein
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server, static
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed as _WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as _WerkzeugNotFound

from siprecd.api import errors
from siprecd.api.control import check_owner, owners_of
from siprecd.api.health import StorageProbe
from siprecd.api.http import write_json
from siprecd.api.views import call_in_progress, conversation_view
from siprecd.export.layout import APPS_DIR
from siprecd.hooks import Hook
from siprecd.interfaces import StorageError, StorageUnavailable
from siprecd.live.request import LiveRefused, LiveRequest
from siprecd.messages import api_message, iso_ms
from siprecd.ratelimit import RateLimiter
from siprecd.transcribe.errors import BadParameter, TranscriptionError
from siprecd.transcribe.request import StartRequest, stop_guid

__all__ = ["ControlApi"]

MAX_MESSAGES = 1000
# Calls in progress listed at most (GET /conversation/v1/calls).
MAX_CALLS = 1000
DOWNLOAD = "/fileexporter/v1/download/"
MAX_EXTERNAL_ID = 256
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Failed authentications a client address may make (per second, burst)
# before it is refused without even hashing: checking a secret is slow on
# purpose, and must not become a way to load the node.
AUTH_FAILURE_RATE, AUTH_FAILURE_BURST = 2.0, 20
# A route answered without credentials when api.public_health says so (and
# none are given), with them otherwise.
PUBLIC_WHEN_ASKED = "public when asked"


# What start and stop answer beside autotranscribeResponse (ours): every
# stream of every session of the guid, and for a start the leg and the
# settings in force.
EXTRA_ANSWER_KEYS = ("streams", "settings", "legId")


def _start_stop_body(result):
    """The vendor API's answer from a controller's result ({role: ...}
    and the extra keys), the extras beside ``autotranscribeResponse``."""
    result = dict(result)
    extras = {key: result.pop(key) for key in EXTRA_ANSWER_KEYS if key in result}
    return {"isOk": True, "autotranscribeResponse": result, **extras}


def _stream_ids(result):
    """{role: streamId} of the roles' main streams, and every streamId (audit)."""
    out = {role: v["streamId"] for role, v in result.items()
           if isinstance(v, dict) and "streamId" in v}
    out["all"] = [s["streamId"] for s in result.get("streams", ()) if "streamId" in s]
    return out


_app = Klein()


def route(path, methods, authenticate=True):
    """A Klein route whose handler runs inside :meth:`ControlApi._serve`.

    Every path is served with and without a trailing slash, both as the
    same route (the vendor's guide writes ``/start-streaming/``); neither
    form redirects to the other, since a POST must not be redirected."""

    def decorate(handler):
        @functools.wraps(handler)
        def serve(self, request, **kwargs):
            return self._serve(request, handler, kwargs, authenticate)

        served = _app.route(path, methods=methods, branch=False)(serve)
        if not path.endswith("/") and "<path:" not in path:
            _app.route(path + "/", methods=methods, branch=False)(serve)
        return served

    return decorate


class ControlApi:
    """Routes of the API; one instance per daemon.

    *storage* is the IStorage (apps, conversations, messages, audit);
    *calls* the call controller (``siprecd.api.control``); *readiness* the
    root service's Readiness; *clock* an IReactorTime for rate limits.
    """

    app = _app
    log = Logger()

    def __init__(self, storage, calls, readiness, clock, node_name, *, id_header="asapp-api-id",
                 secret_header="asapp-api-secret", rate=50.0, burst=100, app_isolation=True,
                 recordings=None, catalogue=None, links=None, public_url=None,
                 cluster_secret=None, on_drain=None, local_calls=None, on_request=(),
                 public_health=False, live=None):
        self.storage = storage
        # siprecd.live.websocket.LiveEndpoint, or None when live.enabled is off.
        self.live = live
        # Internal requests between nodes (forwarded start/stop, drain).
        self.cluster_secret = cluster_secret
        self.on_drain = on_drain
        self.recordings = recordings
        # The File Exporter: a siprecd.export Catalogue and Links (signing).
        self.catalogue = catalogue
        self.links = links
        self.public_url = public_url.rstrip("/") if public_url else None
        self.calls = calls
        # Forwarded requests are carried out here, never forwarded again.
        self.local_calls = local_calls if local_calls is not None else calls
        self.readiness = readiness
        self.node_name = node_name
        self.id_header = id_header.lower().encode("latin-1")
        self.secret_header = secret_header.lower().encode("latin-1")
        self.app_isolation = app_isolation
        self.public_health = public_health
        self.limits = RateLimiter(clock, rate, burst)
        self.auth_failures = RateLimiter(clock, AUTH_FAILURE_RATE, AUTH_FAILURE_BURST)
        # /v1/health answers for storage as it does for the ASR model.
        self.storage_probe = StorageProbe(storage, clock)
        # (api id, digest of the secret) -> _Shared verification in flight.
        self._verifying = {}
        # Secret verifications (slow hashes) started, for metrics and tests.
        self.verifications = 0
        # on_request(request, route name) as each request is routed (for
        # siprecd.metrics, which waits for request.notifyFinish()).
        self.on_request = Hook("on_request", *on_request)

    @classmethod
    def from_config(cls, config, storage, calls, readiness, clock, recordings=None,
                    catalogue=None, links=None, local_calls=None, on_drain=None,
                    on_request=(), live=None):
        a = config.api
        return cls(storage, calls, readiness, clock, config.node.name, id_header=a.id_header,
                   secret_header=a.secret_header, rate=a.rate_limit.requests_per_second,
                   burst=a.rate_limit.burst, app_isolation=a.app_isolation,
                   recordings=recordings, catalogue=catalogue, links=links,
                   public_url=a.public_url, cluster_secret=config.cluster.secret,
                   local_calls=local_calls, on_drain=on_drain, on_request=on_request,
                   public_health=a.public_health, live=live)

    def resource(self):
        return _CheckedPaths(self.app.resource())

    # -- the pipeline every request goes through ------------------------------------------

    def _serve(self, request, handler, kwargs, authenticate):
        self.on_request(request, handler.__name__)
        d = defer.ensureDeferred(self._answer(request, handler, kwargs, authenticate))
        return d

    async def _answer(self, request, handler, kwargs, authenticate):
        try:
            if getattr(request, "body_too_large", False):
                request.setHeader(b"connection", b"close")
                raise errors.PayloadTooLarge(
                    f"the request body is larger than {request.max_body_size} bytes")
            if authenticate == PUBLIC_WHEN_ASKED and self.public_health and not (
                    _header(request, self.id_header) or _header(request, self.secret_header)):
                app = None      # a probe: public by api.public_health
            else:
                app = await self._authenticate(request) if authenticate else None
            body = await handler(self, request, app, **kwargs)
            if isinstance(body, Resource):
                return body
            if isinstance(body, _RawBody):
                request.setResponseCode(200)
                return bytes(body)
            status, headers = 200, {}
        except (errors.ApiError, TranscriptionError) as e:
            status, headers, body = errors.envelope(e)
            if status >= 500:
                self.log.warn("{method} {path}: {code} {message}", method=_method(request),
                              path=_path(request), code=e.code, message=e.message)
        except Exception:
            self.log.failure("{method} {path} failed", method=_method(request),
                             path=_path(request))
            status, headers, body = errors.envelope(errors.InternalError("internal error"))
        return write_json(request, status, body, headers)

    def _check_address(self, peer, message):
        """429-01 while *peer* is over its budget of refused credentials
        (API secrets, cluster secret or download links alike)."""
        wait = self.auth_failures.peek(peer)
        if wait:
            raise errors.TooManyRequests(
                message, headers={"Retry-After": RateLimiter.retry_after(wait)})

    async def _authenticate(self, request):
        peer = _peer(request)
        self._check_address(peer, "too many failed authentications from this address")
        api_id = _header(request, self.id_header)
        secret = _header(request, self.secret_header)
        if not api_id or not secret:
            self.auth_failures.take(peer)
            raise errors.Unauthorized(
                f"the {self.id_header.decode()} and {self.secret_header.decode()} headers "
                "are required")
        key = (api_id, hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest())
        shared = self._verifying.get(key)
        charged = shared is None
        if charged:
            # Counted as a failure now, given back if it succeeds.
            wait = self.auth_failures.take(peer)
            if wait:
                raise errors.TooManyRequests(
                    "too many failed authentications from this address",
                    headers={"Retry-After": RateLimiter.retry_after(wait)})
            self.verifications += 1
            shared = _Shared(self.storage.verify_app_secret(api_id, secret))
            self._verifying[key] = shared
            shared.when_done(lambda: self._verifying.pop(key, None))
        try:
            app = await shared.wait()
        except StorageError:
            if charged:
                self.auth_failures.give_back(peer)
            raise errors.ServiceUnavailable("cannot check credentials now; try again",
                                            headers={"Retry-After": 5}) from None
        if app is None:
            self.log.info("refused credentials for app id {api_id} from {peer}",
                          api_id=api_id[:64], peer=peer)
            raise errors.Unauthorized("unknown app id or wrong secret")
        if charged:
            self.auth_failures.give_back(peer)
        wait = self.limits.take(app.api_id)
        if wait:
            raise errors.TooManyRequests(
                "rate limit exceeded for this app",
                headers={"Retry-After": RateLimiter.retry_after(wait)})
        return app

    # -- start / stop ------------------------------------------------------------------

    @route("/mg-autotranscribe/v1/start-streaming", ["POST"])
    async def start_streaming(self, request, app):
        start = StartRequest.from_json(_json_body(request))
        result = await self.calls.start(app, start)
        await self._audit("transcription.started", app, start.guid, {
            "customerId": start.customer_id, "agentId": start.agent_id,
            "streams": _stream_ids(result)})
        return _start_stop_body(result)

    @route("/mg-autotranscribe/v1/stop-streaming", ["POST"])
    async def stop_streaming(self, request, app):
        guid = stop_guid(_json_body(request))
        result = await self.calls.stop(app, guid)
        await self._audit("transcription.stopped", app, guid, {
            "streams": _stream_ids(result)})
        return _start_stop_body(result)

    async def _audit(self, action, app, guid, detail):
        self.log.info("audit: {action} guid={guid} by app {app_id}", action=action, guid=guid,
                      app_id=app.api_id, audit=action)
        try:
            await self.storage.record_audit(action, app_id=app.api_id, guid=guid,
                                            detail=detail)
        except StorageError as e:
            # The action happened; losing its audit row must not undo it.
            self.log.error("cannot write the audit entry {action} for {guid}: {error}",
                           action=action, guid=guid, error=str(e))

    # -- calls in progress (ours) ---------------------------------------------------

    @route("/conversation/v1/calls", ["GET"])
    async def calls_in_progress(self, request, app):
        """The SIPREC calls in progress this app may see (on any node)."""
        try:
            calls = await self.storage.active_calls(limit=MAX_CALLS)
            legs = await defer.gatherResults(
                [self.storage.legs_for_guid(c.guid) for c in calls], consumeErrors=True)
        except (StorageError, defer.FirstError) as e:
            raise _unavailable(e.subFailure.value if isinstance(e, defer.FirstError) else e) \
                from None
        out = []
        for call, call_legs in zip(calls, legs):
            owners = owners_of(call_legs)
            if self.app_isolation and owners and app.api_id not in owners:
                continue
            out.append(call_in_progress(call, call_legs, self.local_calls.live(call.guid)))
        return {"calls": out}

    # -- conversations and messages -------------------------------------------------

    @route("/conversation/v1/conversation/messages", ["GET"])
    async def messages_by_external_id(self, request, app):
        guid = _external_id(request)
        call, legs = await self._conversation(app, guid=guid)
        return {"items": await self._messages(call)}

    @route("/conversation/v1/conversations", ["GET"])
    async def conversations_by_external_id(self, request, app):
        guid = _external_id(request)
        try:
            call, legs = await self._conversation(app, guid=guid)
        except errors.NotFound:
            return {"conversations": []}
        return {"conversations": [conversation_view(call, legs)]}

    @route("/conversation/v1/conversations/<conversation_id>", ["GET"])
    async def conversation(self, request, app, conversation_id):
        call, legs = await self._conversation(app, conversation_id=conversation_id)
        return conversation_view(call, legs)

    @route("/conversation/v1/conversations/<conversation_id>/messages", ["GET"])
    async def conversation_messages(self, request, app, conversation_id):
        call, legs = await self._conversation(app, conversation_id=conversation_id)
        return {"items": await self._messages(call)}

    @route("/conversation/v1/conversations/<conversation_id>/recordings", ["GET"])
    async def recordings_of(self, request, app, conversation_id):
        call, legs = await self._conversation(app, conversation_id=conversation_id)
        files = self._recording_files(call)
        out = []
        for leg in legs:
            path = files.get(leg.id)
            if path is None:
                continue
            size = self.recordings.size(path)
            out.append({"legId": leg.id, "number": leg.number,
                        "url": f"/conversation/v1/conversations/{call.conversation_id}"
                               f"/recordings/{leg.id}.wav",
                        "bytes": size, "durationMs": max(0, size - 44) // 32})
        return {"recordings": out}

    @route("/conversation/v1/conversations/<conversation_id>/recordings/<leg_file>", ["GET"])
    async def recording(self, request, app, conversation_id, leg_file):
        call, legs = await self._conversation(app, conversation_id=conversation_id)
        leg_id = leg_file[:-4] if leg_file.endswith(".wav") else None
        path = self._recording_files(call).get(leg_id) if leg_id else None
        if path is None or leg_id not in {leg.id for leg in legs}:
            raise errors.NotFound(f"no recording {leg_file} for this conversation")
        if self.recordings.encrypted(path):
            try:
                # Opened here: a missing key or a bad header is an error
                # answer, not a broken download.
                reader = await threads.deferToThread(self.recordings.open, path)
            except (OSError, StorageError) as e:
                self.log.error("cannot read the recording {path}: {error}", path=str(path),
                               error=str(e))
                raise errors.InternalError("the recording cannot be read") from None
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-disposition",
                          f'attachment; filename="{call.guid[:64]}-{leg_id}.wav"'.encode())
        if self.recordings.encrypted(path):
            return _DecryptedFile(reader, "audio/wav", self.log)
        return _OneFile(path, "audio/wav")

    def _recording_files(self, call):
        if self.recordings is None:
            return {}
        return self.recordings.files(call.guid)

    async def _conversation(self, app, guid=None, conversation_id=None):
        try:
            if conversation_id is not None:
                if not _UUID.fullmatch(conversation_id):
                    raise errors.Unprocessable("a conversation id is a UUID")
                call = await self.storage.get_call(conversation_id.lower())
                what = f"id {conversation_id}"
            else:
                call = await self.storage.get_call_by_guid(guid)
                what = f"externalId {guid}"
            if call is None:
                raise errors.NotFound(f"no conversation with {what}")
            legs = await self.storage.legs_for_guid(call.guid)
        except StorageError as e:
            raise _unavailable(e) from None
        check_owner(app, legs, call.guid, self.app_isolation)
        return call, legs

    async def _messages(self, call):
        try:
            messages = await self.storage.messages_for_guid(call.guid, limit=MAX_MESSAGES)
        except StorageError as e:
            raise _unavailable(e) from None
        return [api_message(m) for m in messages]

    # -- live transcripts (siprecd.live) ------------------------------------------------

    @route("/conversation/v1/live", ["GET"])
    async def live_transcripts(self, request, app):
        try:
            if self.live is None:
                raise LiveRefused("live transcripts are not enabled on this node", status=404)
            wanted = LiveRequest.from_args(request.args)
            if wanted.guid is not None:
                try:
                    legs = await self.storage.legs_for_guid(wanted.guid)
                except StorageError as e:
                    raise _unavailable(e) from None
                check_owner(app, legs, wanted.guid, self.app_isolation)
            return self.live.upgrade(request, app, wanted)
        except LiveRefused as e:
            raise _refused(e) from None

    # -- between nodes ------------------------------------------------------------------

    def _check_cluster_secret(self, request):
        from siprecd.api.forward import SECRET_HEADER, secret_matches

        peer = _peer(request)
        self._check_address(peer, "too many failed authentications from this address")
        given = _header(request, SECRET_HEADER.encode())
        if not secret_matches(self.cluster_secret, given):
            self.auth_failures.take(peer)
            raise errors.Unauthorized("internal requests need the cluster secret")

    @route("/internal/v1/start-streaming", ["POST"], authenticate=False)
    async def internal_start(self, request, app):
        from siprecd.api.forward import app_of

        self._check_cluster_secret(request)
        payload = _json_body(request, errors.BadRequest)
        app = app_of(payload)
        body = payload.get("request")
        start = StartRequest.from_json(body if isinstance(body, dict) else {})
        result = await self.local_calls.start(app, start)
        return _start_stop_body(result)

    @route("/internal/v1/stop-streaming", ["POST"], authenticate=False)
    async def internal_stop(self, request, app):
        from siprecd.api.forward import app_of

        self._check_cluster_secret(request)
        payload = _json_body(request, errors.BadRequest)
        app = app_of(payload)
        body = payload.get("request")
        guid = stop_guid(body if isinstance(body, dict) else {})
        result = await self.local_calls.stop(app, guid)
        return _start_stop_body(result)

    @route("/internal/v1/drain", ["POST"], authenticate=False)
    async def internal_drain(self, request, app):
        self._check_cluster_secret(request)
        if self.on_drain is None:
            raise errors.NotFound("draining is not available here")
        return await defer.maybeDeferred(self.on_drain)

    # -- the File Exporter (docs/api.rst) ----------------------------------------------

    async def _listing(self, request, app, what, fields):
        """Run a Catalogue listing with the body's *fields*, on a thread."""
        body = _json_body(request, errors.BadRequest)
        catalogue = self._catalogue(app)
        args = [body.get(name) for name in fields]
        for name, value in zip(fields, args):
            if value is None and name != "interval":
                raise errors.BadRequest(f"{name} is required")
        return await _catalogue_call(getattr(catalogue, what), *args)

    def _catalogue(self, app=None):
        """The feeds *app* may see: with app isolation, its own tree (the
        conversations it started); else, and for download links (signed
        for one tree), the whole export directory."""
        if self.catalogue is None:
            raise errors.NotFound("the File Exporter is not enabled on this node")
        if app is not None and self.app_isolation:
            return self.catalogue.for_app(app.api_id)
        return self.catalogue

    @route("/fileexporter/v1/static/listfeeds", ["POST"])
    async def list_feeds(self, request, app):
        return {"feeds": await _catalogue_call(self._catalogue(app).feeds)}

    @route("/fileexporter/v1/static/listfeedversions", ["POST"])
    async def list_feed_versions(self, request, app):
        return {"versions": await self._listing(request, app, "versions", ("feed",))}

    @route("/fileexporter/v1/static/listfeedformats", ["POST"])
    async def list_feed_formats(self, request, app):
        return {"formats": await self._listing(request, app, "formats", ("feed", "version"))}

    @route("/fileexporter/v1/static/listfeeddates", ["POST"])
    async def list_feed_dates(self, request, app):
        return {"dates": await self._listing(
            request, app, "dates", ("feed", "version", "format"))}

    @route("/fileexporter/v1/static/listfeedintervals", ["POST"])
    async def list_feed_intervals(self, request, app):
        return {"intervals": await self._listing(
            request, app, "intervals", ("feed", "version", "format", "date"))}

    @route("/fileexporter/v1/static/listfeedfiles", ["POST"])
    async def list_feed_files(self, request, app):
        return {"files": await self._listing(
            request, app, "files", ("feed", "version", "format", "date", "interval"))}

    @route("/fileexporter/v1/static/getfeedfile", ["POST"])
    async def get_feed_file(self, request, app):
        found = await self._listing(
            request, app, "resolve", ("feed", "version", "format", "date", "interval", "fileName"))
        path = DOWNLOAD + found.relative
        query = urlencode(self.links.sign(path))
        base = self.public_url or _origin(request)
        return {"url": f"{base}{quote(path)}?{query}", "fileName": found.name,
                "size": found.size}

    @route("/fileexporter/v1/download/<path:relative>", ["GET"], authenticate=False)
    async def download(self, request, app, relative):
        from siprecd.export.signing import LinkRefused

        path = DOWNLOAD + relative
        peer = _peer(request)
        self._check_address(peer, "too many refused links from this address")
        if self.links is None:
            raise errors.NotFound("the File Exporter is not enabled on this node")
        try:
            self.links.verify(path, request.args)
        except LinkRefused as e:
            self.auth_failures.take(peer)
            raise errors.Forbidden(f"this download link is not valid ({e.reason})") from None
        if self.app_isolation and not relative.startswith(f"{APPS_DIR}/"):
            # Links to the whole feed are not given out under app isolation
            # (one made before it was turned on is refused too).
            raise errors.NotFound("no such feed file")
        found = await _catalogue_call(self._catalogue().resolve_relative, relative)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-disposition",
                          f'attachment; filename="{found.name}"'.encode())
        return _OneFile(found.path, found.media_type)

    # -- health and the API description -------------------------------------------------

    @route("/v1/health", ["GET"], authenticate=PUBLIC_WHEN_ASKED)
    async def health(self, request, app):
        pending = self.readiness.pending()
        if app is None:
            # Without credentials (api.public_health): liveness and readiness only.
            if pending or not await self.storage_probe.check():
                raise errors.ServiceUnavailable(
                    "not ready", extra={"healthCheck": "FAILURE", "ready": False})
            return {"healthCheck": "SUCCESS", "ready": True}
        if not await self.storage_probe.check():
            pending["storage"] = "storage is unavailable"
        details = {"ready": not pending, "node": self.node_name, "pending": pending,
                   **self.readiness.details()}
        if pending:
            why = "; ".join(pending)
            raise errors.ServiceUnavailable(f"not ready: {why}",
                                            extra={"healthCheck": "FAILURE", **details})
        return {"healthCheck": "SUCCESS", **details}

    @route("/openapi.yaml", ["GET"], authenticate=PUBLIC_WHEN_ASKED)
    async def openapi(self, request, app):
        request.setHeader(b"content-type", b"application/yaml")
        return _RawBody(openapi_document())

    # -- errors outside any route -----------------------------------------------------

    @app.handle_errors(_WerkzeugNotFound)
    def not_found(self, request, failure):
        self.on_request(request, "unmatched")
        status, headers, body = errors.envelope(errors.NotFound(f"no such path {_path(request)}"))
        return write_json(request, status, body, headers)

    @app.handle_errors(_WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request, failure):
        self.on_request(request, "unmatched")
        allowed = ", ".join(getattr(failure.value, "valid_methods", None) or ())
        error = errors.MethodNotAllowed(
            f"{_method(request)} is not allowed on {_path(request)}",
            headers={"Allow": allowed} if allowed else None)
        status, headers, body = errors.envelope(error)
        return write_json(request, status, body, headers)


class _CheckedPaths(Resource):
    """Klein's resource, behind a check that the path is UTF-8 once
    percent-decoded: otherwise Klein would answer an HTML 400 (and log a
    traceback for each such request) instead of the error envelope."""

    isLeaf = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def render(self, request):
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            status, headers, body = errors.envelope(
                errors.BadRequest("the path is not UTF-8 once percent-decoded"))
            return write_json(request, status, body, headers)
        return self.inner.render(request)


class _OneFile(Resource):
    """A file streamed as the answer (ranges, HEAD and conditional GETs
    by twisted.web.static). A leaf, so Klein does not look for children
    of it under the rest of the URL."""

    isLeaf = True

    def __init__(self, path, media_type):
        super().__init__()
        self.path, self.media_type = str(path), media_type

    def render_GET(self, request):
        served = static.File(self.path)
        served.type, served.encoding = self.media_type, None
        return served.render_GET(request)


class _DecryptedFile(Resource):
    """An encrypted recording streamed decrypted (siprecd.crypto.EncryptedFile),
    one 64 KiB chunk per write as the client takes it (a pull producer, as
    twisted.web.static does). No ranges: always the whole file. A chunk
    that fails authentication aborts the connection (never altered data)."""

    isLeaf = True

    def __init__(self, reader, media_type, log):
        super().__init__()
        self.reader, self.media_type, self.log = reader, media_type, log

    def render_GET(self, request):
        request.setHeader(b"content-type", self.media_type.encode())
        request.setHeader(b"content-length", str(self.reader.size).encode())
        if request.method == b"HEAD":
            self.reader.close()
            return b""
        _DecryptingProducer(request, self.reader, self.log).start()
        return server.NOT_DONE_YET


class _DecryptingProducer:
    def __init__(self, request, reader, log):
        self.request, self.reader, self.log = request, reader, log

    def start(self):
        self.request.notifyFinish().addBoth(lambda _: self.stopProducing())
        self.request.registerProducer(self, False)

    def resumeProducing(self):
        if self.request is None:
            return
        try:
            data = self.reader.read(64 * 1024)
        except Exception as e:
            self.log.error("serving the recording {path} failed: {error}",
                           path=self.reader.path, error=str(e))
            request = self.request
            self.stopProducing()
            request.unregisterProducer()
            request.transport.abortConnection()
            return
        if data:
            self.request.write(data)
            return
        request = self.request
        self.stopProducing()
        request.unregisterProducer()
        request.finish()

    def stopProducing(self):
        if self.request is not None:
            self.request = None
            self.reader.close()

    def pauseProducing(self):
        pass


class _RawBody(bytes):
    """A route's answer that is sent as it is (not JSON)."""


@functools.cache
def openapi_document():
    return resources.files("siprecd.api").joinpath("openapi.yaml").read_bytes()


def _refused(refusal):
    """The API error for a siprecd.live.LiveRefused."""
    kind = {404: errors.NotFound, 429: errors.TooManyRequests,
            503: errors.ServiceUnavailable}.get(refusal.status, errors.BadRequest)
    headers = ({"Retry-After": int(refusal.retry_after)}
               if refusal.retry_after is not None else None)
    return kind(str(refusal), headers=headers)


def _unavailable(error):
    """The answer to a storage failure. Its details (host, database, path,
    row) are for the log: an outage is logged there by storage itself,
    once; anything else (a value that does not decrypt) here, as it
    happens. The client learns only what it can do."""
    if isinstance(error, StorageUnavailable):
        return errors.ServiceUnavailable("storage is unavailable; try again",
                                         headers={"Retry-After": 5})
    ControlApi.log.warn("a stored value cannot be read: {error}", error=str(error))
    return errors.ServiceUnavailable("a stored value cannot be read; the node's log says why",
                                     headers={"Retry-After": 5})


class _Shared:
    """One Deferred's result for any number of waiters."""

    _PENDING = object()

    def __init__(self, d):
        self._result = self._PENDING
        self._waiters = []
        self._done = []
        d.addBoth(self._fired)

    def _fired(self, result):
        self._result = result
        for callback in self._done:
            callback()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._tell(waiter)

    def _tell(self, waiter):
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(self._result)

    def when_done(self, callback):
        if self._result is self._PENDING:
            self._done.append(callback)
        else:
            callback()

    def wait(self):
        d = defer.Deferred()
        if self._result is self._PENDING:
            self._waiters.append(d)
        else:
            self._tell(d)
        return d


async def _catalogue_call(function, *args):
    """A Catalogue method on a thread (it reads directories), its errors
    as API errors: a malformed value is 400-01, one naming nothing 404-01."""
    from siprecd.export.catalogue import CatalogueError, InvalidValue

    try:
        return await threads.deferToThread(function, *args)
    except InvalidValue as e:
        raise errors.BadRequest(str(e)) from None
    except CatalogueError as e:
        raise errors.NotFound(str(e)) from None


def _origin(request):
    host = request.getHeader(b"host")
    if host:
        return "https://" + host.decode("latin-1")
    address = request.getHost()
    return f"https://{address.host}:{address.port}"


def _json_body(request, error=BadParameter):
    raw = request.content.read() if request.content is not None else b""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise error("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise error("the request body must be a JSON object")
    return body


def _external_id(request):
    values = request.args.get(b"externalId")
    if not values:
        raise errors.BadRequest("the externalId query parameter is required")
    try:
        value = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise errors.Unprocessable("externalId is not UTF-8") from None
    if not value or len(value) > MAX_EXTERNAL_ID or not value.isprintable():
        raise errors.Unprocessable(
            f"externalId must be 1-{MAX_EXTERNAL_ID} printable characters")
    return value


def _header(request, name):
    value = request.getHeader(name)
    if not value:
        return None
    try:
        return value.decode("utf-8").strip()[:1024] or None
    except UnicodeDecodeError:
        return None


def _peer(request):
    address = request.getClientAddress()
    return getattr(address, "host", str(address))


def _method(request):
    return request.method.decode("latin-1", "replace")


def _path(request):
    return request.path.decode("latin-1", "replace")[:200]
