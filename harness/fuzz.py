"""Seeded mutation of SIP messages, for fuzzing a running daemon.

Random bytes rarely get past a parser's first line; mutations of valid
SIPREC messages reach the header, body, SDP and XML code as well.
"""

import random

from siprecd.simulator.samples import FLAVOURS, sample_invite

__all__ = ["seed_messages", "mutate", "fuzz_messages"]


def _request(method, body=b"", content_type=None, extra=()):
    lines = [
        f"{method} sip:srs@127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKfuzz;rport",
        "From: <sip:src@127.0.0.1>;tag=fz",
        "To: <sip:srs@127.0.0.1>",
        "Call-ID: fuzz@127.0.0.1",
        f"CSeq: 1 {method}",
        "Contact: <sip:src@127.0.0.1:5999>;+sip.src",
        "Max-Forwards: 70",
        *extra,
    ]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def seed_messages():
    seeds = [_request(m) for m in ("OPTIONS", "BYE", "UPDATE", "INFO", "CANCEL", "ACK")]
    for flavour in FLAVOURS:
        s = sample_invite(flavour, call_key=f"fuzz-{flavour}")
        extra = [f"{k}: {v}" for k, v in s.headers] + ["Require: siprec"]
        seeds.append(_request("INVITE", s.body, s.content_type, extra))
    seeds.append(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\n"
                 b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\n"
                 b"CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n")
    return seeds


_TOKENS = [b"\r\n", b"\n", b":", b";", b",", b"<", b">", b"\"", b"=", b" ", b"\x00", b"\xff",
           b"Content-Length: 999999\r\n", b"Content-Length: -1\r\n", b"--", b"boundary=",
           b"<![CDATA[", b"<!ENTITY x SYSTEM 'file:///etc/passwd'>", b"&x;", b"m=audio 0 RTP/AVP",
           b"c=IN IP4 0.0.0.0", b"a=inactive", b"Require: foo\r\n", b"To: x;tag=\r\n",
           b"CSeq: 4294967296 INVITE\r\n", b"Via: SIP/2.0/TCP [::1\r\n", b"\t", b"%00"]


def mutate(data, rnd):
    """One to eight random edits: flips, cuts, splices, token insertions."""
    data = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        if not data:
            data += rnd.choice(_TOKENS)
            continue
        op = rnd.randrange(6)
        i = rnd.randrange(len(data))
        if op == 0:
            data[i] = rnd.randrange(256)
        elif op == 1:
            del data[i:i + rnd.randint(1, 64)]
        elif op == 2:
            data[i:i] = rnd.choice(_TOKENS)
        elif op == 3:
            j = rnd.randrange(len(data))
            data[i:i] = data[j:j + rnd.randint(1, 200)]
        elif op == 4:
            data = data[:i]
        else:
            data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
    return bytes(data)


def fuzz_messages(count, seed=0):
    rnd = random.Random(seed)
    seeds = seed_messages()
    for n in range(count):
        if n % 10 == 0:
            yield bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 1500)))
        else:
            yield mutate(rnd.choice(seeds), rnd)
