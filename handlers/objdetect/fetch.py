"""Fetch an image URL without letting the URL reach what it should not (SSRF).

On AWS, http://169.254.169.254 and http://169.254.170.2 hand out credentials, and loopback
reaches TorchServe's own management API. So, for the URL and every redirect:
- only http and https, only allowed hosts when the operator lists them;
- the host is resolved once and *every* address must be public (or in a network the operator
  trusts), whatever the spelling: 2130706433, 0x7f000001, 127.1 and ::ffff:127.0.0.1 all
  resolve to loopback and are refused;
- the connection goes to the address that was checked (the host name only travels in the
  Host header and TLS SNI/certificate check), so DNS cannot answer differently a moment later;
- at most `max_redirects` redirects, each checked like the first;
- connect, read and total timeouts, and a size cap enforced while the body streams in.
The body stays in memory: nothing is written to disk.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from .errors import RequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
_CHUNK = 64 * 1024


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
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise RequestError("url_refused", f"the URL {url!r} is malformed: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise RequestError("url_refused", f"only http and https URLs are fetched, not {parts.scheme or 'scheme-less'!r} ones")
    host = parts.hostname
    if not host:
        raise RequestError("url_refused", f"the URL {url!r} has no host")
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
    return Target(parts.scheme, host, parts.netloc.rpartition("@")[2], pinned)


def address_problem(address: IPAddress, trusted: Iterable[IPNetwork] = ()) -> str | None:
    """Why `address` must not be fetched from, or None when it is a public unicast address."""
    if any(address in network for network in trusted):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            inner = address_problem(embedded, trusted)
            return f"an IPv6 address wrapping {embedded}, {inner}" if inner else None
    for problem, test in (
        ("a loopback address", address.is_loopback),
        ("a link-local address (cloud metadata lives there)", address.is_link_local),
        ("an unspecified address", address.is_unspecified),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
        ("not a public address", not address.is_global),  # CGNAT 100.64/10 and other special ranges
    ):
        if test:
            return problem
    return None


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
