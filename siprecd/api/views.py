"""How conversations and calls in progress are shown, by the API and the CLI.

Pure functions of what storage and the transcription service hold; one
place, so GET conversations, ``GET /conversation/v1/calls`` and
``siprecd calls`` agree.
"""

from siprecd.messages import iso_ms

__all__ = ["conversation_view", "call_in_progress", "participant_view", "identifiers_view"]


def identifiers_view(call):
    """Every candidate call identifier seen (source and value)."""
    return [{"source": i.get("source"), "value": i.get("value")}
            for i in (call.identifiers or ())]


def participant_view(p):
    """A participant the recording metadata named: AORs, name, the labels
    of the streams it sends, its session, whether it left."""
    return {"id": p.get("id"), "aors": list(p.get("aors") or ()), "name": p.get("name"),
            "sendsLabels": list(p.get("labels") or ()), "callId": p.get("callId"),
            "left": bool(p.get("left", False))}


def _sessions(sip):
    sessions = sip.get("sessions")
    if sessions is None and sip.get("callId"):
        sessions = [sip]        # stored before sessions were listed
    return sessions or []


def _stored_session_view(s):
    return {"callId": s.get("callId"), "transport": s.get("transport"),
            "sessionId": s.get("sessionId"), "metadataDialect": s.get("metadataDialect"),
            "delayedOffer": bool(s.get("delayedOffer", False)), "mixed": s.get("mixed"),
            "streams": [{"label": st.get("label"), "audioIndex": st.get("audioIndex"),
                         "codec": st.get("codec"), "seat": st.get("seat"),
                         "participant": st.get("participant")}
                        for st in s.get("streams") or ()]}


def conversation_view(call, legs):
    """A Conversation object of the API: the vendor API's fields, then what
    siprecd parsed of the call (additive): every SIPREC session of the guid
    with its streams, the participants with their AOR, name and the streams
    they send, every candidate identifier, and whether it was recorded mixed."""
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
        "mixed": bool(call.mixed),
        "identifiers": identifiers_view(call),
        "participants": [participant_view(p) for p in (call.participants or ())],
        "sessions": [_stored_session_view(s) for s in _sessions(call.sip or {})],
    }


def _stored_sessions_in_progress(call):
    """The SIP side of a call as stored (for a call on another node)."""
    return [{"callId": s.get("callId"), "transport": s.get("transport"), "phase": None,
             "startTimestamp": None,
             "streams": [{"label": st.get("label"), "audioIndex": st.get("audioIndex"),
                          "codec": st.get("codec"), "onHold": None, "role": None,
                          "streamId": None, "transcription": None,
                          "participant": st.get("participant")}
                         for st in s.get("streams") or ()],
             "transcription": None} for s in _sessions(call.sip or {})]


def call_in_progress(call, legs, live):
    """A call in progress: the stored call and its legs, with *live* (the
    node's own view of its sessions, when this node has the call; else
    what storage says, without transcription state)."""
    sessions = [dict({k: v for k, v in s.items() if k != "startTimestampMs"},
                     startTimestamp=iso_ms(s["startTimestampMs"])) for s in live] \
        if live else _stored_sessions_in_progress(call)
    return {
        "externalId": call.guid,
        "conversationId": call.conversation_id,
        "node": call.node,
        "startTimestamp": iso_ms(call.started_ms),
        "identifiers": identifiers_view(call),
        "participants": [participant_view(p) for p in (call.participants or ())],
        "mixed": bool(call.mixed),
        "sessions": sessions,
        "legs": [{"id": leg.id, "number": leg.number, "customerId": leg.customer_id,
                  "agentId": leg.agent_id} for leg in legs],
    }
