"""SIP signalling: sans-IO message, transaction and dialog layers, and the
Twisted transports that feed them."""
