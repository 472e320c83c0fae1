"""Realistic days of calls for the export tests and bench/export_bench.

Everything is written through the IStorage API, as the daemon writes it
(call, leg, one stream per participant with its start-streaming settings,
then utterances with their sequences), so an export sees what it would
see in production. Deterministic: the same arguments give the same
texts, times and ids, so two databases seeded alike export alike.
"""

import datetime
import uuid

from twisted.internet import defer

from siprecd.storage.records import Call, Message, Stream

__all__ = ["seed_day", "TEXTS", "day_start_ms"]

# Utterances that exercise the formats: commas, quotes, line breaks,
# non-ASCII, redaction marks, a leading "=", empty-looking text.
TEXTS = (
    "hi, thanks for calling; how can I help?",
    'she said "my card was charged twice", then hung up',
    "line one\nline two\r\nline three",
    "número de cuenta ####, señora — ¿correcto?",
    "=SUM(A1:A2) is not a formula here",
    "yes I'd like to check the balance on my account please it ends in #### thank you",
    "  leading and trailing spaces  ",
    "tab\tseparated, \"quoted\" and 'single'",
    "ok",
    "emoji 🙂 and CJK 你好",
)


def day_start_ms(day):
    day = datetime.date.fromisoformat(day) if isinstance(day, str) else day
    start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    return int(start.timestamp()) * 1000


def _id(*parts):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "siprecd-export-sample:" + ":".join(map(str, parts))))


async def seed_day(storage, day, calls=10, utterances=10, hours=range(24), prefix="guid",
                   redaction_output="redacted", detailed_token=False, concurrency=8,
                   first_offset_ms=0):
    """Store *calls* calls of *utterances* utterances each (two streams per
    call, customer and agent taking turns), created on UTC *day*, their
    start times spread over *hours*. Fires with the calls' guids."""
    start = day_start_ms(day)
    hours = list(hours)
    guids = [f"{prefix}-{day}-{n:05d}" for n in range(calls)]

    async def one(n, guid):
        hour = hours[n % len(hours)]
        began = start + hour * 3_600_000 + first_offset_ms + (n // len(hours)) * 7_000
        await storage.upsert_call(
            Call(guid, f"call-{n}@sbc.example", "node-a", began,
                 identifiers=[{"source": "call-id", "value": f"call-{n}@sbc.example",
                               "raw": f"call-{n}@sbc.example"}]),
            now=began,
        )
        params = {"language": "en-US", "detailedToken": detailed_token,
                  "redactionOutput": redaction_output, "mediaLineOrder": "CUSTOMER_FIRST"}
        leg = await storage.start_leg(guid, f"cust-{n}", f"agent-{n % 7}", params, now=began)
        streams = []
        for role, external in (("customer", f"cust-{n}"), ("agent", f"agent-{n % 7}")):
            stream = Stream(_id(guid, role), guid, leg.id, role, external, began, label=role,
                            params=params)
            await storage.upsert_stream(stream, now=began)
            streams.append(stream)
        for u in range(utterances):
            stream = streams[u % 2]
            text = TEXTS[(n + u) % len(TEXTS)]
            redacted = text.replace("4321", "####")
            tokens = None
            if detailed_token:
                tokens = [{"content": w, "start": i * 300, "end": i * 300 + 250,
                           "confidence": 0.9} for i, w in enumerate(redacted.split())]
            await storage.add_message(Message(
                _id(guid, u), stream.id, redacted, u * 4000, u * 4000 + 3500,
                began + u * 4000 + 3600, client_ms=None,
                unredacted_text=None if redaction_output == "redacted" else
                text.replace("####", "4321"),
                tokens=tokens, language="en-US",
            ), ())

    pending = list(enumerate(guids))

    async def worker():
        while pending:
            n, guid = pending.pop(0)
            await one(n, guid)

    await defer.gatherResults(
        [defer.ensureDeferred(worker()) for _ in range(max(1, concurrency))],
        consumeErrors=True)
    return guids
