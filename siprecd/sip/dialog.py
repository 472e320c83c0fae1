"""SIP dialogs on the UAS side (RFC 3261 §12): identity, CSeq order,
target refresh, route set, and building the requests we send in a dialog.
"""

import random

import attrs

from siprecd.sip.message import Headers, Request, parse_name_addr, parse_uri

__all__ = ["Dialog", "OutOfOrder"]


class OutOfOrder(Exception):
    """A request's CSeq is not above the last one seen (answer 500).

    A BYE numbered like the last request is let through: SRCs that write
    the INVITE's CSeq on their BYE exist, and the BYE only ends what it
    names. One numbered below stays refused (RFC 3261 §12.2.2)."""


@attrs.define
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local: str            # our To header (name-addr), with our tag
    remote: str           # the peer's From header, with its tag
    remote_seq: int
    remote_target: str    # URI from the peer's Contact
    route_set: list       # Record-Route values, in order (UAS: as received)
    secure: bool = False
    local_seq: int = attrs.field(factory=lambda: random.randint(1, 2**20))

    @classmethod
    def from_invite(cls, request, local_tag):
        to = request.to.with_tag(local_tag)
        contact = request.headers.get("Contact")
        target = parse_name_addr(contact).uri if contact else request.from_.uri
        parse_uri(target)
        routes = list(request.headers.get_all("Record-Route"))
        for route in routes:  # refuse now what could not be routed later
            parse_uri(parse_name_addr(route).uri)
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag,
            local=str(to),
            remote=request.headers.get("From"),
            remote_seq=request.cseq[0],
            remote_target=target,
            route_set=routes,
            secure=parse_uri(request.uri).scheme == "sips",
        )

    @property
    def id(self):
        return (self.call_id, self.local_tag, self.remote_tag)

    def check_request(self, request):
        """Enforce CSeq order for a new in-dialog request (not ACK/CANCEL)."""
        number, _ = request.cseq
        if request.method in ("ACK", "CANCEL"):
            return
        if number < self.remote_seq or (number == self.remote_seq and request.method != "BYE"):
            raise OutOfOrder(f"CSeq {number} not above {self.remote_seq}")
        self.remote_seq = number

    def refresh_target(self, request):
        """re-INVITE and UPDATE may move the peer's Contact (RFC 3261 §12.2.2)."""
        contact = request.headers.get("Contact")
        if contact:
            self.remote_target = parse_name_addr(contact).uri

    def next_hop(self):
        """URI of where our in-dialog requests go first."""
        if self.route_set:
            return parse_name_addr(self.route_set[0]).uri
        return self.remote_target

    def new_request(self, method, via, contact=None, body=b"", content_type=None, extra=()):
        """A request of ours in this dialog; *via* is our Via header value."""
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and "lr" not in parse_uri(parse_name_addr(routes[0]).uri).params:
            # Strict router (RFC 3261 §12.2.1.1): it goes in the Request-URI.
            uri = parse_name_addr(routes[0]).uri
            routes = routes[1:] + [f"<{self.remote_target}>"]
        if method not in ("ACK", "CANCEL"):
            self.local_seq += 1
        headers = Headers([
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", self.local),
            ("To", self.remote),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.local_seq} {method}"),
        ])
        for route in routes:
            headers.add("Route", route)
        if contact:
            headers.add("Contact", contact)
        for name, value in extra:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", content_type or "application/sdp")
        return Request(method=method, uri=uri, headers=headers, body=body)
