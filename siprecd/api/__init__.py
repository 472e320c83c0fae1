"""The HTTPS control and retrieval API (Klein)."""
