"""``siprecd apps create|list|revoke|rotate``: API credentials.

Each app is an API id and secret bound to one webhook target (a name under
``webhooks.targets``): the transcripts of calls it starts go there. The
secret is printed once, by ``create`` and ``rotate``; only a salted hash
is stored. Every change is written to the audit log.

Also ``siprecd calls`` (the calls in progress, from storage: every node
sharing it) and ``siprecd drain`` (a running node refuses new calls).
"""

import json

from siprecd.clitools import CommandError, with_storage
from siprecd.messages import iso_ms

__all__ = ["register", "local_api_url"]

# Listening on every address of a family: reach the node over loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def register(subparsers):
    apps = subparsers.add_parser("apps", help="manage API credentials (apps)")
    sub = apps.add_subparsers(dest="apps_command", required=True, metavar="ACTION")

    def add(name, help_, func):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", required=True, help="YAML configuration file")
        p.set_defaults(func=func)
        return p

    create = add("create", "create an app; prints its id and secret (shown once)", _create)
    create.add_argument("--webhook-target", "-w", metavar="NAME",
                        help="webhook target (webhooks.targets) for this app's transcripts; "
                             "may be left out only when no target is configured or exactly "
                             "one is")
    create.add_argument("--label", "-l", help="a note for operators (who the app is for)")
    create.add_argument("--json", action="store_true", help="print JSON")
    listing = add("list", "list apps (never their secrets)", _list)
    listing.add_argument("--all", action="store_true", help="include revoked apps")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    revoke = add("revoke", "revoke an app: its requests are refused from now on", _revoke)
    revoke.add_argument("api_id")
    rotate = add("rotate", "give an app a new secret (the old one stops working)", _rotate)
    rotate.add_argument("api_id")
    rotate.add_argument("--json", action="store_true", help="print JSON")

    calls = subparsers.add_parser(
        "calls", help="list the SIPREC calls in progress (on every node sharing the storage)")
    calls.add_argument("-c", "--config", required=True, help="YAML configuration file")
    calls.add_argument("--json", action="store_true", help="print JSON")
    calls.set_defaults(func=_calls)

    drain = subparsers.add_parser(
        "drain", help="make a running node refuse new calls while its calls finish")
    drain.add_argument("-c", "--config", required=True, help="the node's YAML configuration")
    drain.add_argument("--url", help="the node's API (default: where api.host and api.port "
                                      "say it listens; loopback when api.host is 0.0.0.0 or ::)")
    drain.set_defaults(func=_drain)


def _calls(args):
    from siprecd.api.views import call_in_progress

    async def job(reactor, config, storage):
        calls = await storage.active_calls()
        legs = [await storage.legs_for_guid(call.guid) for call in calls]
        shown = [call_in_progress(call, call_legs, ()) for call, call_legs in zip(calls, legs)]
        if args.json:
            print(json.dumps({"calls": shown}))
            return
        if not shown:
            print("no calls in progress")
        for call in shown:
            ids = ", ".join(f"{i['source']}={i['value']}" for i in call["identifiers"])
            print(f"{call['externalId']}  node {call['node']}  since {call['startTimestamp']}"
                  f"{'  mixed' if call['mixed'] else ''}")
            print(f"    identifiers: {ids or '-'}")
            for p in call["participants"]:
                name = f" ({p['name']})" if p["name"] else ""
                print(f"    participant {', '.join(p['aors']) or p['id']}{name} "
                      f"sends {', '.join(p['sendsLabels']) or 'nothing'}")
            for session in call["sessions"]:
                for s in session["streams"]:
                    print(f"    stream {s['label'] or '-'} (m-line {s['audioIndex']}) "
                          f"{s['codec'] or '-'}  Call-ID {session['callId']}")
            for leg in call["legs"]:
                print(f"    leg {leg['number']}: customer {leg['customerId']}, "
                      f"agent {leg['agentId']}")

    return with_storage(args.config, job)


def _target(config, wanted):
    targets = sorted(config.webhooks.targets)
    if wanted is None:
        if len(targets) > 1:
            raise CommandError(
                f"--webhook-target is required: webhooks.targets has {', '.join(targets)}")
        return targets[0] if targets else None
    if wanted not in config.webhooks.targets:
        have = ", ".join(targets) or "none configured"
        raise CommandError(f"no webhook target {wanted!r} in webhooks.targets ({have})")
    return wanted


def _create(args):
    async def job(reactor, config, storage):
        target = _target(config, args.webhook_target)
        app, secret = await storage.create_app(target, label=args.label)
        await storage.record_audit("app.created", app_id=app.api_id,
                                   detail={"webhook_target": target, "label": args.label})
        if args.json:
            print(json.dumps({"apiId": app.api_id, "apiSecret": secret,
                              "webhookTarget": target, "label": args.label}))
        else:
            h = config.api
            print(f"{h.id_header}: {app.api_id}")
            print(f"{h.secret_header}: {secret}")
            print(f"webhook target: {target or '(none)'}")
            print("The secret is shown only now; keep it safe.")

    return with_storage(args.config, job)


def _list(args):
    async def job(reactor, config, storage):
        apps = await storage.list_apps(include_revoked=args.all)
        for app in apps:
            row = {"apiId": app.api_id, "webhookTarget": app.webhook_target,
                   "label": app.label, "created": iso_ms(app.created_ms),
                   "rotated": iso_ms(app.rotated_ms), "revoked": iso_ms(app.revoked_ms)}
            if args.json:
                print(json.dumps(row))
            else:
                state = f"revoked {row['revoked']}" if app.revoked_ms else "active"
                print(f"{app.api_id}  {app.webhook_target or '-'}  {state}  "
                      f"created {row['created']}  {app.label or ''}".rstrip())
        if not apps and not args.json:
            print("no apps")

    return with_storage(args.config, job)


def _revoke(args):
    async def job(reactor, config, storage):
        if not await storage.revoke_app(args.api_id):
            raise CommandError(f"no active app {args.api_id!r}")
        await storage.record_audit("app.revoked", app_id=args.api_id)
        print(f"revoked {args.api_id}")

    return with_storage(args.config, job)


def _rotate(args):
    from siprecd.interfaces import RecordNotFound

    async def job(reactor, config, storage):
        try:
            secret = await storage.rotate_app_secret(args.api_id)
        except RecordNotFound:
            raise CommandError(f"no active app {args.api_id!r}") from None
        await storage.record_audit("app.rotated", app_id=args.api_id)
        if args.json:
            print(json.dumps({"apiId": args.api_id, "apiSecret": secret}))
        else:
            print(f"{config.api.id_header}: {args.api_id}")
            print(f"{config.api.secret_header}: {secret}")
            print("The new secret is shown only now; the old one no longer works.")

    return with_storage(args.config, job)


def local_api_url(config):
    """The node's API where it listens (``api.host``, ``api.port``), from
    the node's own machine."""
    host = _WILDCARDS.get(config.api.host, config.api.host)
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"https://{host}:{config.api.port}"


def _drain(args):
    """POST /internal/v1/drain to the node, with the cluster secret."""
    import ssl
    import urllib.error
    import urllib.request

    from siprecd.api.forward import SECRET_HEADER
    from siprecd.clitools import EXIT_CONFIG, fail, load_config
    from siprecd.config import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as e:
        return fail(str(e), EXIT_CONFIG)
    if not config.cluster.secret:
        return fail("cluster.secret is not set; set it, or send SIGUSR1 to the daemon "
                    "(e.g. systemctl kill -s USR1 siprecd)")
    url = (args.url or local_api_url(config)).rstrip("/")
    trust = (config.cluster.ca_bundle or config.api.certificate
             or config.state_dir / "tls" / "api-selfsigned.crt")
    context = ssl.create_default_context(cafile=str(trust))
    # The certificate is checked against the CA; the name may be the
    # node's public one rather than the loopback address used here.
    context.check_hostname = False
    request = urllib.request.Request(f"{url}/internal/v1/drain", data=b"{}", method="POST",
                                     headers={SECRET_HEADER: config.cluster.secret,
                                              "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except Exception:
            message = e.reason
        return fail(f"{url}: {e.code} {message}")
    except (urllib.error.URLError, OSError) as e:
        return fail(f"cannot reach {url}: {getattr(e, 'reason', e)}")
    print(f"draining: new calls are refused; {answer.get('calls', 0)} calls in progress")
    return 0
