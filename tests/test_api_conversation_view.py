"""What the API's Conversation shows of what siprecd parsed (additive fields)."""

from siprecd.api.app import conversation_view
from siprecd.storage.records import Call


def test_the_view_shows_sessions_participants_identifiers_and_the_mixed_flag():
    sip = {"callId": "a@h", "transport": "TCP", "sessions": [
        {"callId": "a@h", "transport": "TCP", "sessionId": None, "metadataDialect": "broadworks",
         "delayedOffer": False, "mixed": False,
         "streams": [{"label": "1", "audioIndex": 0, "codec": "G722", "seat": 0,
                      "participant": {"id": "p1", "aor": "sip:c@h", "name": "Caller"}},
                     {"label": "3", "audioIndex": 2, "codec": "PCMU", "seat": None,
                      "participant": None}]},
        {"callId": "b@h", "transport": "UDP", "delayedOffer": True, "streams": []}]}
    call = Call("g", "a@h", "n", 0, identifiers=[
        {"source": "broadworks-tracking-id", "value": "1:1", "raw": "1:1"},
        {"source": "call-id", "value": "a@h", "raw": "a@h"}],
        sip=sip, participants=[{"id": "p1", "aors": ["sip:c@h"], "name": "Caller",
                                "sends": ["s1"], "receives": [], "labels": ["1"],
                                "callId": "a@h", "left": True}],
        mixed=False, conversation_id="cid")
    view = conversation_view(call, [])
    # The vendor API's fields are still there, unchanged.
    assert {"id", "externalId", "timestamp", "endTimestamp", "status", "customer", "agents",
            "legs"} <= set(view)
    assert view["mixed"] is False
    assert view["identifiers"] == [{"source": "broadworks-tracking-id", "value": "1:1"},
                                   {"source": "call-id", "value": "a@h"}]
    assert view["participants"] == [{"id": "p1", "aors": ["sip:c@h"], "name": "Caller",
                                     "sendsLabels": ["1"], "callId": "a@h", "left": True}]
    first, second = view["sessions"]
    assert first["metadataDialect"] == "broadworks" and second["delayedOffer"] is True
    assert [(s["label"], s["codec"], s["seat"]) for s in first["streams"]] == [
        ("1", "G722", 0), ("3", "PCMU", None)]
    assert first["streams"][0]["participant"]["aor"] == "sip:c@h"


def test_a_call_stored_before_sessions_were_listed_shows_its_one_session():
    call = Call("g", "a@h", "n", 0, sip={"callId": "a@h", "transport": "UDP", "streams": []},
                conversation_id="cid")
    assert [s["callId"] for s in conversation_view(call, [])["sessions"]] == ["a@h"]
