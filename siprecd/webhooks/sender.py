"""One delivery attempt to one target, and what its answer means.

:class:`TargetSender` POSTs the exact bytes it is given (signed, with the
target's credentials) and returns an :class:`Outcome`; it never raises
(except when cancelled), so the delivery loop only decides what to do with
the outcome. How answers are classified, and why:

- **2xx**: delivered.
- **410 Gone**: the receiver says the endpoint is gone for good. Retrying
  is pointless and dead-lettering would throw every message of every call
  away; instead the target is disabled and its messages wait until an
  operator re-enables it (``siprecd webhooks enable``).
- **401**: with OAuth2 the token is refreshed once and the request sent
  once more; a second 401 (or 401 without OAuth2) is retried with backoff:
  a credential being rotated on the other side is fixed by configuration,
  and the messages must not be lost meanwhile.
- **408, 409, 429, 5xx**: temporary; retried with backoff. 429 and 503
  honour ``Retry-After`` (seconds or an HTTP date).
- **other 4xx** (400, 403, 404, 413, 422, ...) and **3xx**: permanent for
  this request: the receiver refuses this message as it stands and would
  refuse it again. It is dead-lettered at once rather than retried up to
  ``max_attempts`` times, which would hold back every later message of
  the same stream for hours; once the cause is fixed it can be replayed
  (``siprecd webhooks replay``). Redirects are not followed, as a POST
  should not go somewhere the operator did not configure.
- **no answer** (refused, reset, TLS failure, timeout): retried with
  backoff. A timeout is marked ``timed_out``: the receiver may have got
  the request, so the retry may be a duplicate (``messageId`` and the
  Standard Webhooks ``webhook-id`` let it drop one).

A request that fails because its pooled keep-alive connection was just
closed by the server is sent once more at once on a new connection: that
race says nothing about the receiver's health.
"""

import datetime
import email.utils
from http import HTTPStatus
from urllib.parse import quote, quote_plus

import attrs
from standardwebhooks.webhooks import Webhook
from twisted.internet import defer
from twisted.logger import Logger

import siprecd
from siprecd.webhooks.auth import OAuth2Client, SecretToken, TokenError, scrub_url
from siprecd.webhooks.http import (
    AttemptTimedOut, HttpClient, describe_failure, is_stale_connection,
)
from siprecd.webhooks.tls import ClientTLSPolicy

__all__ = ["Outcome", "TargetSender", "classify", "parse_retry_after",
           "DELIVERED", "RETRY", "PERMANENT", "GONE", "RETRY_AFTER_MAX"]

DELIVERED, RETRY, PERMANENT, GONE = "delivered", "retry", "permanent", "gone"
# A Retry-After further out than this is taken as this: a receiver's typo
# must not park a stream for a year.
RETRY_AFTER_MAX = 86400.0
_TEMPORARY = {401, 408, 409, 425, 429}
_USER_AGENT = f"siprecd/{siprecd.__version__}"
# After a failed token request, no token is fetched ahead of a call's
# first utterance for this many seconds (open_ahead).
TOKEN_AHEAD_HOLD = 60.0


@attrs.frozen
class Outcome:
    """What one delivery attempt came to."""

    kind: str                      # DELIVERED, RETRY, PERMANENT or GONE
    status: int | None = None      # the HTTP status, when there was an answer
    error: str | None = None       # one line for logs and last_error
    retry_after: float | None = None
    timed_out: bool = False        # the receiver may have the request anyway
    elapsed: float = 0.0


def parse_retry_after(value, now):
    """Seconds to wait from a Retry-After value (delta-seconds or an
    HTTP date, RFC 9110 §10.2.3) at wall time *now*; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _snippet(body):
    text = " ".join(body[:300].decode("utf-8", "replace").split())
    return text[:200]


def classify(response, now):
    """The Outcome of an HttpResponse (see the module docstring)."""
    code = response.code
    if 200 <= code < 300:
        return Outcome(DELIVERED, code)
    # The standard reason phrase, not the server's (which may be anything).
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = response.phrase
    error = f"HTTP {code}" + (f" {phrase}" if phrase else "")
    snippet = _snippet(response.body)
    if snippet:
        error += f": {snippet}"
    if code == 410:
        return Outcome(GONE, code, error)
    if code in (429, 503):
        return Outcome(RETRY, code, error, parse_retry_after(response.header("Retry-After"), now))
    if code in _TEMPORARY or code >= 500 or code < 200:
        return Outcome(RETRY, code, error)
    if 300 <= code < 400:
        location = response.header("Location")
        where = f" to {scrub_url(location)}" if location else ""
        return Outcome(PERMANENT, code, f"HTTP {code}: redirect{where} not followed")
    return Outcome(PERMANENT, code, error)


class TargetSender:
    """Delivery attempts to one configured target."""

    log = Logger()

    def __init__(self, name, url, timeout, http, reactor, secret=None, oauth=None,
                 signing_secret=None):
        self.name = name
        self.timeout = timeout
        self.http = http
        self.reactor = reactor
        self.secret = secret
        self.oauth = oauth
        self.signer = Webhook(signing_secret) if signing_secret else None
        self.url = secret.url(url) if secret is not None else url
        self.log_url = scrub_url(self.url, [secret.query_parameter] if secret else [])
        self._no_token_ahead_until = 0.0

    def __repr__(self):
        return f"<TargetSender {self.name} {self.log_url}>"

    @classmethod
    def from_config(cls, name, target, reactor, clock, max_connections):
        """Raises ConfigError (naming the key) for TLS files that do not load."""
        where = f"webhooks.targets.{name}"
        policy = ClientTLSPolicy.from_target(target, where)
        http = HttpClient(reactor, policy, max_connections, connect_timeout=target.timeout)
        secret = SecretToken.from_config(target.secret) if target.secret is not None else None
        oauth = None
        if target.oauth2 is not None:
            oauth = OAuth2Client(target.oauth2, http, clock, target.timeout, target=name)
        return cls(name, target.url, target.timeout, http, reactor, secret, oauth,
                   target.signing_secret)

    @property
    def worst_case(self):
        """Seconds one send() can take at most: token, POST, and after a
        401 a new token and one more POST, plus a stale-connection resend."""
        return self.timeout * (5 if self.oauth is not None else 2)

    def send(self, body, message_id):
        """POST *body* (bytes, sent exactly as given); a Deferred firing
        with an Outcome. Cancelling it aborts the request."""
        started = self.reactor.seconds()
        d = defer.ensureDeferred(self._send(body, message_id))

        def unexpected(f):
            if f.check(defer.CancelledError):
                return f
            self.log.failure("webhook target {target}: unexpected error while sending",
                             f, target=self.name)
            return Outcome(RETRY, error=f"internal error: {describe_failure(f)}")

        d.addErrback(unexpected)
        d.addCallback(lambda outcome: attrs.evolve(
            outcome, error=self._without_secrets(outcome.error),
            elapsed=self.reactor.seconds() - started))
        return d

    def _without_secrets(self, text):
        """Belt and braces: no error line may carry a secret, whatever
        library wrote it (e.g. one quoting the URL with the token in it)."""
        if text is None:
            return None
        secrets = []
        if self.secret is not None and self.secret.value:
            secrets += [self.secret.value, quote(self.secret.value, safe=""),
                        quote_plus(self.secret.value)]
        if self.oauth is not None and self.oauth.config.client_secret:
            secrets.append(self.oauth.config.client_secret)
        for secret in secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    async def _send(self, body, message_id):
        token = None
        if self.oauth is not None:
            try:
                token = await self.oauth.token()
            except TokenError as e:
                return Outcome(RETRY, error=f"OAuth2: {e}")
        outcome, response = await self._post(body, message_id, token)
        if response is not None and response.code == 401 and self.oauth is not None:
            self.oauth.invalidate(token)
            try:
                token = await self.oauth.token()
            except TokenError as e:
                return Outcome(RETRY, 401, f"HTTP 401, then OAuth2: {e}")
            outcome, response = await self._post(body, message_id, token)
        return outcome

    def _headers(self, body, message_id, token):
        headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
        if self.secret is not None:
            headers.update(self.secret.headers())
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if self.signer is not None:
            # Standard Webhooks: id.timestamp.body signed with HMAC-SHA256,
            # over exactly the bytes sent. The id is the messageId, the
            # same on every retry, so receivers can deduplicate on it.
            now = datetime.datetime.fromtimestamp(int(self.reactor.seconds()),
                                                  tz=datetime.timezone.utc)
            headers["webhook-id"] = message_id
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            headers["webhook-signature"] = self.signer.sign(message_id, now, body.decode("utf-8"))
        return headers

    async def _post(self, body, message_id, token):
        """(Outcome, HttpResponse or None) of one POST, resent once at once
        when a stale pooled connection was all that failed."""
        for resend in (False, True):
            headers = self._headers(body, message_id, token)
            try:
                response = await self.http.post(self.url, body, headers, self.timeout)
            except AttemptTimedOut as e:
                return Outcome(RETRY, error=str(e), timed_out=True), None
            except defer.CancelledError:
                raise
            except Exception as e:
                if not resend and is_stale_connection(e):
                    self.log.debug("webhook target {target}: pooled connection was closed; "
                                   "sending again on a new one", target=self.name)
                    continue
                return Outcome(RETRY, error=describe_failure(e)), None
            return classify(response, self.reactor.seconds()), response
        raise AssertionError("not reached")

    def open_ahead(self):
        """A stream that delivers here has started: open a connection (and
        get an OAuth2 token, when the target uses them) now, so that its
        first utterance does not wait for them. Best effort: nothing is
        sent to the webhook, and a failure here is the first delivery's to
        report."""
        waits = [self.http.open_ahead(self.url)]
        now = self.reactor.seconds()
        if self.oauth is not None and now >= self._no_token_ahead_until:
            # A token endpoint that refuses is not asked again for every
            # start: deliveries ask, with their backoff.
            def failed(_):
                self._no_token_ahead_until = self.reactor.seconds() + TOKEN_AHEAD_HOLD

            waits.append(self.oauth.token().addErrback(failed))
        return defer.gatherResults(waits, consumeErrors=True).addErrback(lambda _: None)

    def close(self):
        return self.http.close()
