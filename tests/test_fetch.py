"""Fetching image URLs: what is refused and why, and what a permitted fetch really does on the wire."""

import http.server
import ipaddress
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import replace

import pytest
import requests

from objdetect.errors import RequestError
from objdetect.fetch import address_problem, checked_target, fetch_image
from objdetect.settings import Settings
from objdetect.special_addresses import IPV4_SPECIAL_PURPOSE, IPV6_SPECIAL_PURPOSE

pytestmark = pytest.mark.unit

PAYLOAD = b"\x89PNG fake image bytes " * 100
DEFAULT = Settings.load({}, {}).fetch_policy()
# Tests reach a local server; loopback is refused unless trusted, so this policy trusts 127.0.0.1 alone.
TRUSTING_LOCALHOST = replace(DEFAULT, trusted_networks=(ipaddress.ip_network("127.0.0.1/32"),))


class _Handler(http.server.BaseHTTPRequestHandler):
    hosts_seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _Handler.hosts_seen.append(self.headers["Host"])
        path, _, query = self.path.partition("?")
        if path == "/image":
            self._send(200, PAYLOAD)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query)
            self.end_headers()
        elif path == "/bad-redirect":
            self.send_response(302)
            self.send_header("Location", "http://[::1/image")  # an unclosed IPv6 bracket
            self.end_headers()
        elif path == "/missing":
            self._send(404, b"no")
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif path == "/endless":  # no Content-Length: only counting while streaming can stop it
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(10_000):
                    self.wfile.write(b"x" * 65536)
            except OSError:
                pass
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, PAYLOAD)
        elif path == "/trickle":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"x" * 100)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(tls_context=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    if tls_context:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def origin():
    server = _serve()
    yield f"http://127.0.0.1:{server.server_port}", server.server_port
    server.shutdown()
    server.server_close()


def to_loopback(host, port):
    """A resolver that answers 127.0.0.1 for any name: the fetch must connect to exactly this."""
    return ["127.0.0.1"]


def refusal(url, policy=DEFAULT, resolver=None) -> RequestError:
    with pytest.raises(RequestError) as caught:
        fetch_image(url, policy, **({"resolver": resolver} if resolver else {}))
    return caught.value


def as_literal(host, port):
    """A resolver for IP-literal URLs: the address is the literal itself, so the guard judges exactly it."""
    return [host]


def never_resolved(host, port):
    pytest.fail(f"{host!r} was resolved: the URL should have been refused before")


@pytest.fixture
def no_connection(monkeypatch):
    """Any connection attempt fails the test (pytest.fail is no Exception: nothing on the way swallows it)."""
    def refuse(*args, **kwargs):
        pytest.fail(f"a connection was attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def url_of(address: str) -> str:
    return f"http://[{address}]/a.jpg" if ":" in address else f"http://{address}/a.jpg"


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://2130706433/", "loopback"),  # decimal spelling of 127.0.0.1
    ("http://0x7f000001/", "loopback"),  # hexadecimal spelling
    ("http://0177.0.0.1/", "loopback"),  # octal spelling
    ("http://127.1/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "wrapping 127.0.0.1"),  # IPv4-mapped IPv6
    ("http://[2002:7f00:1::]/", "wrapping 127.0.0.1"),  # 6to4 around loopback
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # EC2 instance metadata
    ("http://169.254.170.2/v2/credentials", "link-local"),  # ECS task credentials
    ("http://[fe80::1]/", "link-local"),
    ("http://10.0.0.8/", "in 10.0.0.0/8 (Private-Use)"),
    ("http://172.16.5.4/", "in 172.16.0.0/12 (Private-Use)"),
    ("http://192.168.1.1/", "in 192.168.0.0/16 (Private-Use)"),
    ("http://[fd00::1]/", "in fc00::/7 (Unique-Local)"),
    ("http://100.64.0.1/", "in 100.64.0.0/10 (Shared Address Space)"),  # carrier-grade NAT
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
])
def test_non_public_addresses_are_refused_with_the_reason(url, reason):
    error = refusal(url)
    assert error.code == "url_refused" and error.status == 400
    assert reason in error.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://example.com/",
                                 "//example.com/a.jpg", "http:///nohost"])
def test_only_http_and_https_urls_with_a_host(url):
    assert refusal(url).code == "url_refused"


def test_a_name_resolving_to_any_private_address_is_refused():
    def mixed(host, port):
        return ["93.184.216.34", "10.1.2.3"]  # one public, one private: still refused
    error = refusal("http://images.example.com/a.jpg", resolver=mixed)
    assert "10.1.2.3" in error.message and "Private-Use" in error.message


def _first_middle_last(network):
    return sorted({network[0], network[network.num_addresses // 2], network[-1]})


# 64:ff9b::/96 (NAT64) is left out: the IPv4 address it carries decides, tested on its own below.
SPECIAL_PURPOSE_ADDRESSES = [
    pytest.param(str(address), id=f"{block.network} {block.name}: {address}")
    for block in IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE if block.network != ipaddress.ip_network("64:ff9b::/96")
    for address in _first_middle_last(block.network)
]


@pytest.mark.parametrize("address", SPECIAL_PURPOSE_ADDRESSES)
def test_every_iana_special_purpose_block_is_refused_before_any_connection(address, no_connection):
    error = refusal(url_of(address), resolver=as_literal)
    assert error.code == "url_refused" and address in error.message


# Written out apart from the registry table, so that a table emptied or cut short fails here.
@pytest.mark.parametrize("address", [
    "192.0.0.192",  # IETF Protocol Assignments: Python 3.11's ipaddress calls it global
    "192.0.0.8",
    "198.18.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.88.99.1",  # deprecated 6to4 relay anycast
    "2001:db8::1",
    "fec0::1",  # deprecated site-local, outside 2000::/3
    "100::1",
    "2001:2::1",
    "5f00::1",  # SRv6 SIDs
    "3fff::1",  # documentation
    "64:ff9b:1::1",  # local-use NAT64
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    "::ffff:1.1.1.1",  # IPv4-mapped: not a destination on the wire
    "2002:101:101::",  # 6to4 around a public address
    "192.0.0.9",  # globally reachable PCP anycast: special-purpose all the same
    "2001:1::1",
])
def test_representative_special_addresses_are_refused_before_any_connection(address, no_connection):
    error = refusal(url_of(address), resolver=as_literal)
    assert error.code == "url_refused" and address in error.message


@pytest.mark.parametrize("address, reason", [
    ("192.0.0.192", "in 192.0.0.0/24 (IETF Protocol Assignments), not globally reachable"),
    ("192.0.0.8", "in 192.0.0.8/32 (IPv4 dummy address), not globally reachable"),  # the most specific entry
    ("100.64.0.1", "in 100.64.0.0/10 (Shared Address Space), not globally reachable"),
    ("192.0.0.9", "in 192.0.0.9/32 (Port Control Protocol Anycast), reserved for that use"),
    ("2620:4f:8000::1", "in 2620:4f:8000::/48 (Direct Delegation AS112 Service), reserved for that use"),
    ("3fff::1", "in 3fff::/20 (Documentation), not globally reachable"),
    ("2002:101:101::", "in 2002::/16 (6to4), not globally reachable (IANA: N/A)"),
    ("fec0::1", "outside 2000::/3, the IPv6 global unicast space"),
    ("64:ff9b::a00:1", "an IPv6 address wrapping 10.0.0.1, in 10.0.0.0/8 (Private-Use), not globally reachable"),
])
def test_a_refusal_names_the_registry_entry(address, reason):
    assert address_problem(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111",
                                     "2a00:1450:4001:80b::200e", "64:ff9b::101:101"])  # the last: NAT64 for 1.1.1.1
def test_public_addresses_pass_the_guard(address):
    assert address_problem(ipaddress.ip_address(address)) is None
    target = checked_target(url_of(address), DEFAULT, as_literal)
    assert target.pinned_url == url_of(address).replace("/a.jpg", ":80/a.jpg")


def test_a_public_name_is_pinned_to_its_checked_address():
    target = checked_target("https://Images.Example.com/a.jpg?size=2", DEFAULT, lambda host, port: ["93.184.216.34"])
    assert target == ("https", "images.example.com", "images.example.com", "https://93.184.216.34:443/a.jpg?size=2")


def test_operators_can_still_trust_a_special_purpose_network():
    trusted = (ipaddress.ip_network("198.18.0.0/16"),)  # e.g. a lab network numbered from benchmarking space
    assert address_problem(ipaddress.ip_address("198.18.0.7"), trusted) is None
    assert address_problem(ipaddress.ip_address("64:ff9b::c612:7"), trusted) is None  # reached through NAT64
    benchmarking = "in 198.18.0.0/15 (Benchmarking), not globally reachable"
    assert address_problem(ipaddress.ip_address("198.19.0.7"), trusted) == benchmarking


def test_permitted_fetch_connects_to_the_checked_address_and_keeps_the_host_name(origin):
    _, port = origin
    _Handler.hosts_seen.clear()
    # "images.invalid" cannot resolve anywhere; only the pinned, checked address can be reached.
    body = fetch_image(f"http://images.invalid:{port}/image", TRUSTING_LOCALHOST, resolver=to_loopback)
    assert body == PAYLOAD
    assert _Handler.hosts_seen == [f"images.invalid:{port}"]


def test_each_redirect_is_checked_again(origin):
    base, port = origin
    ok = fetch_image(f"{base}/redirect?{base}/image", TRUSTING_LOCALHOST)
    assert ok == PAYLOAD
    for target in (f"http://127.0.0.2:{port}/image", "http://169.254.169.254/latest/meta-data/"):
        error = refusal(f"{base}/redirect?{target}", TRUSTING_LOCALHOST)
        assert error.code == "url_refused" and ("loopback" in error.message or "link-local" in error.message)


def test_more_than_three_redirects_are_refused(origin):
    base, _ = origin
    url = f"{base}/image"
    for _ in range(4):
        url = f"{base}/redirect?{url}"
    error = refusal(url, TRUSTING_LOCALHOST)
    assert error.code == "url_refused" and "redirects" in error.message
    assert fetch_image(url, replace(TRUSTING_LOCALHOST, max_redirects=4)) == PAYLOAD


def test_operators_can_allow_only_listed_hosts(origin):
    _, port = origin
    allow = replace(TRUSTING_LOCALHOST, allowed_hosts=("*.example.com", "cdn.images.test"))
    assert fetch_image(f"http://a.b.example.com:{port}/image", allow, resolver=to_loopback) == PAYLOAD
    assert fetch_image(f"http://cdn.images.test:{port}/image", allow, resolver=to_loopback) == PAYLOAD
    error = refusal(f"http://evil.test:{port}/image", allow, resolver=to_loopback)
    assert error.code == "url_refused" and "allowed hosts" in error.message
    assert refusal(f"http://example.com.evil.test:{port}/image", allow, resolver=to_loopback).code == "url_refused"


@pytest.mark.parametrize("path, code, words", [
    ("/declared-huge", "image_too_large", "limit"),
    ("/endless", "image_too_large", "limit"),
    ("/missing", "url_fetch_failed", "HTTP 404"),
])
def test_size_cap_and_http_errors(origin, path, code, words):
    base, _ = origin
    error = refusal(base + path, replace(TRUSTING_LOCALHOST, max_bytes=1_000_000))
    assert error.code == code and words in error.message


def test_read_and_total_timeouts(origin):
    base, _ = origin
    slow = refusal(f"{base}/slow", replace(TRUSTING_LOCALHOST, read_timeout_s=0.3))
    assert slow.code == "url_fetch_failed" and "timed out" in slow.message
    started = time.monotonic()
    trickle = refusal(f"{base}/trickle", replace(TRUSTING_LOCALHOST, total_timeout_s=0.5))
    assert trickle.code == "url_fetch_failed" and "longer than" in trickle.message
    assert time.monotonic() - started < 3  # the trickle would take 4 s to finish


@pytest.mark.parametrize("url", [
    "http://１．１．１．１/a.jpg",  # fullwidth digits and full stops
    "http://ｌｏｃａｌｈｏｓｔ/a.jpg",
    "http://exa\u200bmple.com/a.jpg",  # a zero-width space inside the name
    "http://images.example.com\x00.evil.test/a.jpg",
    "http://images.example.com/a\x00.jpg",
    "http://images.exa\tmple.com/a.jpg",  # urlsplit would silently drop the tab
    "http://images.example.com/a.jpg\r\nX-Injected: 1",
    "http://images example.com/a.jpg",
    "http://images.example.com/a.jpg\x7f",
    "http://images.example.com/\ud800.jpg",  # a lone surrogate, as JSON can carry one
    "http://" + "a" * 64 + ".example.com/a.jpg",  # a label over 63 characters
    "http://" + "a." * 127 + "com/a.jpg",  # a name over 253
    "http://images.example.com/" + "a" * 10_000,
    "http://%31%32%37.0.0.1/a.jpg",  # a percent-encoded host
    "http://images..example.com/a.jpg",
    "http://images.example.com:65536/a.jpg",
    "http://images.example.com:0/a.jpg",
    "http://images.example.com:-1/a.jpg",
    "http://images.example.com:８０/a.jpg",
    "http://images.example.com:80:80/a.jpg",
    "http://user:secret@images.example.com/a.jpg",
    "http://images.example.com@127.0.0.1/a.jpg",
    "http://images.example.com\\@127.0.0.1/a.jpg",
    "http://127.0.0.1\\.images.example.com/a.jpg",
    "http://[v1.fe80::1]/a.jpg",  # IPvFuture: no address at all
    "http://[fe80::1%25eth0]/a.jpg",
    "http://[::1/a.jpg",
])
def test_hostile_url_strings_are_refused_before_resolving_or_connecting(url, no_connection):
    assert refusal(url, resolver=never_resolved).code == "url_refused"


def test_fullwidth_host_is_refused_not_a_crash_even_where_loopback_is_trusted(origin):
    _, port = origin
    error = refusal(f"http://１．１．１．１:{port}/image", TRUSTING_LOCALHOST, resolver=to_loopback)
    assert error.code == "url_refused" and "internationalised domain name" in error.message


def test_a_name_spelled_with_ideographic_full_stops_is_judged_by_the_address_it_becomes(no_connection):
    asked = []
    def recording(host, port):
        asked.append(host)
        return [host]
    error = refusal("http://127。0。0。1/a.jpg", resolver=recording)
    assert asked == ["127.0.0.1"] and error.code == "url_refused" and "loopback" in error.message


def test_an_internationalised_name_travels_idna_encoded(origin):
    _, port = origin
    _Handler.hosts_seen.clear()
    assert fetch_image(f"http://bücher.example:{port}/image", TRUSTING_LOCALHOST, resolver=to_loopback) == PAYLOAD
    assert _Handler.hosts_seen == [f"xn--bcher-kva.example:{port}"]


def test_odd_but_harmless_paths_are_percent_encoded_and_fetched(origin):
    base, _ = origin
    assert fetch_image(f"{base}/image?q=é%zz\u2028#fragment", TRUSTING_LOCALHOST) == PAYLOAD


def test_a_redirect_to_a_malformed_url_is_refused_not_a_crash(origin):
    base, _ = origin
    error = refusal(f"{base}/bad-redirect", TRUSTING_LOCALHOST)
    assert error.code == "url_refused" and "redirect" in error.message and "Invalid IPv6 URL" in error.message


def test_a_request_that_cannot_be_encoded_is_refused_not_a_crash(monkeypatch, no_connection):
    def unencodable(*args, **kwargs):
        raise UnicodeEncodeError("latin-1", "\uff11", 0, 1, "ordinal not in range(256)")
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", unencodable)
    error = refusal("http://images.invalid/a.jpg", TRUSTING_LOCALHOST, resolver=to_loopback)
    assert error.code == "url_refused" and "can't encode" in error.message


def test_unresolvable_host_is_a_fetch_failure():
    error = refusal("http://no-such-host.invalid/a.jpg")
    assert error.code == "url_fetch_failed" and "resolve" in error.message


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory):
    """An HTTPS server whose certificate names images.test (signed by a throwaway CA)."""
    d = tmp_path_factory.mktemp("tls")
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=objdetect test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=images.test")
    (d / "san.ext").write_text("subjectAltName=DNS:images.test\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "server.pem", d / "server.key")
    server = _serve(context)
    yield server.server_port, str(d / "ca.pem")
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_against_the_host_name_not_the_pinned_address(tls_origin):
    port, ca = tls_origin
    body = fetch_image(f"https://images.test:{port}/image", TRUSTING_LOCALHOST, resolver=to_loopback, verify=ca)
    assert body == PAYLOAD
    with pytest.raises(RequestError) as caught:  # same server, a name its certificate does not carry
        fetch_image(f"https://other.test:{port}/image", TRUSTING_LOCALHOST, resolver=to_loopback, verify=ca)
    assert caught.value.code == "url_fetch_failed" and "certificate" in caught.value.message
