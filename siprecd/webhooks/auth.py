"""Credentials a webhook request carries, and keeping them out of logs.

- :func:`scrub_url`: the URL as it may be logged: the values of query
  parameters that carry secrets (the configured token parameter, and the
  usual names such as ``token`` or ``api_key``) and any password in the
  user-info part are replaced by ``***``. Every URL siprecd logs or puts
  in the audit log goes through it.
- :class:`SecretToken`: a shared secret in a named header or a named URL
  query parameter.
- :class:`OAuth2Client`: OAuth2 client credentials (RFC 6749 §4.4). The
  access token is cached until shortly before ``expires_in`` runs out;
  only one token request is in flight at a time, however many deliveries
  wait for it; a 401 from the webhook invalidates exactly the token it
  was sent with, so that many deliveries failing at once with the same
  stale token cause one refresh, not one each.
"""

import base64
import json
from urllib.parse import quote, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.logger import Logger

from siprecd.webhooks.http import AttemptTimedOut, describe_failure

__all__ = ["scrub_url", "add_query_parameter", "SecretToken", "OAuth2Client", "TokenError",
           "SENSITIVE_QUERY_PARAMETERS"]

# Query parameters whose values are hidden in logs even when not configured
# as the target's secret: a URL pasted into the config with its own key in
# it must not end up in a log either.
SENSITIVE_QUERY_PARAMETERS = frozenset({
    "token", "access_token", "auth", "authorization", "api_key", "apikey", "api-key", "key",
    "secret", "client_secret", "password", "passwd", "pwd", "sig", "signature", "code",
})
_HIDDEN = "***"


def scrub_url(url, secret_parameters=()):
    """*url* with secret query values and user-info passwords as ``***``.

    Parameter names are compared case-insensitively; everything else of
    the URL (order, encoding, fragment) is kept, so the result still
    tells which endpoint it was.
    """
    hidden = SENSITIVE_QUERY_PARAMETERS | {p.lower() for p in secret_parameters if p}
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{_HIDDEN}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, eq, _value = piece.partition("=")
            if eq and unquote_plus(name).lower() in hidden:
                piece = f"{name}={_HIDDEN}"
            pieces.append(piece)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def add_query_parameter(url, name, value):
    """*url* with ``name=value`` appended to its query (both encoded)."""
    parts = urlsplit(url)
    extra = f"{quote(name, safe='')}={quote(value, safe='')}"
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class SecretToken:
    """A shared secret sent in a named header or a named query parameter."""

    def __init__(self, value, header=None, query_parameter=None):
        self.value = value
        self.header = header
        self.query_parameter = query_parameter

    def __repr__(self):
        where = f"header {self.header}" if self.header else f"query {self.query_parameter}"
        return f"<SecretToken in {where}>"

    @classmethod
    def from_config(cls, config):
        return cls(config.value, config.header, config.query_parameter)

    def url(self, url):
        """The URL to request (the secret added when it goes in the query)."""
        if self.query_parameter:
            return add_query_parameter(url, self.query_parameter, self.value)
        return url

    def headers(self):
        return {self.header: self.value} if self.header else {}


class TokenError(Exception):
    """No access token could be had; ``str()`` is one line, no secrets."""


def _form_encoded(value):
    # RFC 6749 §2.3.1: client id and secret are form-urlencoded before
    # they are joined and Base64-encoded for HTTP Basic.
    return quote_plus(value)


class OAuth2Client:
    """Access tokens for one target from its token endpoint.

    *http* is the target's :class:`~siprecd.webhooks.http.HttpClient` (the
    token endpoint is reached with the target's TLS settings: its CA bundle
    and client certificate); *clock* decides when a token has expired.
    """

    log = Logger()
    # Refresh this long before expiry (at most 10% of the lifetime), so a
    # token is never sent in its last seconds.
    REFRESH_MARGIN = 60.0

    def __init__(self, config, http, clock, timeout, target="?"):
        self.config = config
        self.http = http
        self.clock = clock
        self.timeout = timeout
        self.target = target
        self.fetches = 0
        self._token = None
        self._expires_at = None
        self._fetching = None
        self._waiters = []

    def __repr__(self):
        return f"<OAuth2Client {self.target} {scrub_url(self.config.token_url)}>"

    def _fresh(self):
        return self._token is not None and (
            self._expires_at is None or self.clock.seconds() < self._expires_at)

    def token(self):
        """A Deferred firing with an access token (cached or fetched), or
        failing with TokenError. Cancelling it leaves a shared fetch running
        for the others."""
        if self._fresh():
            return defer.succeed(self._token)
        waiter = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(waiter)
        if self._fetching is None:
            self._fetching = defer.ensureDeferred(self._fetch())
            self._fetching.addBoth(self._fetched)
        return waiter

    def invalidate(self, token):
        """The webhook refused *token* (401): forget it, unless a newer one
        has replaced it already."""
        if token is not None and token == self._token:
            self._token = None
            self._expires_at = None

    def _fetched(self, result):
        self._fetching = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, str):
                waiter.callback(result)
            else:
                waiter.errback(result)
        return None

    async def _fetch(self):
        c = self.config
        form = {"grant_type": "client_credentials"}
        if c.scope:
            form["scope"] = c.scope
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "Accept": "application/json"}
        if c.client_auth == "basic":
            pair = f"{_form_encoded(c.client_id)}:{_form_encoded(c.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = c.client_id
            form["client_secret"] = c.client_secret
        self.fetches += 1
        started = self.clock.seconds()
        try:
            response = await self.http.post(c.token_url, urlencode(form).encode(), headers,
                                            self.timeout)
        except defer.CancelledError:
            raise TokenError("token request cancelled") from None
        except AttemptTimedOut as e:
            raise TokenError(f"token endpoint {e}") from None
        except Exception as e:
            raise TokenError(f"token endpoint: {describe_failure(e)}") from None
        token, lifetime = self._parse(response)
        self._token = token
        self._expires_at = None
        if lifetime is not None:
            margin = min(self.REFRESH_MARGIN, lifetime * 0.1)
            self._expires_at = started + lifetime - margin
        self.log.info(
            "webhook target {target}: got an OAuth2 access token{lifetime}",
            target=self.target,
            lifetime=f" valid for {lifetime:g}s" if lifetime is not None else "",
        )
        return token

    def _parse(self, response):
        try:
            data = json.loads(response.body or b"null")
        except ValueError:
            data = None
        if response.code != 200:
            # RFC 6749 §5.2: the error code is safe to show; never the body
            # as a whole (it could echo what we sent).
            code = data.get("error") if isinstance(data, dict) else None
            detail = f" ({str(code)[:80]})" if isinstance(code, str) else ""
            raise TokenError(f"token endpoint answered HTTP {response.code}{detail}")
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str) \
                or not data["access_token"]:
            raise TokenError("token endpoint answered without an access_token")
        token_type = data.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenError(f"token endpoint gave a token of type {str(token_type)[:40]!r}, "
                             "not Bearer")
        lifetime = data.get("expires_in")
        if isinstance(lifetime, str) and lifetime.strip().isdigit():
            lifetime = int(lifetime)
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            # Without expires_in the token is kept until the webhook says
            # 401, which refreshes it.
            lifetime = None
        return data["access_token"], lifetime
