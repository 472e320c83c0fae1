"""SIP signalling: the message parser (sans-IO: bytes in, objects out), the
transaction and dialog state machines (no sockets; their timers run on an
injected ``IReactorTime``, so tests drive them with ``task.Clock``), the
endpoint that routes between them, and the Twisted transports that feed it."""
