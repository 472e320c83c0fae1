"""SDES-SRTP (RFC 4568 keys, RFC 3711 packets) for recorded streams.

Two halves, both free of sockets:

- the offer/answer side (sans-IO): :func:`parse_crypto` reads one
  ``a=crypto`` value, :func:`negotiate_crypto` picks the line of an m-line we
  can honour and writes our answer line with a fresh key of our own, and
  :func:`secure_choices` applies the ``media.srtp`` mode (off, allowed,
  required) to a whole offer;
- the packet side: :class:`SrtpReceiver` unprotects one stream's SRTP and
  SRTCP with the SRC's key through ``pylibsrtp`` (libsrtp2), counting
  authentication failures, replays and other refusals instead of raising.

What we honour, and why the rest is refused: AES_CM_128_HMAC_SHA1_80 and
AES_CM_128_HMAC_SHA1_32 (the suites every SBC offers; libsrtp has both);
one master key, with or without a lifetime (counted here: packets beyond it
are dropped) and with or without an MKI (checked and cut out here before
libsrtp sees the packet, since the binding has no MKI support); the session
parameters ``KDR=0`` and ``WSH`` (replay window) and any optional ``-``
extension. Several master keys, a non-zero key derivation rate, unencrypted
or unauthenticated SRTP, FEC and unknown mandatory parameters are refused.

Keys are secrets: no object here shows one in its ``repr()``, and no error
message quotes key material (the SRC's or ours).
"""

import base64
import binascii
import os
import re

import attrs
import pylibsrtp

__all__ = [
    "SUITES",
    "PREFERENCE",
    "SDES_PROTOS",
    "MODES",
    "Suite",
    "CryptoAttribute",
    "CryptoRefused",
    "SrtpChoice",
    "SrtpReceiver",
    "parse_crypto",
    "negotiate_crypto",
    "secure_choices",
    "format_crypto",
]

MODES = ("off", "allowed", "required")
SDES_PROTOS = frozenset({"RTP/SAVP", "RTP/SAVPF"})


@attrs.frozen
class Suite:
    name: str
    profile: int          # pylibsrtp.Policy.SRTP_PROFILE_*
    key_length: int       # master key, bytes
    salt_length: int      # master salt, bytes
    rtp_tag: int          # SRTP authentication tag, bytes
    rtcp_tag: int         # SRTCP authentication tag, bytes (RFC 4568 §6.2: 80 bits for both)

    @property
    def material_length(self):
        return self.key_length + self.salt_length


SUITES = {
    "AES_CM_128_HMAC_SHA1_80": Suite("AES_CM_128_HMAC_SHA1_80",
                                     pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
                                     16, 14, 10, 10),
    "AES_CM_128_HMAC_SHA1_32": Suite("AES_CM_128_HMAC_SHA1_32",
                                     pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
                                     16, 14, 4, 10),
}
# Ours, first to last: the longer tag first.
PREFERENCE = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")

# RFC 3711 §9.2: a master key is good for at most 2^48 SRTP packets (and
# 2^31 SRTCP packets, counted separately).
MAX_LIFETIME = 2 ** 48
# libsrtp's replay window: at least 64 (RFC 3711 §3.3.2), at most 2^15.
DEFAULT_WINDOW = 128
MIN_WINDOW, MAX_WINDOW = 64, 0x8000
# What offered text may be quoted in a reason: short, and without the
# characters of "inline:<base64>", so no key can ride along.
_SAFE = re.compile(r"[A-Za-z0-9_\-.^/]{1,32}", re.ASCII)
_TAG = re.compile(r"[0-9]{1,9}", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)


class CryptoRefused(ValueError):
    """No ``a=crypto`` line can be honoured (or the mode forbids the offer);
    ``args[0]`` is a reason fit for a SIP Warning (never key material)."""


def _show(text):
    """Offered text quoted in a reason, only if it is plainly harmless."""
    return text if _SAFE.fullmatch(text) else "(unprintable)"


@attrs.frozen
class CryptoAttribute:
    """One parsed ``a=crypto`` value (RFC 4568 §9.1) with a key we can use.

    Equal attributes carry the same key: a re-offer equal to the last one
    keeps the SRTP context.
    """

    tag: int
    suite: Suite
    key: bytes = attrs.field(repr=False)   # master key || master salt
    lifetime: int | None = None            # packets, when the SRC limits the key
    mki: int | None = None
    mki_length: int = 0
    window: int = DEFAULT_WINDOW


def _lifetime(text):
    if text.startswith("2^"):
        if not _DIGITS.fullmatch(text[2:]):
            raise CryptoRefused(f"bad key lifetime {_show(text)}")
        exponent = int(text[2:])
        if exponent > 48:
            raise CryptoRefused(f"key lifetime {_show(text)} is beyond the SRTP limit of 2^48")
        return 2 ** exponent
    if not _DIGITS.fullmatch(text):
        raise CryptoRefused(f"bad key lifetime {_show(text)}")
    value = int(text)
    if value > MAX_LIFETIME:
        raise CryptoRefused("key lifetime is beyond the SRTP limit of 2^48")
    if value == 0:
        raise CryptoRefused("key lifetime of 0 packets")
    return value


def _mki(text):
    value, _, length = text.partition(":")
    if not _DIGITS.fullmatch(value) or not re.fullmatch(r"[0-9]{1,3}", length, re.ASCII):
        raise CryptoRefused(f"bad MKI {_show(text)}")
    value, length = int(value), int(length)
    if not 1 <= length <= 128:
        raise CryptoRefused(f"MKI length {length} is outside 1-128")
    if value >= 256 ** length:
        raise CryptoRefused(f"MKI {value} does not fit in {length} byte(s)")
    return value, length


def _key_params(text, suite):
    if ";" in text:
        raise CryptoRefused("several master keys (MKI selection) are not supported")
    method, colon, info = text.partition(":")
    if not colon or method.lower() != "inline":
        raise CryptoRefused(f"key method {_show(method)} is not inline")
    material, *extras = info.split("|")
    if len(extras) > 2:
        raise CryptoRefused("too many key parameters after the key")
    lifetime = mki = None
    mki_length = 0
    for extra in extras:
        if ":" in extra:
            if mki is not None:
                raise CryptoRefused("two MKIs for one key")
            mki, mki_length = _mki(extra)
        else:
            if lifetime is not None:
                raise CryptoRefused("two lifetimes for one key")
            lifetime = _lifetime(extra)
    if not _B64.fullmatch(material):
        raise CryptoRefused("key is not base64")
    try:
        key = base64.b64decode(material + "=" * (-len(material) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoRefused("key is not base64") from None
    if len(key) != suite.material_length:
        raise CryptoRefused(
            f"key and salt are {len(key)} bytes, {suite.name} needs {suite.material_length}")
    return key, lifetime, mki, mki_length


def _session_params(params):
    window = DEFAULT_WINDOW
    for param in params:
        name, eq, value = param.partition("=")
        upper = name.upper()
        if upper == "KDR":
            if value != "0":
                raise CryptoRefused(f"key derivation rate {_show(value)} is not supported (only 0)")
        elif upper == "WSH":
            if not _DIGITS.fullmatch(value) or not MIN_WINDOW <= int(value) <= MAX_WINDOW:
                raise CryptoRefused(f"replay window size {_show(value)} is outside "
                                    f"{MIN_WINDOW}-{MAX_WINDOW}")
            window = int(value)
        elif upper == "FEC_ORDER" and value.upper() == "FEC_SRTP":
            pass  # the default order; we have no FEC anyway
        elif name.startswith("-"):
            pass  # RFC 4568 §6.3.7: an optional extension may be ignored
        else:
            raise CryptoRefused(f"session parameter {_show(name)} is not supported")
    return window


def parse_crypto(value):
    """Parse one ``a=crypto`` value into a :class:`CryptoAttribute`.

    Raises :class:`CryptoRefused` for anything we cannot honour (including
    malformed lines); never anything else.
    """
    if not isinstance(value, str):
        raise CryptoRefused("a=crypto is not text")
    fields = value.split()
    if len(fields) < 3:
        raise CryptoRefused("a=crypto needs a tag, a suite and key parameters")
    tag_text, suite_name, key_text, *params = fields
    if not _TAG.fullmatch(tag_text):
        raise CryptoRefused(f"bad a=crypto tag {_show(tag_text)}")
    suite = SUITES.get(suite_name.upper())
    if suite is None:
        raise CryptoRefused(f"suite {_show(suite_name)} is not supported")
    key, lifetime, mki, mki_length = _key_params(key_text, suite)
    window = _session_params(params)
    return CryptoAttribute(int(tag_text), suite, key, lifetime, mki, mki_length, window)


def format_crypto(tag, suite, key):
    """An ``a=crypto`` value (without ``a=crypto:``) offering *key*."""
    return f"{tag} {suite.name} inline:{base64.b64encode(key).decode('ascii')}"


@attrs.frozen
class SrtpChoice:
    """The SRTP of one accepted m-line: the SRC's key (to decrypt what it
    sends) and our answer line, with a key of our own (we send nothing, but
    RFC 4568 wants one)."""

    remote: CryptoAttribute
    answer: str = attrs.field(repr=False)

    @property
    def suite(self):
        return self.remote.suite


def negotiate_crypto(offered, previous=None, preference=PREFERENCE):
    """Choose among the ``a=crypto`` values of one m-line.

    Returns an :class:`SrtpChoice`: the first line in the order of
    *preference* (then of the offer) that we can honour, answered with the
    same tag and suite and a fresh random key. When *previous* (the choice
    for this stream in the last offer) is still offered unchanged, it is
    returned as it was: same context, same answer. Raises
    :class:`CryptoRefused` naming why each line was refused.
    """
    usable, reasons = [], []
    for value in offered:
        try:
            usable.append(parse_crypto(value))
        except CryptoRefused as e:
            tag = value.split(None, 1)[0] if isinstance(value, str) and value.split() else "?"
            reasons.append(f"tag {_show(tag)}: {e.args[0]}")
    if previous is not None and previous.remote in usable:
        return previous
    order = {name: i for i, name in enumerate(preference)}
    usable = [a for a in usable if a.suite.name in order]
    if not usable:
        if not offered:
            raise CryptoRefused("no a=crypto line")
        reasons = "; ".join(reasons or ["no suite of ours"])
        raise CryptoRefused(f"no usable a=crypto line ({reasons})")
    best = min(usable, key=lambda a: order[a.suite.name])
    ours = os.urandom(best.suite.material_length)
    return SrtpChoice(best, format_crypto(best.tag, best.suite, ours))


def secure_choices(offer, choices, mode, previous=None):
    """Apply the ``media.srtp`` *mode* to ``sdp.negotiate()``'s *choices*.

    Returns ``(choices, keys)``: the choices with our ``a=crypto`` answer
    set on every SRTP m-line, and per m-line the :class:`SrtpChoice` (None
    for plain RTP or a refused m-line). *previous* maps an m-line index to
    the SrtpChoice its stream had before (re-offers keep the context while
    the key is unchanged). Raises :class:`CryptoRefused` (answer 488) when
    an SRTP audio m-line has no line we can honour, or when *mode* is
    ``required`` and an audio m-line is plain RTP; in ``off`` mode SRTP
    m-lines are left refused (port 0) by negotiate().
    """
    if mode not in MODES:
        raise ValueError(f"media.srtp must be one of {MODES}, got {mode!r}")
    previous = previous or {}
    out_choices, keys = [], []
    for media, choice in zip(offer.media, choices):
        used = media.media.lower() == "audio" and media.port != 0
        secure = media.proto.upper() in SDES_PROTOS
        if used and mode == "required" and not (secure and media.crypto):
            raise CryptoRefused(f"m-line {media.index}: SRTP is required here (media.srtp) and "
                                f"the offer has no SDES keys ({_show(media.proto)})")
        if not used or not secure or mode == "off":
            out_choices.append(choice)
            keys.append(None)
            continue
        try:
            srtp = negotiate_crypto(media.crypto, previous.get(media.index))
        except CryptoRefused as e:
            raise CryptoRefused(f"m-line {media.index}: {e.args[0]}") from None
        if choice is None:
            # No codec in common: refused with port 0, keys or not.
            out_choices.append(None)
            keys.append(None)
            continue
        out_choices.append(attrs.evolve(choice, crypto=srtp.answer))
        keys.append(srtp)
    return out_choices, keys


# -- packets ------------------------------------------------------------------

_COUNTERS = ("srtp_packets", "srtp_auth_failures", "srtp_replays", "srtp_errors",
             "srtcp_packets", "srtcp_auth_failures", "srtcp_replays", "srtcp_errors",
             "srtp_key_expired", "srtp_rekeys")


def _session(attribute):
    policy = pylibsrtp.Policy(key=attribute.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                              srtp_profile=attribute.suite.profile)
    policy.window_size = attribute.window
    return pylibsrtp.Session(policy=policy)


class SrtpReceiver:
    """Unprotects the SRTP and SRTCP of one stream with the SRC's key.

    :meth:`unprotect` and :meth:`unprotect_rtcp` return the plain packet,
    or None for a packet that is dropped (and counted): authentication
    failure, replay, too short or too long, wrong MKI, key past its
    lifetime. A new SSRC is accepted as long as it authenticates (libsrtp's
    "any inbound" template). :meth:`rekey` switches to a new key, keeping
    the counters.
    """

    def __init__(self, attribute):
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self._set(attribute)

    def _set(self, attribute):
        self.attribute = attribute
        self._session = _session(attribute)
        self._rtp_used = 0
        self._rtcp_used = 0
        suite = attribute.suite
        self._mki = (attribute.mki.to_bytes(attribute.mki_length, "big")
                     if attribute.mki is not None else None)
        self._rtp_trailer = (suite.rtp_tag, attribute.mki_length)
        self._rtcp_trailer = (suite.rtcp_tag, attribute.mki_length)

    @property
    def suite(self):
        return self.attribute.suite.name

    def rekey(self, attribute):
        """Use *attribute*'s key from now on (a no-op when it is the same)."""
        if attribute == self.attribute:
            return
        self._set(attribute)
        self.counters["srtp_rekeys"] += 1

    def _strip_mki(self, data, trailer, minimum):
        tag, mki_length = trailer
        if len(data) < minimum + mki_length + tag:
            return None
        if mki_length:
            end = len(data) - tag
            if data[end - mki_length:end] != self._mki:
                return None
            data = data[:end - mki_length] + data[end:]
        return data

    def _run(self, data, kind, unprotect, trailer, minimum):
        counters = self.counters
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        data = self._strip_mki(data, trailer, minimum)
        if data is None:
            counters[f"{kind}_errors"] += 1
            return None
        try:
            plain = unprotect(data)
        except pylibsrtp.Error as e:
            reason = str(e)
            if reason.startswith("authentication"):
                counters[f"{kind}_auth_failures"] += 1
            elif reason.startswith("replay"):
                counters[f"{kind}_replays"] += 1
            else:
                counters[f"{kind}_errors"] += 1
            return None
        except (ValueError, TypeError):   # longer than the binding's buffer
            counters[f"{kind}_errors"] += 1
            return None
        counters[f"{kind}_packets"] += 1
        return plain

    def unprotect(self, data):
        """The RTP packet inside SRTP *data*, or None (dropped, counted)."""
        lifetime = self.attribute.lifetime
        if lifetime is not None and self._rtp_used >= lifetime:
            self.counters["srtp_key_expired"] += 1
            return None
        plain = self._run(data, "srtp", self._session.unprotect, self._rtp_trailer, 12)
        if plain is not None:
            self._rtp_used += 1
        return plain

    def unprotect_rtcp(self, data):
        """The RTCP packet inside SRTCP *data*, or None (dropped, counted)."""
        lifetime = self.attribute.lifetime
        if lifetime is not None and self._rtcp_used >= min(lifetime, 2 ** 31):
            self.counters["srtp_key_expired"] += 1
            return None
        plain = self._run(data, "srtcp", self._session.unprotect_rtcp, self._rtcp_trailer, 12)
        if plain is not None:
            self._rtcp_used += 1
        return plain

    def stats(self):
        out = dict(self.counters)
        out["srtp_suite"] = self.suite
        return out

    def __repr__(self):
        return f"<SrtpReceiver {self.suite} tag {self.attribute.tag}>"
