"""Talking to a running daemon's HTTPS API from tests and benches.

:func:`create_app` runs ``siprecd apps create`` as a user would;
:class:`ApiClient` is a small blocking client (for a daemon in another
process) that verifies the server certificate against a given CA file.
"""

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import attrs

__all__ = ["create_app", "ApiClient", "Answer"]

SIPRECD = str(Path(sys.executable).parent / "siprecd")


def create_app(config_path, target=None, label=None, env=None):
    """``(api_id, secret)`` of a new app, made with the CLI (*env*: more
    environment variables, e.g. those the config takes values from)."""
    args = [SIPRECD, "apps", "create", "-c", str(config_path), "--json"]
    if target:
        args += ["--webhook-target", target]
    if label:
        args += ["--label", label]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60,
                         env=None if env is None else {**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(f"siprecd apps create failed: {out.stderr.strip()}")
    made = json.loads(out.stdout)
    return made["apiId"], made["apiSecret"]


@attrs.frozen
class Answer:
    status: int
    body: object
    headers: dict

    @property
    def code(self):
        """The error code of an error envelope, or None."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("code")
        return None


@attrs.define
class ApiClient:
    port: int
    cafile: Path
    api_id: str | None = None
    secret: str | None = None
    host: str = "127.0.0.1"
    id_header: str = "asapp-api-id"
    secret_header: str = "asapp-api-secret"
    timeout: float = 30.0

    def request(self, method, path, body=None, headers=None, raw=None):
        context = ssl.create_default_context(cafile=str(self.cafile))
        # The development certificate names the host, not 127.0.0.1.
        context.check_hostname = False
        sent = {"content-type": "application/json"}
        if self.api_id is not None:
            sent[self.id_header] = self.api_id
        if self.secret is not None:
            sent[self.secret_header] = self.secret
        sent.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(f"https://{self.host}:{self.port}{path}", data=data,
                                     method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, context=context, timeout=self.timeout) as r:
                status, payload, got = r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, payload, got = e.code, e.read(), dict(e.headers)
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload
        return Answer(status, parsed, {k.lower(): v for k, v in got.items()})

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, body=None, **kwargs):
        return self.request("POST", path, body=body, **kwargs)

    def start(self, guid, customer="cust-1", agent="agent-1", **fields):
        body = {"namespace": "siprec", "guid": guid, "customerId": customer, "agentId": agent}
        body.update(fields)
        return self.post("/mg-autotranscribe/v1/start-streaming", body)

    def stop(self, guid):
        return self.post("/mg-autotranscribe/v1/stop-streaming",
                         {"namespace": "siprec", "guid": guid})
