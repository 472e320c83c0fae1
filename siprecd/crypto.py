"""Encryption at rest: unredacted transcript text and recordings.

With ``storage.encryption`` configured, siprecd encrypts with AES-256-GCM
(the ``cryptography`` package; authenticated, so a changed or swapped value
is refused, never decrypted to garbage):

- **Database values** (``messages.unredacted_text``, and ``messages.tokens``
  of messages that keep unredacted text) are stored as
  ``enc:v1:<key id>:<base64url(nonce | ciphertext | tag)>`` with a random
  96-bit nonce per value. The associated data names the column and the
  message id, so a value copied to another row or column fails to decrypt.
- **Recordings** are written as ``<leg id>.wav.enc``: a 44-byte header
  (magic, key id, a random 16-byte salt, chunk size, plaintext size) then
  the WAV in 64 KiB chunks. Each file has its own key, derived with
  HKDF-SHA256 from the master key and the salt, so chunk nonces can simply
  count (0, 1, ...); every chunk's associated data holds the whole header
  and its index, so chunks cannot be reordered, dropped, or moved to
  another file, and the header cannot be changed. A chunk that is all
  zeros (unrecorded stretches, which the plain file keeps as holes) is
  stored as an authenticated marker instead of 64 KiB of ciphertext: which
  2-second stretches of a recording are empty is visible, their content
  (silence) is not.

Keys are 32 random bytes, written as 64 hex digits or in base64, in a file
(mode 0600 or 0400; a key readable by others is refused) or an environment
variable. Make one with ``siprecd storage keygen PATH`` (or
``head -c 32 /dev/urandom | base64 > PATH; chmod 600 PATH``). A key's id
is the first 8 bytes of SHA-256 over a label and the key, in hex: it names
the key in stored values without revealing it.

Several keys may be configured: the first encrypts, all decrypt (found by
key id). To rotate: put the new key first, keep the old ones, run
``siprecd storage rekey -c FILE`` (which re-encrypts every value and
recording under the first key, and encrypts what was stored in plain
form), then drop the old keys.

Nothing here logs, and no message or repr ever holds a key or plaintext.
"""

import base64
import binascii
import hashlib
import os
import stat
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from siprecd.interfaces import StorageError

__all__ = [
    "Keyring", "EncryptionKeyError", "DecryptError", "EncryptedFile", "PREFIX", "SUFFIX",
    "parse_key", "key_id", "new_key_text", "write_key_file", "keyring_from_config",
    "keyring_for",
]

KEY_BYTES = 32
PREFIX = "enc:v1:"
# Recordings encrypted at rest carry this after ".wav".
SUFFIX = ".enc"
CHUNK = 64 * 1024
_MAGIC = b"SRDENC\x00\x01"
_HEADER = struct.Struct(">8s8s16sIQ")          # magic, key id, salt, chunk size, plain size
HEADER_BYTES = _HEADER.size                    # 44
_TAG = 16
_DATA, _ZEROS = 0, 1
_ZERO_CHUNK = bytes(CHUNK)


class EncryptionKeyError(ValueError):
    """A key cannot be used (missing, unreadable, wrong length, readable by
    others); ``str()`` says which and why, never the key."""


class DecryptError(StorageError):
    """A stored value or recording cannot be decrypted: unknown key id,
    malformed, or it fails authentication (changed, swapped, truncated)."""


def parse_key(data, where="key"):
    """32 key bytes from 64 hex digits or base64 (standard or URL-safe)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError:
            raise EncryptionKeyError(f"{where} is not text (expected 64 hex digits or base64 of "
                            f"{KEY_BYTES} bytes)") from None
    text = "".join(data.split())
    key = None
    if len(text) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(text.replace("-", "+").replace("_", "/")
                                   + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        raise EncryptionKeyError(f"{where} is not a {KEY_BYTES}-byte key (expected 64 hex digits "
                        f"or base64 of {KEY_BYTES} random bytes)")
    return key


def key_id(key):
    """16 hex digits naming *key* (not revealing it)."""
    return hashlib.sha256(b"siprecd storage key id\0" + key).digest()[:8].hex()


def new_key_text():
    """A fresh random key, as base64 text."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def write_key_file(path):
    """Write a new key to *path* (mode 0600, never replacing a file);
    returns its key id."""
    text = new_key_text()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EncryptionKeyError(f"{path} exists; not replacing a key file") from None
    except OSError as e:
        raise EncryptionKeyError(f"cannot create key file {path}: {e.strerror or e}") from None
    try:
        os.write(fd, (text + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return key_id(parse_key(text))


def read_key_file(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise EncryptionKeyError(f"cannot read key file {path}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EncryptionKeyError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise EncryptionKeyError(f"key file {path} is accessible by others (mode "
                            f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return parse_key(data, f"key file {path}")


class Keyring:
    """Keys by id; the first one encrypts."""

    def __init__(self, keys):
        keys = list(keys)
        if not keys:
            raise EncryptionKeyError("no encryption key")
        self._keys = {}
        for key in keys:
            self._keys.setdefault(key_id(key), key)
        self.primary_id = key_id(keys[0])
        self._aead = {kid: AESGCM(key) for kid, key in self._keys.items()}

    def __repr__(self):
        return f"<Keyring primary={self.primary_id} keys={len(self._keys)}>"

    @property
    def ids(self):
        return tuple(self._keys)

    # -- database values ------------------------------------------------------------

    @staticmethod
    def is_encrypted(value):
        return isinstance(value, str) and value.startswith(PREFIX)

    @staticmethod
    def key_id_of(value):
        """The key id an encrypted value names, else None."""
        if not Keyring.is_encrypted(value):
            return None
        return value[len(PREFIX):].partition(":")[0] or None

    def encrypt_text(self, plaintext, context):
        """*plaintext* (str) as an ``enc:v1:`` value bound to *context* (bytes)."""
        nonce = os.urandom(12)
        sealed = self._aead[self.primary_id].encrypt(
            nonce, plaintext.encode("utf-8"), _context(self.primary_id, context))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{PREFIX}{self.primary_id}:{body}"

    def decrypt_text(self, value, context, what="value"):
        """The plaintext of an ``enc:v1:`` value, or DecryptError."""
        kid, sep, body = value[len(PREFIX):].partition(":")
        if not value.startswith(PREFIX) or not sep:
            raise DecryptError(f"{what} is not an encrypted value")
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptError(
                f"{what} is encrypted with key {kid}, which is not configured "
                f"(storage.encryption has {', '.join(self._keys)})")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if len(raw) < 12 + _TAG:
                raise ValueError
            plain = aead.decrypt(raw[:12], raw[12:], _context(kid, context))
            return plain.decode("utf-8")
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            raise DecryptError(
                f"{what} fails authentication with key {kid} (changed, or moved from "
                "another row)") from None

    # -- files ------------------------------------------------------------------------

    def _file_aead(self, kid, salt):
        key = self._keys.get(kid)
        if key is None:
            return None
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                       info=b"siprecd recording v1").derive(key)
        return AESGCM(derived)

    def encrypt_file(self, source, target, chunk_size=CHUNK):
        """Write the file *source* encrypted to *target* (created 0600,
        fsynced); blocking. Returns the plaintext size."""
        with open(source, "rb") as plain:
            return self.encrypt_stream(plain, os.fstat(plain.fileno()).st_size, target,
                                       chunk_size)

    def encrypt_stream(self, plain, size, target, chunk_size=CHUNK):
        """Write *size* bytes read from the file object *plain* encrypted to
        *target* (as :meth:`encrypt_file`)."""
        salt = os.urandom(16)
        header = _HEADER.pack(_MAGIC, bytes.fromhex(self.primary_id), salt, chunk_size, size)
        aead = self._file_aead(self.primary_id, salt)
        zero = _ZERO_CHUNK if chunk_size == CHUNK else bytes(chunk_size)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            index, left = 0, size
            while left > 0:
                chunk = plain.read(min(chunk_size, left))
                while len(chunk) < min(chunk_size, left):
                    more = plain.read(min(chunk_size, left) - len(chunk))
                    if not more:
                        raise OSError(f"{target}: the source ended {left - len(chunk)} bytes "
                                      "early")
                    chunk += more
                kind = _ZEROS if chunk == zero[:len(chunk)] else _DATA
                out.write(bytes([kind]) + aead.encrypt(
                    _nonce(index), b"" if kind == _ZEROS else chunk,
                    _chunk_ad(header, index, kind)))
                index += 1
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        return size

    @staticmethod
    def file_key_id(path):
        """The key id in an encrypted file's header (DecryptError if it is
        not one of ours)."""
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) != HEADER_BYTES or not header.startswith(_MAGIC):
            raise DecryptError(f"{path} is not an encrypted recording")
        return _HEADER.unpack(header)[1].hex()

    @staticmethod
    def file_size(path):
        """The plaintext size of an encrypted file (from its header)."""
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) != HEADER_BYTES or not header.startswith(_MAGIC):
            raise DecryptError(f"{path} is not an encrypted recording")
        return _HEADER.unpack(header)[4]

    def open_file(self, path):
        """An :class:`EncryptedFile` reading *path* decrypted."""
        return EncryptedFile(self, path)


class EncryptedFile:
    """A read-only, decrypting file object over a ``.wav.enc`` file.

    The header is checked on opening (DecryptError for an unknown key or a
    file that is not ours); each chunk is authenticated before any of its
    bytes are returned, so a reader never sees altered data: it gets
    DecryptError instead. ``size`` is the plaintext size."""

    def __init__(self, keyring, path):
        self.path = str(path)
        self._file = open(self.path, "rb")
        try:
            header = self._file.read(HEADER_BYTES)
            if len(header) != HEADER_BYTES:
                raise DecryptError(f"{self.path} is not an encrypted recording (too short)")
            magic, raw_id, salt, chunk_size, size = _HEADER.unpack(header)
            if magic != _MAGIC or chunk_size <= 0 or chunk_size > 16 * 1024 * 1024:
                raise DecryptError(f"{self.path} is not an encrypted recording (bad header)")
            self.key_id = raw_id.hex()
            self._aead = keyring._file_aead(self.key_id, salt)
            if self._aead is None:
                raise DecryptError(
                    f"{self.path} is encrypted with key {self.key_id}, which is not "
                    "configured in storage.encryption")
        except BaseException:
            self._file.close()
            raise
        self._header, self.chunk_size, self.size = header, chunk_size, size
        self._chunks = -(-size // chunk_size)
        self._index = 0
        self._buffer = b""
        self._position = 0
        self._at_end = False

    def _next_chunk(self):
        index = self._index
        if index >= self._chunks:
            if not self._at_end:
                self._at_end = True
                if self._file.read(1):
                    raise DecryptError(f"{self.path} has data after its last chunk")
            return b""
        length = min(self.chunk_size, self.size - index * self.chunk_size)
        kind = self._file.read(1)
        if kind == bytes([_DATA]):
            sealed, expected = self._file.read(length + _TAG), length + _TAG
        elif kind == bytes([_ZEROS]):
            sealed, expected = self._file.read(_TAG), _TAG
        else:
            raise DecryptError(f"{self.path} is truncated or damaged at chunk {index}")
        if len(sealed) != expected:
            raise DecryptError(f"{self.path} is truncated at chunk {index}")
        try:
            plain = self._aead.decrypt(_nonce(index), sealed,
                                       _chunk_ad(self._header, index, kind[0]))
        except InvalidTag:
            raise DecryptError(f"{self.path} fails authentication at chunk {index} "
                               "(changed or damaged)") from None
        self._index += 1
        return plain if kind[0] == _DATA else bytes(length)

    def read(self, n=-1):
        """Up to *n* bytes (all that is left when *n* is negative)."""
        out, have = [], 0
        while n is None or n < 0 or have < n:
            if not self._buffer:
                self._buffer = self._next_chunk()
                if not self._buffer:
                    break
            take = self._buffer if n is None or n < 0 else self._buffer[:n - have]
            self._buffer = self._buffer[len(take):]
            out.append(take)
            have += len(take)
        self._position += have
        return b"".join(out)

    def tell(self):
        return self._position

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _context(kid, context):
    return b"siprecd enc:v1\0" + kid.encode("ascii") + b"\0" + context


def _nonce(index):
    return index.to_bytes(12, "big")


def _chunk_ad(header, index, kind):
    return header + index.to_bytes(8, "big") + bytes([kind])


def keyring_from_config(encryption, environ=None, where="storage.encryption"):
    """The Keyring that ``storage.encryption`` describes, or None when no
    key is configured. Raises ConfigError naming the key path."""
    from siprecd.config import ConfigError

    if encryption is None or not encryption.configured:
        return None
    environ = os.environ if environ is None else environ
    keys = []
    sources = []
    if encryption.key_env:
        sources.append((f"{where}.key_env", lambda: _env_key(encryption.key_env, environ)))
    if encryption.key_file:
        sources.append((f"{where}.key_file", lambda: read_key_file(encryption.key_file)))
    for i, path in enumerate(encryption.key_files):
        sources.append((f"{where}.key_files[{i}]", lambda path=path: read_key_file(path)))
    for key_path, load in sources:
        try:
            keys.append(load())
        except EncryptionKeyError as e:
            raise ConfigError(str(e), key_path) from None
    return Keyring(keys)


def keyring_for(config):
    """The Keyring of a whole Config (``storage.encryption``), or None."""
    return keyring_from_config(config.storage.encryption)


def _env_key(name, environ):
    value = environ.get(name)
    if not value:
        raise EncryptionKeyError(f"environment variable {name} is not set")
    return parse_key(value, f"environment variable {name}")
