"""SIPREC recording sessions: the multipart body, RFC 7865 metadata and call identifiers."""
