"""Real-time webhooks: delivering each stored utterance to its target.

- :mod:`~siprecd.webhooks.delivery`: :class:`WebhookService`, the daemon
  stage that delivers the durable outbox (order per stream, retries,
  dead letters, targets disabled by 410 Gone, drain on shutdown);
- :mod:`~siprecd.webhooks.sender`: one attempt to one target and how its
  answer is classified;
- :mod:`~siprecd.webhooks.auth`: secret tokens, OAuth2 client credentials,
  and scrubbing secrets out of URLs before they are logged;
- :mod:`~siprecd.webhooks.tls`: CA bundle, TLS >= 1.2 and mTLS per target;
- :mod:`~siprecd.webhooks.http`: the bounded POST over a connection pool;
- :mod:`~siprecd.webhooks.state`: which targets are disabled, on disk;
- :mod:`~siprecd.webhooks.cli`: ``siprecd webhooks ...``.

Wiring (in ``siprecd.tap``)::

    webhooks = WebhookService.from_config(config, root.storage, reactor)
    webhooks.setServiceParent(root)          # after storage
    root.transcription.on_utterance = webhooks.notify

and ``check_targets(config)`` in ``siprecd.checks.check_files`` (``check-config``).
"""

from siprecd.webhooks.delivery import WebhookService, encode_payload
from siprecd.webhooks.tls import check_targets

__all__ = ["WebhookService", "encode_payload", "check_targets"]
