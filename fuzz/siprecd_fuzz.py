#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of siprecd's sans-IO parsers.

    python fuzz/siprecd_fuzz.py TARGET [CORPUS_DIR ...] [libFuzzer options]
    python fuzz/siprecd_fuzz.py --seeds TARGET DIR    # write the seed corpus

TARGETs and the one exception each may raise on bad input (anything else
escaping is a crash, and libFuzzer saves the input that caused it):

    sip        siprecd.sip.message.parse_message / StreamParser  SipParseError
    sdp        siprecd.siprec.sdp.parse_sdp                      SdpError
    multipart  siprecd.siprec.multipart.split_body               BodyError
    metadata   siprecd.siprec.metadata.parse_metadata            MetadataError
    rtp        siprecd.media.rtp parse_rtp / parse_rtcp /
               parse_telephone_event                             MalformedPacket

CI runs each for a few thousand inputs (tests/test_fuzz_atheris.py); a
longer run by hand: ``python fuzz/siprecd_fuzz.py sip corpus/sip -max_total_time=600``.
"""

import sys

import atheris

with atheris.instrument_imports():
    from siprecd.media.rtp import (
        MalformedPacket, build_rtp, parse_rtcp, parse_rtp, parse_telephone_event,
    )
    from siprecd.sip.message import SipParseError, StreamParser, parse_message
    from siprecd.siprec.metadata import MetadataError, merge_metadata, parse_metadata
    from siprecd.siprec.multipart import BodyError, find_siprec_parts, split_body
    from siprecd.siprec.sdp import SdpError, parse_sdp


def fuzz_sip(data):
    try:
        parse_message(data)
    except SipParseError:
        pass
    parser = StreamParser(4096)
    half = len(data) // 2
    parser.feed(data[:half])
    parser.feed(data[half:])


def fuzz_sdp(data):
    try:
        parse_sdp(data)
    except SdpError:
        pass


def fuzz_multipart(data):
    fdp = atheris.FuzzedDataProvider(data)
    content_type = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 120))
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        parts = split_body(content_type, body)
    except BodyError:
        return
    find_siprec_parts(parts)


def fuzz_metadata(data):
    try:
        first = parse_metadata(data)
    except MetadataError:
        return
    merge_metadata(first, first)


def fuzz_rtp(data):
    for parse in (parse_rtp, parse_rtcp, parse_telephone_event):
        try:
            parse(data)
        except MalformedPacket:
            pass


TARGETS = {"sip": fuzz_sip, "sdp": fuzz_sdp, "multipart": fuzz_multipart,
           "metadata": fuzz_metadata, "rtp": fuzz_rtp}


def seeds(target):
    """Valid inputs to start from (mutating them reaches deeper than noise)."""
    from pathlib import Path

    from harness.fuzz import seed_messages
    from siprecd.simulator.samples import FLAVOURS, sample_invite, sample_sdp

    if target == "sip":
        return seed_messages()
    if target == "sdp":
        return [sample_sdp(), sample_sdp(("1",))] + [
            sample_invite(f).body for f in FLAVOURS[:1]]
    if target == "multipart":
        return [b"\x40" + sample_invite(f).content_type.encode()[:64].ljust(64)
                + sample_invite(f).body for f in FLAVOURS]
    if target == "metadata":
        fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "siprec"
        return [p.read_bytes() for p in sorted(fixtures.glob("*.xml"))]
    if target == "rtp":
        return [build_rtp(0, 1, 160, 7, b"\xff" * 160),
                build_rtp(101, 2, 320, 7, b"\x01\x8a\x03\x20"),
                build_rtp(8, 3, 480, 7, b"\xd5" * 160, csrcs=(1, 2),
                          extension=(0xBEDE, b"abcd"), padding=4),
                bytes.fromhex("80c8000600000007") + bytes(20),
                bytes.fromhex("81c9000700000007") + bytes(24),
                bytes.fromhex("81cb000100000007")]
    raise KeyError(target)


def main(argv):
    if len(argv) >= 4 and argv[1] == "--seeds":
        from pathlib import Path

        out = Path(argv[3])
        out.mkdir(parents=True, exist_ok=True)
        for n, data in enumerate(seeds(argv[2])):
            (out / f"seed-{n:03d}").write_bytes(data)
        return 0
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(__doc__, file=sys.stderr)
        return 2
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
