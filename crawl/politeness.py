"""Politeness and safety rules of the fetcher, free of any network code.

- :class:`AddressGuard` refuses connections to addresses that are not on the
  public internet (private, loopback, link-local, multicast, reserved), unless
  the configuration allows them by host name or network. A URL can name such an
  address directly or through DNS, and a redirect can lead to one, so the
  guard is asked for every resolved address of every hop.
- :class:`HostGate` spaces the requests to one host and caps how many run at
  once; a ``Retry-After`` answer pushes the host's next start back.
- :func:`x_robots_opt_out` reads ``X-Robots-Tag`` headers, including the
  ``useragent: directive`` form that scopes directives to one crawler.
- :func:`parse_robots` and :func:`robots_verdict` wrap ``protego`` and the
  rules of RFC 9309 for answers that are not a plain robots.txt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protego import Protego

from kg.errors import ConfigError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Directives of X-Robots-Tag that carry a value after a colon; a token such as
# ``max-snippet: 20`` is a directive, not a user agent naming a scope.
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)


class PrivateAddressError(OSError):
    """A host resolved to an address the configuration does not allow.

    It derives from OSError because aiohttp wraps resolver failures that are
    OSErrors in ``ClientConnectorDNSError``, which keeps it as ``os_error``.
    """

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, which is not public")
        self.host = host
        self.address = address


class AddressGuard:
    """Decides whether the crawler may connect to an address.

    An address is refused when it is not globally routable (private, loopback,
    link-local, reserved, shared, unspecified) or is multicast, unless
    ``allow_private`` is set, the host name is in ``allow_hosts`` or the
    address lies in one of ``allow_networks``.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allow_hosts: Iterable[str] = (),
        allow_networks: Iterable[str] = (),
    ) -> None:
        self.allow_private = allow_private
        self.allow_hosts = frozenset(h.lower().strip("[]") for h in allow_hosts)
        self.allow_networks = tuple(_parse_network(n) for n in allow_networks)

    def allows(self, host: str, address: str) -> bool:
        """Whether ``host`` (as named in the URL) may be reached at ``address``."""
        if self.allow_private or host.lower().strip("[]") in self.allow_hosts:
            return True
        ip = _parse_address(address)
        if ip is None:
            return False
        if any(ip in network for network in self.allow_networks):
            return True
        return is_public(ip)

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise :class:`PrivateAddressError` unless every address is allowed."""
        for address in addresses:
            if not self.allows(host, address):
                raise PrivateAddressError(host, address)


def is_public(ip: IPAddress) -> bool:
    """Whether an address lies on the public internet and is not multicast."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def ip_literal(host: str) -> IPAddress | None:
    """The address when a URL's host is an IP literal, else None."""
    return _parse_address(host.strip("[]"))


def _parse_address(text: str) -> IPAddress | None:
    # A scoped IPv6 address (fe80::1%eth0) names its interface after a '%'.
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _parse_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(
            f"allow_networks: {text!r} is not a network; write it in CIDR form, "
            "e.g. 127.0.0.1/32 or 10.0.0.0/8"
        ) from exc


class HostGate:
    """At most ``max_concurrent`` requests to one host, starts ``delay_s`` apart.

    A request takes one of the host's slots (:meth:`slot`), then one of the
    crawl's connection slots, and only then waits for its turn on the host
    (:meth:`turn`), right before it is sent. So a slow host holds its own
    slots, never the crawl's, and the spacing holds when requests are sent: a
    turn taken before waiting for a crawl-wide slot would let requests whose
    turns were spaced leave together once slots free up.

    Turns are kept without a lock: a waiter books the next free time (so
    waiters wake one delay apart, in order of arrival), and on waking checks
    the time since the host's last start, which a late wake-up or a
    ``Retry-After`` may have moved, sleeping again when it is too soon.
    """

    def __init__(self, max_concurrent: int, delay_s: float) -> None:
        self._slots = asyncio.Semaphore(max_concurrent)
        self._delay_s = delay_s
        self._booked = -math.inf  # the latest time booked for a start
        self._last_start = -math.inf  # when the latest request started
        self._not_before = -math.inf  # nothing starts before this (Retry-After)

    def slot(self) -> asyncio.Semaphore:
        """One of the host's connection slots: ``async with gate.slot():``."""
        return self._slots

    async def turn(self) -> None:
        """Wait until a request may start on this host; it counts as started
        when this returns."""
        now = time.monotonic()
        booked = max(now, self._booked + self._delay_s)
        self._booked = booked
        while True:
            start = max(booked, self._last_start + self._delay_s, self._not_before)
            if start <= now:
                break
            await asyncio.sleep(start - now)
            now = time.monotonic()
        self._last_start = now

    def slow_down(self, delay_s: float) -> None:
        """Raise the spacing between starts (a robots.txt Crawl-delay)."""
        self._delay_s = max(self._delay_s, delay_s)

    def defer(self, wait_s: float) -> None:
        """Start nothing on this host for ``wait_s`` seconds (a Retry-After)."""
        self._not_before = max(self._not_before, time.monotonic() + wait_s)


def x_robots_opt_out(
    values: Iterable[str], agent: str, directives: Iterable[str]
) -> str | None:
    """The first opt-out directive of X-Robots-Tag header lines that binds us.

    ``values`` are the header lines as received (one per header); ``agent`` is
    the crawler's product token (``kgclip``). A line may start with
    ``useragent:``, and its directives then bind only that agent; ``*`` or no
    agent binds everyone. Returns the directive found (``noai``, ...) or None.
    """
    wanted = {d.lower() for d in directives}
    agent = agent.lower()
    for value in values:
        scope = "*"
        for token in value.split(","):
            token = token.strip().lower()
            name, colon, rest = token.partition(":")
            if colon and name.strip() not in _VALUED_DIRECTIVES:
                # "otherbot: noindex": a new scope, then its first directive
                scope, token = name.strip(), rest.strip()
            if scope in ("*", agent) and token in wanted:
                return token
    return None


@dataclass(frozen=True)
class RobotsVerdict:
    """What a host's robots.txt answer means for the crawler.

    ``rules`` is the parsed file, None when the answer allows or refuses all
    (then ``allow_all`` says which); ``error`` names why all is refused.
    """

    rules: Protego | None
    allow_all: bool
    error: str | None = None

    def allowed(self, url: str, agent: str) -> bool:
        if self.rules is None:
            return self.allow_all
        return bool(self.rules.can_fetch(url, agent))

    def crawl_delay_s(self, agent: str) -> float | None:
        if self.rules is None:
            return None
        delay = self.rules.crawl_delay(agent)
        return float(delay) if delay is not None else None


ALLOW_ALL = RobotsVerdict(rules=None, allow_all=True)


def robots_verdict(status: int, body: bytes) -> RobotsVerdict:
    """Turn the answer to ``/robots.txt`` into rules, following RFC 9309.

    ``status`` is 0 when no answer came. A 2xx answer is parsed; 4xx means
    there are no rules (all allowed); a 5xx, 429 or no answer means the host
    is unreachable, and the RFC asks a crawler to assume everything is
    disallowed then (error ``robots_unreachable``).
    """
    if 200 <= status < 300:
        return parse_robots(body)
    if 400 <= status < 500 and status != 429:
        return ALLOW_ALL
    return RobotsVerdict(rules=None, allow_all=False, error="robots_unreachable")


# RFC 9309 lets a crawler stop reading robots.txt after 500 KiB.
ROBOTS_MAX_BYTES = 500 * 1024


def parse_robots(body: bytes) -> RobotsVerdict:
    """Parse a robots.txt body (its first 500 KiB, as RFC 9309 allows)."""
    text = body[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
    return RobotsVerdict(rules=Protego.parse(text), allow_all=True)


def product_token(user_agent: str) -> str:
    """The crawler's name in a User-Agent (``kgclip`` of ``kgclip/0.1 (...)``)."""
    return user_agent.split("/", 1)[0].split()[0].strip().lower()


def as_tuple(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """A config list as a tuple; a lone string counts as a list of one."""
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(str(v) for v in values)
