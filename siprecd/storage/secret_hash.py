"""Salted, slow hashes of API secrets (scrypt), compared in constant time.

The stored form names its parameters (``scrypt$n$r$p$salt$hash``, base64
without padding) so they can be raised later without invalidating the
secrets already issued. Hashing takes tens of milliseconds of CPU on
purpose: callers run it off the reactor thread.
"""

import base64
import functools
import hashlib
import hmac
import os

__all__ = ["hash_secret", "check_secret", "dummy_hash"]

_N, _R, _P, _LEN = 2**14, 8, 1, 32


def _b64(data):
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text):
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret, salt, n, r, p, length):
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
        maxmem=2 * 128 * r * n + 1024 * 1024,
    )


def hash_secret(secret, salt=None):
    salt = os.urandom(16) if salt is None else salt
    digest = _scrypt(secret, salt, _N, _R, _P, _LEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_secret(secret, stored):
    """True when *secret* hashes to *stored*; False for anything malformed."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = _scrypt(secret, _unb64(salt), int(n), int(r), int(p), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def dummy_hash():
    """Checked against when an API id is unknown, so that a wrong id costs
    as much time as a wrong secret and response times tell nothing."""
    return hash_secret("not a secret anyone holds", salt=b"\0" * 16)
