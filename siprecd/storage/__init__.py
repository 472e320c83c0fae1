"""Everything siprecd keeps, behind ``siprecd.interfaces.IStorage``.

Two backends ship with siprecd: ``sqlite`` (the default, one file under
the state directory) and ``postgresql`` (several nodes sharing one
database). Backends are found by name through the ``siprecd.storage``
entry point group (``siprecd.storage.backends``); the schema lives in
versioned migrations per dialect (``siprecd/storage/migrations``).
Times are integer milliseconds since the UNIX epoch, UTC.

Outside the daemon (the CLI)::

    storage = create_storage(config, reactor)
    await storage.open()
    ...
    await storage.close()
"""

from siprecd.storage.backends import available, create_storage
from siprecd.storage.records import (
    App, AuditEntry, Call, ExportRun, Leg, Message, NodeInfo, OutboxItem, PurgeResult, Stream,
)
from siprecd.storage.service import StorageService

__all__ = [
    "available", "create_storage", "StorageService",
    "App", "AuditEntry", "Call", "ExportRun", "Leg", "Message", "NodeInfo", "OutboxItem",
    "PurgeResult", "Stream",
]
