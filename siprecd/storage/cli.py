"""``siprecd storage keygen|rekey``: keys for encryption at rest.

- ``keygen PATH`` writes a new random key (32 bytes, base64) to a new file
  of mode 0600 and prints its key id;
- ``rekey -c FILE`` re-encrypts, under the first key of
  ``storage.encryption``, every stored unredacted text (and its tokens)
  that is under another configured key or in plain form, in batches of one
  transaction each (safe while the daemon runs); then this node's finished
  recordings. Recordings are kept per node: run it on every node.

Key rotation: put the new key first (``key_files: [new, old]``), restart,
run ``rekey``, then remove the old key. See :mod:`siprecd.crypto`.
"""

from siprecd.clitools import CommandError, fail, with_storage

__all__ = ["register"]


def register(subparsers):
    storage = subparsers.add_parser("storage", help="encryption at rest: make a key, "
                                                    "re-encrypt under the first key")
    sub = storage.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    keygen = sub.add_parser("keygen", help="write a new random key to a new file (mode 0600)")
    keygen.add_argument("path", metavar="PATH", help="key file to create")
    keygen.set_defaults(func=_keygen)
    rekey = sub.add_parser("rekey", help="re-encrypt stored values and recordings under the "
                                         "first configured key")
    rekey.add_argument("-c", "--config", required=True, help="YAML configuration file")
    rekey.add_argument("--batch", type=int, default=500,
                       help="messages per transaction (default 500)")
    rekey.add_argument("--skip-recordings", action="store_true",
                       help="only the database, not this node's recordings")
    rekey.set_defaults(func=_rekey)


def _keygen(args):
    from siprecd.crypto import EncryptionKeyError, write_key_file

    try:
        kid = write_key_file(args.path)
    except EncryptionKeyError as e:
        return fail(str(e))
    print(f"wrote a new key to {args.path} (key id {kid}); add it to storage.encryption "
          "(first in key_files to encrypt with it)")
    return 0


def _rekey(args):
    async def job(reactor, config, storage):
        if args.batch < 1:
            raise CommandError("--batch must be 1 or more")
        keyring = getattr(storage, "keyring", None)
        if keyring is None:
            raise CommandError("no key is configured in storage.encryption")
        after, messages = 0, 0
        while after is not None:
            after, changed = await storage.rekey_messages(after, args.batch)
            messages += changed
        print(f"database: {messages} message(s) re-encrypted with key {keyring.primary_id}")
        if not args.skip_recordings:
            from siprecd.recordings import RecordingStore

            files = await RecordingStore.from_config(config, reactor).rekey()
            print(f"recordings: {files} file(s) re-encrypted with key {keyring.primary_id}")
        await storage.record_audit("storage.rekeyed", detail={
            "key": keyring.primary_id, "messages": messages})

    return with_storage(args.config, job)
