"""Where a batch's completion callback may be sent (public ``https`` addresses only), and what its
tenant is told about each attempt (a coarse outcome).

A tenant chooses ``metadata.callback_url`` and the batch worker POSTs to it, so
without a rule any tenant could make our network call loopback, private,
link-local or cloud-metadata addresses (SSRF). The rule is checked twice:

- when the batch is created (gateway): the scheme, and a host written as an IP
  address; a host name is not resolved there, since what it resolves to may
  change before delivery;
- when the batch worker connects (``worker/batch/egress.py``): every address
  the host name resolves to at that moment, so a name that pointed at a public
  address at creation and at 127.0.0.1 at delivery (DNS rebinding) is refused.

``APIINONE_CALLBACK_ALLOW_PRIVATE=true`` lifts both (``http`` and any address),
for the product's own tests; ``make run`` leaves it off.

An attempt's outcome is coarse on purpose: a refused address, a closed port and
a dead host must look alike from outside, or the callback becomes a scanner of
our network (no error text, and only an answer's status class).
"""

from __future__ import annotations

import ipaddress
import socket
from ipaddress import IPv4Address, IPv6Address
from enum import StrEnum
from urllib.parse import urlsplit

class Delivery(StrEnum):
    DELIVERED = "delivered"  # a 2xx answer
    REFUSED = "refused"  # not a public https address: nothing was sent
    FAILED = "failed"  # no answer: DNS, connection, TLS or timeout
    # any other answer: "http_<class>xx" (http_3xx, http_4xx, http_5xx), see ``status_outcome``


def status_outcome(status: int) -> str:
    return Delivery.DELIVERED if 200 <= status < 300 else f"http_{status // 100}xx"


# IPv6 prefixes that carry an IPv4 address a gateway may translate to (NAT64, RFC 6052 / RFC 8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped ::ffff:a.b.c.d, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64):
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str | IPv4Address | IPv6Address) -> bool:
    """True only for a globally routable unicast address; anything unparsable is not public."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_reserved:
        return False  # is_global alone lets some of these through (e.g. multicast 224.0.0.0/4)
    return ip.is_global


def _ip_literal(host: str) -> IPv4Address | IPv6Address | None:
    """The address a host written as one stands for, legacy IPv4 forms included (2130706433, 0x7f.1,
    127.1: what the C library would connect to)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def url_refusal(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not receive callbacks (a sentence naming the rule), or None when it may.

    A host name passes here; it is checked when the batch worker connects.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6 literal
        return "must be a valid URL"
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        return "must be an http(s) URL" if allow_private else "must be an https URL"
    if not host:
        return "must name a host"
    if allow_private:
        return None
    ip = _ip_literal(host)
    if ip is not None and not is_public_address(ip):
        return "must be a public address (not loopback, private, link-local or reserved)"
    return None
