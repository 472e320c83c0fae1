"""Live transcripts: what happens on this node's calls, as it happens,
over a WebSocket on the HTTPS API (``GET /conversation/v1/live``).

Each module has one job:

- ``events``: the JSON events (``partial``, ``final``, ``call-started``,
  ``streaming-started``, ``streaming-stopped``, ``call-ended``,
  ``subscribed``) made once and shared by every client;
- ``hub``: :class:`LiveHub`, who may see what: subscriptions by call
  (``externalId``) or by app, app isolation, and whether anyone wants the
  partials of a call (the recogniser is not asked otherwise);
- ``session``: one client's stream of events, sans-IO: the finals it
  missed replayed from storage exactly once, then live ones, through a
  bounded queue; a client too slow to keep up is cut off;
- ``request``: what a client asks for (query parameters), checked;
- ``websocket``: the autobahn protocol and the upgrade of an API request.

Partials and call events are never stored; a final is sent once it is
stored, with the body of the transcript webhook, after every partial of
its utterance.
"""

from siprecd.live.events import LiveEvent
from siprecd.live.hub import LiveHub
from siprecd.live.request import LiveRefused, LiveRequest

__all__ = ["LiveEvent", "LiveHub", "LiveRefused", "LiveRequest"]
