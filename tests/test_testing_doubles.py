"""The shipped storage and SIP doubles of siprecd.testing (plug-in authors
use them too): each offers the interface of the part it stands in for.
(The ASR doubles are checked in test_asr_testing.py, HeldCallListener in
test_siprec_server.py.)"""

import inspect

import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from siprecd.interfaces import IStorage
from siprecd.sip.transport import Transports
from siprecd.storage.records import Call
from siprecd.storage.sqlite import SqliteStorage
from siprecd.testing.doubles import GatedStorage, SentMessages


@pytest_twisted.ensureDeferred
async def test_gated_storage_is_an_istorage_whose_held_calls_wait_for_release(tmp_path):
    storage = SqliteStorage(reactor, tmp_path / "db.sqlite")
    await storage.open()
    try:
        gated = GatedStorage(storage)
        verifyObject(IStorage, gated)

        arrived = gated.hold("upsert_call")
        stored = gated.upsert_call(Call("g-1", "c1", "node-a", 1))
        assert await arrived == 1
        assert not stored.called
        assert await storage.get_call_by_guid("g-1") is None

        gated.release("upsert_call")
        await stored
        assert (await gated.get_call_by_guid("g-1")).call_id == "c1"
    finally:
        await storage.close()


def test_sent_messages_takes_what_transports_send_takes():
    assert (list(inspect.signature(SentMessages.send).parameters)
            == list(inspect.signature(Transports.send).parameters))
    wire = SentMessages()
    wire.send("udp", "127.0.0.1", 5060, b"OPTIONS sip:srs@127.0.0.1 SIP/2.0\r\n"
              b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\nFrom: <sip:a@b>;tag=1\r\n"
              b"To: <sip:srs@127.0.0.1>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
              b"Content-Length: 0\r\n\r\n")
    (message,) = wire.pop()
    assert message.method == "OPTIONS"
    assert wire.pop() == []
