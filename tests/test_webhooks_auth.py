"""Credentials and their secrecy: URL scrubbing, secret tokens, OAuth2
client credentials against a real local token endpoint, how answers are
classified, backoff and Retry-After."""

import base64
import email.utils
import random
import time
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from harness.pki import Authority
from harness.receiver import (
    Reply, TokenIssuer, WebhookReceiver, add_utterances, seed_streams, until, webhook_config,
)
from siprecd import config as configmod
from siprecd.structure import ConfigError
from siprecd.webhooks import WebhookService
from siprecd.webhooks.auth import SecretToken, add_query_parameter, scrub_url
from siprecd.webhooks.http import HttpResponse
from siprecd.webhooks.sender import (
    DELIVERED, GONE, PERMANENT, RETRY, RETRY_AFTER_MAX, TargetSender, classify,
    parse_retry_after,
)

CLIENT_SECRET = "cl!ent s3cret/+="


# Scrubbing URLs ----------------------------------------------------------------------------


def test_scrub_url_hides_secret_query_values_and_passwords_and_keeps_the_rest():
    url = "https://user:pw@hooks.example:8443/a/b?tenant=7&key=abc%20def&Token=x#frag"
    assert scrub_url(url, ["key"]) == \
        "https://user:***@hooks.example:8443/a/b?tenant=7&key=***&Token=***#frag"
    assert scrub_url("https://h.example/p?sig=1&x=2&sig=3") == \
        "https://h.example/p?sig=***&x=2&sig=***"
    assert scrub_url("https://h.example/p?My-Param=s&a", ["my-param"]) == \
        "https://h.example/p?My-Param=***&a"
    assert scrub_url("https://h.example/plain") == "https://h.example/plain"
    assert scrub_url("https://[::1") == "<unparseable URL>"


@settings(max_examples=200)
@given(name=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1,
                    max_size=12),
       value=st.text(min_size=0, max_size=30),
       query=st.lists(st.tuples(st.sampled_from(["a", "tenant", "x-y"]),
                                st.text(st.characters(codec="ascii"), max_size=8)),
                      max_size=3))
def test_a_query_secret_never_survives_scrubbing(name, value, query):
    base = "https://hooks.example/in"
    for k, v in query:
        base = add_query_parameter(base, k, v)
    secret = "S3CR3T" + value
    url = SecretToken(secret, query_parameter=name).url(base)
    # The request carries it, decodable as sent...
    assert parse_qs(urlsplit(url).query, keep_blank_values=True)[name][-1] == secret
    scrubbed = scrub_url(url, [name])
    # ...and the loggable form does not, in any encoding.
    assert "S3CR3T" not in scrubbed
    assert scrubbed.startswith("https://hooks.example/in")


def test_a_header_secret_goes_in_its_header_only():
    token = SecretToken("t0k", header="X-Hook-Token")
    assert token.url("https://h.example/p?a=1") == "https://h.example/p?a=1"
    assert token.headers() == {"X-Hook-Token": "t0k"}
    assert "t0k" not in repr(token)


# Classifying answers, Retry-After, backoff ------------------------------------------------------


def response(code, **headers):
    h = Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()})
    return HttpResponse(code, "", h, b"")


@pytest.mark.parametrize("code, kind", [
    (200, DELIVERED), (201, DELIVERED), (204, DELIVERED),
    (410, GONE),
    (401, RETRY), (408, RETRY), (409, RETRY), (429, RETRY), (500, RETRY), (502, RETRY),
    (503, RETRY), (504, RETRY),
    (400, PERMANENT), (403, PERMANENT), (404, PERMANENT), (405, PERMANENT), (413, PERMANENT),
    (415, PERMANENT), (422, PERMANENT), (301, PERMANENT), (307, PERMANENT),
])
def test_how_answers_are_classified(code, kind):
    outcome = classify(response(code), time.time())
    assert (outcome.kind, outcome.status) == (kind, code)
    assert (outcome.error is None) == (kind == DELIVERED)


def test_retry_after_is_read_on_429_and_503_only():
    now = 1_700_000_000.0
    assert classify(response(429, retry_after="17"), now).retry_after == 17
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert classify(response(503, retry_after=date), now).retry_after == 90
    assert classify(response(500, retry_after="17"), now).retry_after is None
    assert classify(response(301, location="https://x.example/new?token=s"), now).error == \
        "HTTP 301: redirect to https://x.example/new?token=*** not followed"


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("120", 120), (" 5 ", 5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0),
    ("soon", None), ("", None), ("-5", None), (None, None), ("99999999", RETRY_AFTER_MAX),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, time.time()) == expected


@given(attempts=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_backoff_has_jitter_within_bounds(attempts, seed):
    service = WebhookService(None, {}, "n", None, reactor, backoff_initial=0.5,
                             backoff_max=60.0, random=random.Random(seed))
    delay = service.backoff(attempts)
    assert 0.5 <= delay <= min(60.0, 0.5 * 2 ** attempts)


def test_backoff_spreads_retries_out():
    service = WebhookService(None, {}, "n", None, reactor, backoff_initial=1.0,
                             backoff_max=300.0, random=random.Random(7))
    delays = [service.backoff(6) for _ in range(200)]
    assert min(delays) < 10 and max(delays) > 50  # 1..64 s, spread over the range


def test_signing_secrets_are_checked_without_being_shown():
    with pytest.raises(ConfigError) as e:
        configmod.from_dict({"webhooks": {"targets": {"crm": {
            "url": "https://x.example", "signing_secret": "whsec_not*base64!"}}}})
    assert str(e.value).startswith("webhooks.targets.crm.signing_secret: expected a Standard")
    assert "not*base64" not in str(e.value)
    ok = configmod.from_dict({"webhooks": {"targets": {"crm": {
        "url": "https://x.example",
        "signing_secret": "whsec_" + base64.b64encode(b"k" * 24).decode()}}}})
    assert ok.webhooks.targets["crm"].signing_secret.startswith("whsec_")
    assert "whsec_" not in repr(ok)


def test_backoff_max_below_backoff_initial_is_a_config_error():
    with pytest.raises(ConfigError, match="^webhooks.backoff_max: expected backoff_max of at"):
        configmod.from_dict({"webhooks": {"backoff_initial": "10s", "backoff_max": "5s"}})


# OAuth2 client credentials against a real token endpoint ----------------------------------------


@pytest.fixture
def authority(tmp_path):
    return Authority("oauth test CA", tmp_path / "pki")


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.async_yield_fixture
async def issuer_and_receiver(authority):
    issuer = TokenIssuer("siprecd-client", CLIENT_SECRET, expires_in=3600,
                         scope="transcripts.write")
    receiver = WebhookReceiver(reactor, authority, tokens=issuer).start()
    yield issuer, receiver
    await receiver.stop()


def oauth_sender(receiver, authority, clock=reactor, **oauth):
    settings_ = {"token_url": receiver.token_url, "client_id": "siprecd-client",
                 "client_secret": CLIENT_SECRET, "scope": "transcripts.write", **oauth}
    config = configmod.from_dict({"webhooks": {"targets": {"crm": {
        "url": receiver.url(), "ca_bundle": str(authority.certificate_path), "timeout": "5s",
        "oauth2": settings_}}}})
    return TargetSender.from_config("crm", config.webhooks.targets["crm"], reactor, clock, 4)


@pytest.mark.parametrize("client_auth", ["basic", "body"])
@pytest_twisted.ensureDeferred
async def test_a_token_is_fetched_once_sent_as_bearer_and_cached(
        issuer_and_receiver, authority, client_auth, logged):
    issuer, receiver = issuer_and_receiver
    issuer.client_auth = client_auth
    sender = oauth_sender(receiver, authority, client_auth=client_auth)
    try:
        outcomes = [await sender.send(b'{"n": %d}' % n, f"m{n}") for n in range(3)]
    finally:
        await sender.close()
    assert [o.kind for o in outcomes] == [DELIVERED] * 3
    assert issuer.fetches == [{"grant_type": "client_credentials", "scope": "transcripts.write",
                               "client_auth": client_auth,
                               "content_type": "application/x-www-form-urlencoded"}]
    tokens = {r.headers["authorization"] for r in receiver.accepted}
    assert len(tokens) == 1 and tokens.pop().startswith("Bearer tok-1-")
    lines = [formatEvent(e) for e in logged]
    assert any("got an OAuth2 access token valid for 3600s" in line for line in lines)
    assert not any(CLIENT_SECRET in line or "tok-" in line for line in lines)


@pytest_twisted.ensureDeferred
async def test_many_deliveries_waiting_at_once_share_one_token_request(
        issuer_and_receiver, authority):
    issuer, receiver = issuer_and_receiver
    sender = oauth_sender(receiver, authority)
    try:
        outcomes = await defer.gatherResults(
            [sender.send(b"{}", f"m{n}") for n in range(8)])
    finally:
        await sender.close()
    assert [o.kind for o in outcomes] == [DELIVERED] * 8
    assert len(issuer.fetches) == 1 and sender.oauth.fetches == 1


@pytest_twisted.ensureDeferred
async def test_a_token_is_refetched_shortly_before_it_expires(issuer_and_receiver, authority):
    issuer, receiver = issuer_and_receiver
    issuer.expires_in = 100  # refreshed 10 s early (10% of its lifetime)
    clock = task.Clock()
    sender = oauth_sender(receiver, authority, clock=clock)
    try:
        assert (await sender.send(b"{}", "m1")).kind == DELIVERED
        clock.advance(89)
        assert (await sender.send(b"{}", "m2")).kind == DELIVERED
        assert len(issuer.fetches) == 1
        clock.advance(2)
        assert (await sender.send(b"{}", "m3")).kind == DELIVERED
    finally:
        await sender.close()
    assert len(issuer.fetches) == 2
    first, second, third = (r.headers["authorization"] for r in receiver.accepted)
    assert first == second != third


@pytest_twisted.ensureDeferred
async def test_a_401_forces_exactly_one_refresh_and_one_resend(issuer_and_receiver, authority):
    issuer, receiver = issuer_and_receiver
    sender = oauth_sender(receiver, authority)
    try:
        assert (await sender.send(b"{}", "m1")).kind == DELIVERED
        issuer.revoke_all()  # the receiver now answers 401 to the cached token
        outcomes = await defer.gatherResults([sender.send(b"{}", f"m{n}") for n in (2, 3, 4)])
        assert [o.kind for o in outcomes] == [DELIVERED] * 3
        assert len(issuer.fetches) == 2  # three 401s with the same stale token: one refresh

        # A receiver that keeps saying 401: one refresh, one resend, then retry later.
        receiver.script = [Reply(401), Reply(401)]
        outcome = await sender.send(b"{}", "m5")
    finally:
        await sender.close()
    assert (outcome.kind, outcome.status) == (RETRY, 401)
    assert len(issuer.fetches) == 3
    assert [r.status for r in receiver.received[-2:]] == [401, 401]


@pytest_twisted.ensureDeferred
async def test_token_endpoint_failures_are_retryable_and_say_why_without_secrets(
        issuer_and_receiver, authority):
    issuer, receiver = issuer_and_receiver
    issuer.status = 503
    sender = oauth_sender(receiver, authority)
    try:
        down = await sender.send(b"{}", "m1")
        issuer.status = None
        issuer.client_secret = "rotated"
        refused = await sender.send(b"{}", "m2")
    finally:
        await sender.close()
    assert (down.kind, down.error) == (
        RETRY, "OAuth2: token endpoint answered HTTP 503 (temporarily_unavailable)")
    assert (refused.kind, refused.error) == (
        RETRY, "OAuth2: token endpoint answered HTTP 401 (invalid_client)")
    assert receiver.received == []  # nothing went to the webhook without a token


@pytest_twisted.ensureDeferred
async def test_a_token_fetched_ahead_is_used_and_a_refusing_endpoint_is_not_asked_per_start(
        issuer_and_receiver, authority):
    issuer, receiver = issuer_and_receiver
    sender = oauth_sender(receiver, authority)
    try:
        issuer.status = 503
        for _ in range(5):
            await sender.open_ahead()
        # One request, then nothing ahead for a minute (deliveries still ask).
        assert sender.oauth.fetches == 1
        assert sender._no_token_ahead_until > reactor.seconds() + 50
        issuer.status = None
        sender._no_token_ahead_until = 0.0      # the minute is over
        await sender.open_ahead()
        assert sender.oauth.fetches == 2
        outcome = await sender.send(b"{}", "m1")
    finally:
        await sender.close()
    assert outcome.kind == DELIVERED and sender.oauth.fetches == 2
    assert receiver.accepted[0].headers["authorization"].startswith("Bearer tok-")


@pytest_twisted.ensureDeferred
async def test_the_service_refetches_a_token_that_expired_mid_run(
        tmp_path, issuer_and_receiver, authority):
    from siprecd.storage.sqlite import SqliteStorage

    issuer, receiver = issuer_and_receiver
    issuer.expires_in = 300
    storage = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    await storage.open()
    config = webhook_config(tmp_path / "state", {"crm": {
        "url": receiver.url(), "ca_bundle": str(authority.certificate_path),
        "oauth2": {"token_url": receiver.token_url, "client_id": "siprecd-client",
                   "client_secret": CLIENT_SECRET}}}, poll_interval="1h")
    streams = await seed_streams(storage, 2)
    await add_utterances(storage, streams, 3, ["crm"])
    clock = task.Clock()
    clock.advance(time.time() + 1)
    service = WebhookService.from_config(config, storage, reactor, clock=clock)
    try:
        await service.startService()
        await until(service, lambda s: s.stats["delivered"] == 6)
        assert len(issuer.fetches) == 1
        clock.advance(400)  # the token has expired
        await add_utterances(storage, streams, 2, ["crm"], created_ms=int(clock.seconds() * 1000))
        service.notify()
        await until(service, lambda s: s.stats["delivered"] == 10)
    finally:
        await service.stopService()
        await storage.close()
    assert len(issuer.fetches) == 2
    tokens = [r.headers["authorization"] for r in receiver.accepted]
    assert len(set(tokens[:6])) == 1 and len(set(tokens[6:])) == 1 and tokens[0] != tokens[-1]
    for stream in streams:
        assert [b["sequence"] for b in receiver.accepted_json() if b["streamId"] == stream.id] \
            == [1, 2, 3, 4, 5]


def test_outcomes_carry_no_secret_fields():
    # What the delivery loop stores and logs of an attempt.
    fields = {f.name for f in attrs.fields(type(classify(response(500), 0)))}
    assert fields == {"kind", "status", "error", "retry_after", "timed_out", "elapsed"}


def test_no_error_line_carries_a_secret(tmp_path):
    config = configmod.from_dict({"webhooks": {"targets": {"crm": {
        "url": "https://x.example/in", "secret": {"query_parameter": "k", "value": "q s3cr3t"},
        "oauth2": {"token_url": "https://x.example/token", "client_id": "c",
                   "client_secret": CLIENT_SECRET}}}}})
    sender = TargetSender.from_config("crm", config.webhooks.targets["crm"], reactor, reactor, 1)
    assert "s3cr3t" in sender.url and "s3cr3t" not in sender.log_url
    assert sender._without_secrets(f"bad URL {sender.url} (q s3cr3t, {CLIENT_SECRET})") == \
        "bad URL https://x.example/in?k=*** (***, ***)"
    assert "s3cr3t" not in repr(sender) and CLIENT_SECRET not in repr(sender.oauth)


def test_check_targets_loads_every_targets_tls_files(tmp_path):
    from siprecd.webhooks import check_targets

    good = Authority("ok", tmp_path / "ok")
    config = configmod.from_dict({"webhooks": {"targets": {
        "a": {"url": "https://a.example", "ca_bundle": str(good.certificate_path)},
        "b": {"url": "https://b.example", "ca_bundle": str(tmp_path / "missing.pem")}}}})
    with pytest.raises(ConfigError, match=r"^webhooks.targets.b.ca_bundle: "):
        check_targets(config)


def test_the_claim_lease_outlasts_the_worst_attempt(tmp_path):
    config = configmod.from_dict({"state_dir": str(tmp_path), "webhooks": {"targets": {
        "plain": {"url": "https://a.example", "timeout": "20s"},
        "oauth": {"url": "https://b.example", "timeout": "100s", "oauth2": {
            "token_url": "https://b.example/token", "client_id": "c", "client_secret": "s"}}}}})
    service = WebhookService.from_config(config, None, reactor)
    # token + POST + token again after a 401 + POST + a stale-connection resend
    assert service.senders["oauth"].worst_case == 500
    assert service.lease_ms >= 500_000 + 30_000
    small = WebhookService.from_config(configmod.from_dict({"state_dir": str(tmp_path)}), None,
                                       reactor)
    assert small.lease_ms == 60_000
