"""Fetching image URLs: what is refused and why, and what a permitted fetch really does on the wire."""

import http.server
import ipaddress
import ssl
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from objdetect.errors import RequestError
from objdetect.fetch import fetch_image
from objdetect.settings import Settings

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
    ("http://10.0.0.8/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "private"),
    ("http://100.64.0.1/", "not a public address"),  # carrier-grade NAT
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
    assert "10.1.2.3" in error.message and "private" in error.message


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
