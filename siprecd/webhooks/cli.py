"""``siprecd webhooks dead-letters|replay|enable|status``: the outbox by hand.

- ``dead-letters`` lists deliveries siprecd gave up on (after
  ``max_attempts``, or refused for good by the receiver), oldest first;
- ``replay`` makes dead letters (all, one target's, or by id) pending
  again, with a fresh attempt count; the daemon picks them up at its next
  poll;
- ``enable`` re-enables a target that answered 410 Gone: its waiting
  deliveries become due at once;
- ``status`` shows each target: enabled or disabled, deliveries waiting
  (pending, retrying or parked; how old the oldest is), dead letters.

The state of disabled targets is per node (a file in ``state_dir``): run
``enable`` on every node that disabled the target. Every change is
written to the audit log.
"""

import json

from siprecd.clitools import CommandError, with_storage
from siprecd.messages import iso_ms

__all__ = ["register"]


def register(subparsers):
    hooks = subparsers.add_parser("webhooks", help="webhook deliveries: dead letters, "
                                                   "replay, disabled targets")
    sub = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")

    def add(name, help_, func):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", required=True, help="YAML configuration file")
        p.set_defaults(func=func)
        return p

    dead = add("dead-letters", "list deliveries that were given up on, oldest first",
               _dead_letters)
    dead.add_argument("--target", "-t", metavar="NAME", help="only this webhook target")
    dead.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    dead.add_argument("--json", action="store_true", help="print JSON lines")
    replay = add("replay", "deliver dead letters again (all, one target's, or by id)", _replay)
    replay.add_argument("--target", "-t", metavar="NAME", help="only this webhook target")
    replay.add_argument("ids", nargs="*", type=int, metavar="ID",
                        help="outbox ids (from dead-letters); none: every dead letter")
    enable = add("enable", "re-enable a target disabled by 410 Gone", _enable)
    enable.add_argument("name", metavar="NAME", help="webhook target name")
    status = add("status", "show each target's state and dead letters", _status)
    status.add_argument("--json", action="store_true", help="print JSON")


def _check_target(config, name, states=None):
    known = set(config.webhooks.targets)
    if states is not None:
        known |= set(states.read())
    if name not in known:
        have = ", ".join(sorted(config.webhooks.targets)) or "none configured"
        raise CommandError(f"no webhook target {name!r} in webhooks.targets ({have})")


def _states(config):
    from siprecd.webhooks.state import TargetStates

    return TargetStates.for_config(config)


def _item_row(item):
    m = item.message
    return {"id": item.id, "target": item.target, "messageId": m.id, "guid": m.guid,
            "streamId": m.stream_id, "sequence": m.sequence, "attempts": item.attempts,
            "created": iso_ms(item.created_ms), "lastError": item.last_error}


def _dead_letters(args):
    async def job(reactor, config, storage):
        if args.limit < 1:
            raise CommandError("--limit must be 1 or more")
        items = await storage.dead_letters(target=args.target, limit=args.limit)
        for item in items:
            row = _item_row(item)
            if args.json:
                print(json.dumps(row))
            else:
                print(f"{row['id']}  {row['target']}  {row['created']}  "
                      f"attempts={row['attempts']}  guid={row['guid']}  "
                      f"stream={row['streamId']}#{row['sequence']}  {row['lastError'] or ''}"
                      .rstrip())
        if not items and not args.json:
            print("no dead letters" + (f" for {args.target}" if args.target else ""))

    return with_storage(args.config, job)


def _replay(args):
    async def job(reactor, config, storage):
        ids = list(dict.fromkeys(args.ids)) or None
        count = await storage.replay(ids=ids, target=args.target)
        if ids and count == 0:
            raise CommandError("none of the given ids is a dead letter"
                               + (f" of {args.target}" if args.target else "")
                               + " (see `siprecd webhooks dead-letters`)")
        await storage.record_audit("webhook.replayed", detail={
            "target": args.target, "ids": ids, "count": count})
        print(f"replayed {count} dead letter{'s' if count != 1 else ''}"
              + (f" (of {len(ids)} ids given)" if ids and count != len(ids) else ""))

    return with_storage(args.config, job)


def _enable(args):
    from siprecd.webhooks.state import StateFileError

    async def job(reactor, config, storage):
        states = _states(config)
        try:
            _check_target(config, args.name, states)
            was_disabled, parked = states.enable(args.name)
        except StateFileError as e:
            raise CommandError(str(e)) from None
        now = int(reactor.seconds() * 1000)
        for outbox_id in parked:
            await storage.mark_failed(outbox_id, now, f"target {args.name} re-enabled")
        if not was_disabled:
            print(f"webhook target {args.name} is not disabled"
                  + (f"; {len(parked)} waiting deliveries are due again" if parked else ""))
            return
        await storage.record_audit("webhook.target_enabled",
                                   detail={"target": args.name, "released": len(parked)})
        print(f"enabled webhook target {args.name}; {len(parked)} waiting deliveries are due "
              f"again (a running siprecd sends them within webhooks.poll_interval)")

    return with_storage(args.config, job)


def _status(args):
    from siprecd.webhooks.auth import scrub_url
    from siprecd.webhooks.state import StateFileError

    async def job(reactor, config, storage):
        try:
            stored = _states(config).read()
        except StateFileError as e:
            raise CommandError(str(e)) from None
        counts = await storage.outbox_counts()
        rows = []
        for name in sorted(set(config.webhooks.targets) | set(stored) | set(counts)):
            target = config.webhooks.targets.get(name)
            entry = stored.get(name, {})
            count = counts.get(name, {})
            secret = target.secret.query_parameter if target and target.secret else None
            rows.append({
                "target": name,
                "url": scrub_url(target.url, [secret] if secret else []) if target else None,
                "configured": target is not None,
                "disabled": bool(entry.get("disabled")),
                "disabledSince": iso_ms(entry.get("since_ms")) if entry.get("disabled") else None,
                "reason": entry.get("reason") if entry.get("disabled") else None,
                # Every delivery not yet made: pending, retrying, parked
                # behind a disabled target, or being sent now.
                "waiting": count.get("waiting", 0),
                "inFlight": count.get("inFlight", 0),
                "parked": len(entry.get("parked", ())),
                "oldestWaiting": iso_ms(count.get("oldestWaitingMs")),
                "deadLetters": count.get("dead", 0),
            })
        if args.json:
            print(json.dumps({"targets": rows}))
            return
        if not rows:
            print("no webhook targets configured")
        for r in rows:
            state = f"DISABLED since {r['disabledSince']} ({r['reason']})" if r["disabled"] \
                else "enabled"
            if not r["configured"]:
                state += ", not in webhooks.targets"
            oldest = f"  oldest waiting since {r['oldestWaiting']}" if r["oldestWaiting"] else ""
            print(f"{r['target']}  {r['url'] or '-'}  {state}  waiting={r['waiting']}  "
                  f"parked={r['parked']}  dead={r['deadLetters']}{oldest}")

    return with_storage(args.config, job)
