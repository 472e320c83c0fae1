"""Signed, expiring download links for feed files.

``getfeedfile`` answers with a URL that works without API credentials
until it expires: its query carries ``expires`` (UNIX seconds) and
``signature``, an HMAC-SHA256 with a key only siprecd holds. The
signature is two MACs, base64url without padding (64 characters)::

    HMAC(key, "siprecd-export-link-path\\0" + path)[:16]          (16 bytes)
    HMAC(key, "siprecd-export-link\\0" + path + "\\0" + expires)   (32 bytes)

The second one alone decides; the first one only lets :func:`verify` say
*why* a link is refused (it tells an attacker nothing they did not do
themselves, and forging either needs the key). Comparisons are constant
time. A link is refused (:class:`LinkRefused`, ``reason``) as:

- ``missing``: no ``expires`` or no ``signature`` parameter;
- ``malformed``: one of them is not of its form (or given twice);
- ``path``: the link was not issued for this path (path changed, or the
  signature was made up);
- ``expiry``: the path is right but ``expires`` was changed;
- ``expired``: a genuine link whose time has passed.

The signature is checked before the time, so a forged link is never told
apart from an expired one by timing or by answer.

*path* is the URL path exactly as the server sees it when serving the
download (decoded, starting with ``/``); whoever builds the URL signs the
same string the download handler will verify.

The key is read from a file (``export.link_key_file``, default
``export-link.key`` in ``state_dir``), created on first use with 32 random
bytes, hex-encoded, mode 0600. Nodes that serve the same export directory
must share it: copy it to each (mode 0600). A key file that others can
read or write is refused, as ssh refuses such keys.
"""

import base64
import binascii
import datetime
import hashlib
import hmac
import os
import re
import secrets
import stat

__all__ = ["sign", "verify", "LinkRefused", "load_key", "KeyFileError", "Links", "KEY_BYTES",
           "MISSING", "MALFORMED", "PATH", "EXPIRY", "EXPIRED"]

MISSING, MALFORMED, PATH, EXPIRY, EXPIRED = "missing", "malformed", "path", "expiry", "expired"
KEY_BYTES = 32
_PATH_LABEL = b"siprecd-export-link-path\0"
_LINK_LABEL = b"siprecd-export-link\0"
# Canonical decimal only: one link, one spelling of its expiry.
_EXPIRES = re.compile(r"0|[1-9][0-9]{0,11}")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{64}")
_MESSAGES = {
    MISSING: "the link has no expires or signature parameter",
    MALFORMED: "the link's expires or signature parameter is malformed",
    PATH: "the link was not issued for this file",
    EXPIRY: "the link's expiry was changed",
    EXPIRED: "the link has expired",
}


class LinkRefused(Exception):
    """A download link that must not be honoured; ``reason`` says why
    (one of MISSING, MALFORMED, PATH, EXPIRY, EXPIRED) and ``str()`` is a
    line that is safe to show the client."""

    def __init__(self, reason, message=None):
        super().__init__(reason)
        self.reason = reason
        self.message = message or _MESSAGES[reason]

    def __str__(self):
        return self.message


class KeyFileError(Exception):
    """The key file cannot be read, made, or is not safe; one line."""


def _path_bytes(path):
    if not isinstance(path, str) or "\0" in path:
        raise ValueError("expected a path string without NUL")
    return path.encode("utf-8")


def _check_key(key):
    if not isinstance(key, (bytes, bytearray)) or len(key) < KEY_BYTES:
        raise ValueError(f"expected a key of at least {KEY_BYTES} bytes")
    return bytes(key)


def _macs(path, expires, key):
    p = _path_bytes(path)
    path_mac = hmac.new(key, _PATH_LABEL + p, hashlib.sha256).digest()[:16]
    link_mac = hmac.new(key, _LINK_LABEL + p + b"\0" + expires.encode("ascii"),
                        hashlib.sha256).digest()
    return path_mac, link_mac


def sign(path, expires_at, key):
    """The query parameters that make *path* downloadable until
    *expires_at* (UNIX seconds): ``{"expires": ..., "signature": ...}``."""
    key = _check_key(key)
    expires = int(expires_at)
    if not _EXPIRES.fullmatch(str(expires)):
        raise ValueError(f"expected a positive UNIX time, got {expires_at!r}")
    path_mac, link_mac = _macs(path, str(expires), key)
    signature = base64.urlsafe_b64encode(path_mac + link_mac).rstrip(b"=").decode("ascii")
    return {"expires": str(expires), "signature": signature}


def _one(params, name):
    """The single value of *name* in *params* (str, bytes, or a list of
    one of them, as web frameworks give them); None when absent."""
    value = params.get(name)
    if value is None and isinstance(name, str):
        value = params.get(name.encode("ascii"))
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            if not value:
                return None
            raise LinkRefused(MALFORMED)
        value = value[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise LinkRefused(MALFORMED) from None
    if value is not None and not isinstance(value, str):
        raise LinkRefused(MALFORMED)
    return value


def verify(path, params, key, now):
    """Check a download link: *params* are its query parameters, *now*
    UNIX seconds. Returns the link's expiry time (int) when it may be
    honoured; raises :class:`LinkRefused` otherwise."""
    key = _check_key(key)
    expires, signature = _one(params, "expires"), _one(params, "signature")
    if not expires or not signature:
        raise LinkRefused(MISSING)
    if not (_EXPIRES.fullmatch(expires) and _SIGNATURE.fullmatch(signature)):
        raise LinkRefused(MALFORMED)
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        raise LinkRefused(MALFORMED) from None
    if len(raw) != 48:
        raise LinkRefused(MALFORMED)
    try:
        path_mac, link_mac = _macs(path, expires, key)
    except ValueError:
        raise LinkRefused(PATH) from None
    if not hmac.compare_digest(raw[16:], link_mac):
        if hmac.compare_digest(raw[:16], path_mac):
            raise LinkRefused(EXPIRY)
        raise LinkRefused(PATH)
    if now >= int(expires):
        at = datetime.datetime.fromtimestamp(int(expires), tz=datetime.UTC)
        raise LinkRefused(EXPIRED, f"the link expired at {at:%Y-%m-%dT%H:%M:%SZ}")
    return int(expires)


def load_key(path, create=True):
    """The link key from the file at *path*; when there is none and
    *create* is true, a new random one is written there first (mode 0600,
    without ever replacing a file another process made at the same time).
    Blocking: call at start-up or from a thread."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            raise KeyFileError(f"no link key file {path}") from None
    directory = os.path.dirname(os.path.abspath(path))
    text = (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii")
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link(), unlike rename(), never replaces: of two processes
            # making the key at once, one wins and both use its key.
            os.link(temporary, path)
        except FileExistsError:
            pass
    except OSError as e:
        raise KeyFileError(f"cannot create link key file {path}: {e.strerror or e}") from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass
    return _read_key(path)


def _read_key(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeyFileError(f"cannot read link key file {path}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"link key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"link key file {path} is accessible by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    key = data.strip()
    if len(key) < KEY_BYTES:
        raise KeyFileError(f"link key file {path} holds fewer than {KEY_BYTES} bytes")
    return key


class Links:
    """Signs and checks links with one key, a lifetime and a clock."""

    def __init__(self, key, lifetime, clock):
        self.key = _check_key(key)
        self.lifetime = float(lifetime)
        self.clock = clock

    @classmethod
    def from_config(cls, config, clock):
        """Reads (or makes) ``export.link_key_file``; raises KeyFileError."""
        path = config.in_state_dir(config.export.link_key_file)
        return cls(load_key(path), config.export.link_lifetime, clock)

    def sign(self, path):
        """Query parameters for *path*, valid for the lifetime from now."""
        return sign(path, int(self.clock.seconds() + self.lifetime), self.key)

    def verify(self, path, params):
        return verify(path, params, self.key, self.clock.seconds())
