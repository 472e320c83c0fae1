"""How conversations and calls in progress are shown, by the API and the CLI.

Pure functions of what storage and the transcription service hold; one
place, so ``GET /conversation/v1/calls`` and ``siprecd calls`` agree.
"""

from siprecd.messages import iso_ms

__all__ = ["conversation_view", "call_in_progress", "participants_view", "identifiers_view"]


def identifiers_view(call):
    """Every candidate call identifier seen (source and value)."""
    return [{"source": i.get("source"), "value": i.get("value")} for i in call.identifiers or ()]


def participants_view(call):
    """The metadata's participants: AORs, name, the streams (labels) they send."""
    return [{"id": p.get("id"), "aors": list(p.get("aors") or ()), "name": p.get("name"),
             "sends": list(p.get("labels") or ())} for p in call.participants or ()]


def conversation_view(call, legs):
    """A Conversation object of the API."""
    agents = list(dict.fromkeys(leg.agent_id for leg in legs if leg.agent_id))
    customer = next((leg.customer_id for leg in reversed(legs) if leg.customer_id), None)
    return {
        "id": call.conversation_id,
        "externalId": call.guid,
        "timestamp": iso_ms(call.started_ms),
        "endTimestamp": iso_ms(call.ended_ms),
        "status": call.state,
        "customer": {"externalId": customer} if customer else None,
        "agents": [{"externalId": a} for a in agents],
        "legs": [{"id": leg.id, "number": leg.number, "customerId": leg.customer_id,
                  "agentId": leg.agent_id, "startTimestamp": iso_ms(leg.started_ms),
                  "endTimestamp": iso_ms(leg.ended_ms)} for leg in legs],
        "identifiers": identifiers_view(call),
        "participants": participants_view(call),
        "mixed": bool(call.mixed),
    }


def _stored_sessions(call):
    """The SIP side of a call as stored (for a call on another node)."""
    sip = call.sip or {}
    return [{"callId": sip.get("callId"), "transport": sip.get("transport"), "phase": None,
             "startTimestamp": iso_ms(call.started_ms),
             "streams": [{"label": s.get("label"), "audioIndex": s.get("audioIndex"),
                          "codec": s.get("codec"), "onHold": None, "role": None,
                          "streamId": None, "transcription": None, "participant": None}
                         for s in sip.get("streams") or ()],
             "transcription": None}]


def call_in_progress(call, legs, live):
    """A call in progress: the stored call and its legs, with *live* (the
    node's own view of its sessions, when this node has the call; else
    what storage says, without transcription state)."""
    sessions = [dict({k: v for k, v in s.items() if k != "startTimestampMs"},
                     startTimestamp=iso_ms(s["startTimestampMs"])) for s in live] \
        if live else _stored_sessions(call)
    return {
        "externalId": call.guid,
        "conversationId": call.conversation_id,
        "node": call.node,
        "startTimestamp": iso_ms(call.started_ms),
        "identifiers": identifiers_view(call),
        "participants": participants_view(call),
        "mixed": bool(call.mixed),
        "sessions": sessions,
        "legs": [{"id": leg.id, "number": leg.number, "customerId": leg.customer_id,
                  "agentId": leg.agent_id} for leg in legs],
    }
