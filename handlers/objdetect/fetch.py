"""Fetch an image URL without letting the URL reach what it should not (SSRF).

On AWS, http://169.254.169.254 and http://169.254.170.2 hand out credentials, and loopback
reaches TorchServe's own management API. So, for the URL and every redirect:
- only http and https, only allowed hosts when the operator lists them;
- no spaces, control characters or credentials in the URL, and a host that is a DNS name (an
  internationalised one IDNA-encoded) or an IPv6 literal: what is resolved, sent in the Host
  header and checked in TLS is that one ASCII name;
- the host is resolved once and *every* address must be public (or in a network the operator
  trusts), whatever the spelling: 2130706433, 0x7f000001, 127.1 and ::ffff:127.0.0.1 all
  resolve to loopback and are refused. Public means outside every block of IANA's
  special-purpose address registries (special_addresses.py) and, for IPv6, inside 2000::/3;
  a NAT64 address (64:ff9b::/96) is judged by the IPv4 address it carries;
- the connection goes to the address that was checked (the host name only travels in the
  Host header and TLS SNI/certificate check), so DNS cannot answer differently a moment later;
- at most `max_redirects` redirects, each checked like the first;
- connect, read and total timeouts, and a size cap enforced while the body streams in.
The body stays in memory: nothing is written to disk.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import idna
import requests
import urllib3
from requests.adapters import HTTPAdapter

from .errors import RequestError
from .special_addresses import IPV4_SPECIAL_PURPOSE, IPV6_SPECIAL_PURPOSE, SpecialPurposeBlock

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
_CHUNK = 64 * 1024
_MAX_URL_CHARS = 8192  # web servers answer 414 to longer request lines; and it bounds every message quoting a URL
_HOST_LABEL = re.compile(r"[a-z0-9_-]{1,63}")  # a DNS label as hosts spell it (underscores do occur)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
# IANA's "Globally Reachable", as a refusal says it. True is refused too: no image host is at an anycast relay or AS112.
_REACHABILITY = {False: "not globally reachable", None: "not globally reachable (IANA: N/A)",
                 True: "reserved for that use"}


@dataclass(frozen=True)
class FetchPolicy:
    """What an image URL may reach, and how long and how many bytes a fetch may take
    (the operator's settings: Settings.fetch_policy)."""

    max_bytes: int
    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float
    max_redirects: int
    allowed_hosts: tuple[str, ...]  # empty: any public host
    trusted_networks: tuple[IPNetwork, ...]  # private networks fetched from all the same


def system_resolver(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def fetch_image(url: str, policy: FetchPolicy, resolver: Resolver = system_resolver,
                verify: bool | str = True) -> bytes:
    """The body at `url`, or RequestError saying why it was refused or could not be fetched."""
    deadline = time.monotonic() + policy.total_timeout_s
    with requests.Session() as session:
        session.trust_env = False  # no proxies or .netrc from the environment: we connect where we checked
        for _ in range(policy.max_redirects + 1):
            target = checked_target(url, policy, resolver)
            session.mount(f"{target.scheme}://", _PinnedHostAdapter(target.hostname))
            try:
                response = session.get(
                    target.pinned_url,
                    # identity: a compressed body could expand past the cap faster than it arrives
                    headers={"Host": target.netloc, "Accept": "image/*", "Accept-Encoding": "identity",
                             "User-Agent": "objdetect"},
                    timeout=(policy.connect_timeout_s, policy.read_timeout_s),
                    allow_redirects=False, stream=True, verify=verify,
                )
            except requests.RequestException as error:
                raise RequestError("url_fetch_failed", f"could not fetch {url}: {_reason(error)}") from None
            except ValueError as error:
                # What requests does not wrap: a request it cannot encode, or a redirect's Location it cannot
                # parse (it reads that inside get, even with allow_redirects=False)
                raise RequestError("url_refused", f"cannot request {url} or follow its redirect: {error}") from None
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code != 200:
                    raise RequestError("url_fetch_failed", f"{url} answered HTTP {response.status_code}")
                return _read_capped(response, url, policy, deadline)
    raise RequestError("url_refused", f"more than {policy.max_redirects} redirects, the last to {url}")


class Target(NamedTuple):
    scheme: str
    hostname: str  # for TLS: SNI and the certificate check
    netloc: str  # for the Host header
    pinned_url: str  # the URL with the checked address in place of the host name


def checked_target(url: str, policy: FetchPolicy, resolver: Resolver) -> Target:
    parts, host, port = _parsed(url)
    if policy.allowed_hosts and not _host_allowed(host, policy.allowed_hosts):
        raise RequestError("url_refused", f"host {host!r} is not in this service's allowed hosts")
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as error:
        raise RequestError("url_fetch_failed", f"cannot resolve host {host!r}: {error}") from None
    if not addresses:
        raise RequestError("url_fetch_failed", f"host {host!r} has no address")
    for text in addresses:
        problem = address_problem(ipaddress.ip_address(text.split("%")[0]), policy.trusted_networks)
        if problem:
            shown = host if host == text else f"{host!r} resolves to {text}, which"
            raise RequestError("url_refused", f"URL refused: {shown} is {problem}; only public addresses are fetched")
    address = ipaddress.ip_address(addresses[0].split("%")[0])
    literal = f"[{address}]" if address.version == 6 else str(address)
    pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    named = f"[{host}]" if ":" in host else host
    return Target(parts.scheme, host, named if parts.port is None else f"{named}:{port}", pinned)


def _parsed(url: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, its host as it is resolved and sent (ASCII) and its port; or RequestError
    url_refused for whatever an http(s) image URL has no business carrying."""
    if len(url) > _MAX_URL_CHARS:
        raise RequestError("url_refused", f"the URL {_quoted(url)} is longer than {_MAX_URL_CHARS} characters")
    if any(char <= " " or char == "\x7f" for char in url):
        # urlsplit silently drops tabs and newlines, http.client refuses them: neither may decide what is fetched
        raise RequestError("url_refused", f"the URL {_quoted(url)} contains spaces or control characters; "
                                          "percent-encode them")
    try:
        url.encode("utf-8")  # a lone surrogate (JSON allows "\ud800") cannot be percent-encoded
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RequestError("url_refused", f"the URL {_quoted(url)} is malformed: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise RequestError("url_refused", f"only http and https URLs are fetched, not {parts.scheme or 'scheme-less'!r} ones")
    if not parts.hostname:
        raise RequestError("url_refused", f"the URL {_quoted(url)} has no host")
    if "@" in parts.netloc:
        raise RequestError("url_refused", f"the URL {_quoted(url)} has a user name or password before its host: "
                                          "credentials are never sent, and 'name@' can disguise the real host")
    if port == 0:
        raise RequestError("url_refused", f"the URL {_quoted(url)} names port 0, which cannot be connected to")
    default_port = 443 if parts.scheme == "https" else 80
    return parts, _ascii_host(parts), default_port if port is None else port


def _ascii_host(parts: SplitResult) -> str:
    """The one ASCII spelling of the URL's host that is resolved, sent in the Host header and checked in TLS."""
    host = parts.hostname
    if parts.netloc.startswith("["):  # urlsplit has checked the brackets, but lets IPvFuture ([v1.x]) through
        if "%" in host or not _is_ipv6(host):
            raise RequestError("url_refused",
                               f"the bracketed host {_quoted(host)} is not an IPv6 address without a zone")
        return host
    if not host.isascii():
        try:
            # Strict IDNA 2008: look-alikes such as fullwidth digits are refused, not mapped to ASCII
            host = idna.encode(host).decode("ascii")
        except UnicodeError as error:  # idna.IDNAError is one
            raise RequestError("url_refused", f"the host {_quoted(host)} is not a valid internationalised "
                                              f"domain name: {error}") from None
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        raise RequestError("url_refused", f"the host {_quoted(host)} is not a valid host name")
    return host


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _quoted(text: str, limit: int = 200) -> str:
    """`text` quoted for a message: escapes shown, and an attacker's megabyte cut short."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def address_problem(address: IPAddress, trusted: Iterable[IPNetwork] = ()) -> str | None:
    """Why `address` must not be fetched from, or None when it is a plain public unicast address."""
    if any(address in network for network in trusted):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = address_problem(embedded, trusted)
            if inner:
                return f"an IPv6 address wrapping {embedded}, {inner}"
            if address in _NAT64:  # DNS64 gives every IPv4-only host such an address: the IPv4 one is what counts
                return None
    for problem, test in (
        ("a loopback address", address.is_loopback),
        ("a link-local address (cloud metadata lives there)", address.is_link_local),
        ("an unspecified address", address.is_unspecified),
        ("a multicast address", address.is_multicast),
    ):
        if test:
            return problem
    block = _special_purpose_block(address)
    if block:
        return f"in {block.network} ({block.name}), {_REACHABILITY[block.globally_reachable]}"
    # What Python's own tables know besides the registries
    for problem, test in (
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
        ("not a public address", not address.is_global),
        ("outside 2000::/3, the IPv6 global unicast space",
         address.version == 6 and address not in _IPV6_GLOBAL_UNICAST),
    ):
        if test:
            return problem
    return None


def _special_purpose_block(address: IPAddress) -> SpecialPurposeBlock | None:
    """The most specific IANA special-purpose block holding `address`, if any."""
    registry = IPV4_SPECIAL_PURPOSE if address.version == 4 else IPV6_SPECIAL_PURPOSE
    return max((block for block in registry if address in block.network),
               key=lambda block: block.network.prefixlen, default=None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64, 6to4 or Teredo address carries (and reaches)."""
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]


def _host_allowed(host: str, allowed: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def _read_capped(response: requests.Response, url: str, policy: FetchPolicy, deadline: float) -> bytes:
    cap = policy.max_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise RequestError("image_too_large", f"{url} is {int(declared)} bytes; the limit is {cap}", status=413)
    body = bytearray()
    try:
        # read1 returns whatever has arrived (iter_content would wait for full chunks), so a server
        # trickling bytes meets the total deadline; one read waits at most the read timeout.
        while chunk := response.raw.read1(_CHUNK):
            body += chunk
            if len(body) > cap:
                raise RequestError("image_too_large", f"{url} is larger than the {cap}-byte limit", status=413)
            if time.monotonic() > deadline:
                raise RequestError("url_fetch_failed", f"{url} took longer than {policy.total_timeout_s:g} s")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
        raise RequestError("url_fetch_failed", f"could not fetch {url}: {_reason(error)}") from None
    return bytes(body)


def _reason(error: Exception) -> str:
    if isinstance(error, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS certificate check failed"
    return type(error).__name__


class _PinnedHostAdapter(HTTPAdapter):
    """Connects to the checked IP literal in the URL while TLS still checks the certificate
    against the real host name (urllib3's server_hostname / assert_hostname pool options)."""

    def __init__(self, hostname: str):
        self.hostname = hostname
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = self.hostname
            pool_kwargs["assert_hostname"] = self.hostname
        return host_params, pool_kwargs
