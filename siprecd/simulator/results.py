"""What the simulator reports: one :class:`CallResult` per call and a
:class:`Summary` of the run, as text for people and as a dict for scripts."""

import attrs

from siprecd.simulator.rtp import ImpairmentCounts

__all__ = ["StreamResult", "CallResult", "Summary", "explain_status"]


@attrs.define
class StreamResult:
    label: str
    role: str                      # "customer" or "agent"
    codec: str
    local_port: int | None = None
    destination: str | None = None  # "host:port" from the SRS's answer
    refused: bool = False           # answered with port 0
    packets: int = 0                # RTP packets sent (DTMF included)
    bytes: int = 0                  # RTP bytes sent, 12-byte headers included
    payload_bytes: int = 0
    audio_packets: int = 0
    dtmf_packets: int = 0
    dtmf_digits: str = ""
    rtcp_packets: int = 0
    srtp_suite: str | None = None   # SRTP: the suite the SRS answered with
    impairments: ImpairmentCounts = attrs.field(factory=ImpairmentCounts)

    def to_dict(self):
        return {**{k: v for k, v in attrs.asdict(self, recurse=False).items() if k != "impairments"},
                "impairments": attrs.asdict(self.impairments)}


@attrs.define
class CallResult:
    number: int                    # 1-based, in order of the specs given
    call_id: str | None = None
    guid: str | None = None         # what the SRS should pick (siprecd's rules)
    guid_source: str | None = None
    flavour: str = ""
    guid_style: str = ""
    codec: str = ""
    status: int | None = None       # final response to the INVITE
    reason: str = ""
    detail: str = ""                # Warning / Retry-After / Unsupported of a refusal
    answered: bool = False
    setup_ms: float | None = None   # INVITE sent -> 2xx received
    hold: list = attrs.field(factory=list)   # [("hold"|"resume", status)]
    bye_status: int | None = None
    ended_by: str | None = None     # "src" (our BYE) or "srs" (theirs)
    timed_out: bool = False         # no final answer to the INVITE in time
    call_seconds: float = 0.0       # call time the media covered
    streams: list = attrs.field(factory=list)
    problems: list = attrs.field(factory=list)

    @property
    def clean(self):
        """Answered, every step answered 2xx, ended by our BYE."""
        return self.answered and not self.problems

    @property
    def outcome(self):
        """ok, refused (a final failure status), timeout, not-placed (no
        transport), problem (answered, but something went wrong) or error."""
        if self.clean:
            return "ok"
        if self.answered:
            return "problem"
        if self.status is not None:
            return "refused"
        if self.timed_out:
            return "timeout"
        return "not-placed" if self.call_id is None else "error"

    def to_dict(self):
        data = attrs.asdict(self, recurse=False)
        data["streams"] = [s.to_dict() for s in self.streams]
        data["hold"] = [list(h) for h in self.hold]
        data["clean"] = self.clean
        data["outcome"] = self.outcome
        return data

    def format(self, total):
        head = f"call {self.number}/{total}"
        if self.answered:
            setup = f" in {self.setup_ms:.0f} ms" if self.setup_ms is not None else ""
            verdict = "OK" if self.clean else "PROBLEM"
            lines = [f"{head}  {verdict}  answered {self.status} {self.reason}{setup}  "
                     f"guid {self.guid} ({self.guid_source})  Call-ID {self.call_id}"]
        else:
            status = f"{self.status} {self.reason}".strip() if self.status else self.outcome
            detail = f" [{self.detail}]" if self.detail else ""
            lines = [f"{head}  FAILED  {status}{detail}"]
            if self.call_id is not None:
                lines[0] += f"  guid {self.guid} ({self.guid_source})  Call-ID {self.call_id}"
        lines[0] += f"  {self.flavour}/{self.guid_style}/{self.codec}"
        if self.hold:
            lines.append("  hold: " + ", ".join(f"{what} re-INVITE {status}" for what, status in self.hold))
        for s in self.streams:
            if not self.answered:
                break
            where = "refused (port 0)" if s.refused else f"-> {s.destination}"
            secure = f" SRTP {s.srtp_suite}" if s.srtp_suite else ""
            line = (f"  label {s.label} {s.role:<8} {s.codec}{secure} from :{s.local_port} "
                    f"{where}: {s.packets} packets, {s.bytes} bytes")
            if s.dtmf_packets:
                line += f" ({s.dtmf_packets} DTMF packets for {s.dtmf_digits!r})"
            if s.rtcp_packets:
                line += f", {s.rtcp_packets} RTCP"
            i = s.impairments
            if i.lost or i.reordered or i.delayed:
                line += (f"; impaired: lost {i.lost}, reordered {i.reordered}, "
                         f"delayed {i.delayed} (max {i.max_delay_ms:.1f} ms)")
            lines.append(line)
        if self.answered:
            ended = {"src": "BYE from us", "srs": "BYE from the SRS"}.get(self.ended_by, "not ended")
            bye = f", answered {self.bye_status}" if self.bye_status is not None else ""
            lines.append(f"  ended: {ended}{bye} after {self.call_seconds:.2f} s of call time")
        lines += [f"  ! {p}" for p in self.problems]
        return "\n".join(lines)


@attrs.define
class Summary:
    target: str
    transport: str
    seed: int
    speed: float
    impairments: str
    calls: list = attrs.field(factory=list)
    elapsed: float = 0.0            # real seconds the run took

    @property
    def ok(self):
        """Every call answered and ended cleanly (the CLI's exit status 0)."""
        return bool(self.calls) and all(c.clean for c in self.calls)

    def totals(self):
        streams = [s for c in self.calls for s in c.streams]
        failures = {}
        for c in self.calls:
            if not c.answered:
                key = str(c.status) if c.status else c.outcome
                failures[key] = failures.get(key, 0) + 1
        return {
            "calls": len(self.calls),
            "answered": sum(c.answered for c in self.calls),
            "clean": sum(c.clean for c in self.calls),
            "failed": sum(not c.answered for c in self.calls),
            "failures": failures,
            "packets": sum(s.packets for s in streams),
            "bytes": sum(s.bytes for s in streams),
            "dtmf_packets": sum(s.dtmf_packets for s in streams),
            "rtcp_packets": sum(s.rtcp_packets for s in streams),
            "lost": sum(s.impairments.lost for s in streams),
            "reordered": sum(s.impairments.reordered for s in streams),
            "delayed": sum(s.impairments.delayed for s in streams),
        }

    def to_dict(self):
        return {"target": self.target, "transport": self.transport, "seed": self.seed,
                "speed": self.speed, "impairments": self.impairments, "ok": self.ok,
                "elapsed": round(self.elapsed, 3), "totals": self.totals(),
                "calls": [c.to_dict() for c in self.calls]}

    def format(self):
        lines = [c.format(len(self.calls)) for c in self.calls]
        t = self.totals()
        failed = ""
        if t["failed"]:
            failed = " (" + ", ".join(f"{k} x{v}" for k, v in sorted(t["failures"].items())) + ")"
        lines.append(
            f"totals: {t['calls']} call(s) to {self.target} over {self.transport}: "
            f"{t['answered']} answered, {t['clean']} ended cleanly, {t['failed']} failed{failed}; "
            f"{t['packets']} RTP packets, {t['bytes']} bytes sent"
            + (f", {t['dtmf_packets']} DTMF" if t["dtmf_packets"] else "")
            + (f", {t['rtcp_packets']} RTCP" if t["rtcp_packets"] else "")
        )
        lines.append(
            f"impairments: {self.impairments}; applied: lost {t['lost']}, "
            f"reordered {t['reordered']}, delayed {t['delayed']}; seed {self.seed}; "
            f"speed {self.speed:g}x; {self.elapsed:.2f} s"
        )
        lines.append("result: OK" if self.ok else "result: FAILED")
        return "\n".join(lines)


_HINTS = {
    403: "the SRS (or a proxy) refuses calls from this address",
    404: "nothing answers to this Request-URI",
    408: "the SRS or a proxy timed out",
    415: "the SRS does not accept the body type",
    420: "the SRS does not support an extension the INVITE requires",
    422: "the SRS wants a longer session timer",
    480: "the SRS is temporarily unavailable",
    486: "the SRS is busy",
    488: "the SRS accepts none of the offered media: check the codec against its media.codecs "
         "and SRTP against its media.srtp (its Warning says which)",
    500: "the SRS failed while handling the call: see its log",
    503: "the SRS is at its call limit, draining, not ready, or out of media ports",
}


def explain_status(status):
    """A short hint on what a failure status means for a recording call."""
    return _HINTS.get(status, "")
