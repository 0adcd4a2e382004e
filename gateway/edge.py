"""What the gateway believes about the hops in front of it: the client's address, the scheme, HSTS.

A header a client can write is evidence only when the peer that passed it on is
one of our own proxies (``APIINONE_TRUSTED_PROXIES``, addresses or CIDRs). So:

* the client's address is the peer, or, from a trusted proxy, the right-most
  ``X-Forwarded-For`` entry that is not itself a trusted proxy (entries to its
  left were written by whoever connected to that proxy);
* the scheme clients use comes from ``APIINONE_PUBLIC_BASE_URL`` when it is set,
  so a TLS load balancer in front of a plain-http proxy still gets ``Secure``
  cookies; unset, it is the connection's own, or a trusted proxy's
  ``X-Forwarded-Proto``;
* when that URL is https, every answer carries ``Strict-Transport-Security``
  (and every answer ``X-Content-Type-Options: nosniff``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from shared.settings import Settings

HSTS = "max-age=31536000; includeSubDomains"  # one year: browsers refuse plain http to this host meanwhile
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class Edge:
    trusted: tuple[Network, ...] = ()
    public_https: bool | None = None  # None: no public URL configured

    @classmethod
    def from_settings(cls, settings: Settings) -> Edge:
        nets = tuple(ipaddress.ip_network(n.strip(), strict=False)
                     for n in settings.trusted_proxies.split(",") if n.strip())
        base = settings.public_base_url
        return cls(nets, None if not base else base.lower().startswith("https://"))

    def is_trusted(self, text: str | None) -> bool:
        address = _address(text or "")
        return address is not None and any(address in net for net in self.trusted)

    def client_address(self, request: web.Request) -> str:
        """The client's address, for per-client throttling."""
        peer = request.remote or "unknown"
        if not self.is_trusted(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
        for hop in reversed(hops):
            if _address(hop) is None:
                return peer  # a hop our proxy did not write: believe none of it
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def is_https(self, request: web.Request) -> bool:
        """Whether clients reach us over https (cookies' ``Secure`` flag)."""
        if self.public_https is not None:
            return self.public_https
        if request.secure:
            return True
        return self.is_trusted(request.remote) and request.headers.get("X-Forwarded-Proto", "").lower() == "https"

    @property
    def hsts(self) -> bool:
        return bool(self.public_https)


EDGE = web.AppKey("edge", Edge)


def edge(request: web.Request) -> Edge:
    return request.config_dict[EDGE]


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: on every answer, no content sniffing; HSTS when the public URL is https."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if edge(request).hsts:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
