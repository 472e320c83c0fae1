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

Wiring (in :func:`siprecd.node.build_node`): the service is made after
storage (so it stops before storage closes) and its ``notify`` is one of
the transcription service's ``on_utterance`` listeners, told of each
utterance once it is stored; ``check_targets(config)`` runs in
``siprecd.checks.check_files`` (start-up and ``check-config``).
"""

from siprecd.webhooks.delivery import WebhookService, encode_payload
from siprecd.webhooks.tls import check_targets

__all__ = ["WebhookService", "encode_payload", "check_targets"]
