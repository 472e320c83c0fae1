"""The Klein resource tree of the HTTPS API."""

import json

from klein import Klein

__all__ = ["ControlApi"]


class ControlApi:
    """Routes of the API; one instance per daemon."""

    app = Klein()

    def __init__(self, readiness, node_name):
        self.readiness = readiness
        self.node_name = node_name

    def resource(self):
        return self.app.resource()

    @app.route("/v1/health", methods=["GET"])
    def health(self, request):
        pending = self.readiness.pending()
        ready = not pending
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"content-type", b"application/json")
        body = {
            "healthCheck": "SUCCESS" if ready else "FAILURE",
            "ready": ready,
            "node": self.node_name,
            "pending": pending,
        }
        return json.dumps(body).encode()
