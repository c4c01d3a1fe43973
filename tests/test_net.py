"""SSRF policy and size caps of mmpipe.net, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import pytest

from mmpipe import net
from mmpipe.net import MAX_REDIRECTS, UnsafeURLError, check_url, fetch_url
from tests.conftest import QuietHandler, local_http_server

BODY = b"hello from the test server"
CAP = 1000


class _Handler(QuietHandler):
    # HTTP/1.0: a body without Content-Length ends when the connection closes.
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _Handler.requests.append(self.path)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/ok":
            self.send_body(200, BODY)
        elif parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.end_headers()
        elif parts.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif parts.path == "/declared-large":
            self.send_body(200, b"x" * (CAP + 1))
        elif parts.path == "/undeclared-large":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * (CAP * 3))
        elif parts.path == "/lying-length":
            # Claims a small body, so only the read cap can catch it.
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"x" * (CAP * 3))
        else:
            self.send_body(404, b"not here")



@pytest.fixture(scope="module")
def server():
    with local_http_server(_Handler) as url:
        yield url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/",
    "http://127.1.2.3:8080/x",
    "http://localhost/",
    "http://2130706433/",  # 127.0.0.1 written as one integer
    "http://0.0.0.0/",
    "http://10.0.0.1/",
    "http://10.255.1.2/path",
    "http://192.168.1.10/",
    "http://172.16.0.5/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata service
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "HTTPS://127.0.0.1/",
])
def test_non_public_addresses_are_refused(url):
    with pytest.raises(UnsafeURLError, match="non-public address .*--allow-private-urls"):
        check_url(url)
    check_url(url, allow_private=True)


def test_public_address_passes():
    # Literal addresses resolve without DNS, so this needs no network.
    check_url("http://8.8.8.8/")
    check_url("https://[2001:4860:4860::8888]:443/x")


def test_file_urls_only_when_allowed(tmp_path):
    target = tmp_path / "secret.txt"
    target.write_bytes(b"local bytes")
    with pytest.raises(UnsafeURLError, match="file:// URLs are refused.*--allow-private-urls"):
        check_url(target.as_uri())
    with pytest.raises(UnsafeURLError, match="file://"):
        fetch_url(target.as_uri(), max_bytes=CAP)
    assert fetch_url(target.as_uri(), allow_private=True, max_bytes=CAP) == b"local bytes"
    with pytest.raises(ValueError, match="too large"):
        fetch_url(target.as_uri(), allow_private=True, max_bytes=5)


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/x", "unsupported URL scheme 'ftp'"),
    ("gopher://127.0.0.1:70/", "unsupported URL scheme 'gopher'"),
    ("data:text/plain,hi", "unsupported URL scheme 'data'"),
    ("http:///no-host", "no host"),
])
def test_other_schemes_and_hostless_urls_are_refused(url, reason):
    for allow in (False, True):
        with pytest.raises(UnsafeURLError, match=reason):
            check_url(url, allow_private=allow)


def test_unresolvable_host_is_a_network_error_not_a_policy_one():
    with pytest.raises(OSError, match="cannot resolve host") as info:
        check_url("http://no-such-host.invalid/")
    assert not isinstance(info.value, UnsafeURLError)


def test_fetch_refuses_the_local_server_without_allow(server):
    before = len(_Handler.requests)
    with pytest.raises(UnsafeURLError, match="non-public"):
        fetch_url(f"{server}/ok", max_bytes=CAP)
    assert len(_Handler.requests) == before  # refused before connecting


def test_fetch_with_allow(server):
    assert fetch_url(f"{server}/ok", allow_private=True, max_bytes=CAP) == BODY


def test_redirects_are_followed_and_resolved_relative(server):
    assert fetch_url(f"{server}/redirect?to=/ok", allow_private=True, max_bytes=CAP) == BODY
    assert fetch_url(f"{server}/redirect?to={server}/ok", allow_private=True, max_bytes=CAP) == BODY


def test_redirect_loop_is_cut(server):
    before = len(_Handler.requests)
    with pytest.raises(OSError, match=f"more than {MAX_REDIRECTS} redirects"):
        fetch_url(f"{server}/loop", allow_private=True, max_bytes=CAP)
    assert len(_Handler.requests) - before == MAX_REDIRECTS + 1


def test_every_redirect_hop_is_checked(server):
    # Even with private addresses allowed, a redirect to another scheme is refused.
    with pytest.raises(UnsafeURLError, match="unsupported URL scheme 'ftp'"):
        fetch_url(f"{server}/redirect?to=ftp://127.0.0.1/x", allow_private=True, max_bytes=CAP)


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/internal",
    "http://[::1]/admin",
    "file:///etc/passwd",
])
def test_redirect_from_a_public_server_to_a_private_address_is_refused(server, monkeypatch, target):
    # The test server is on loopback; let the policy treat it, and only it, as public so the
    # redirect hop is what gets judged. Everything else goes through the real check.
    real_check = net.check_url

    def check(url, allow_private=False):
        if url.startswith(server):
            return
        real_check(url, allow_private)

    monkeypatch.setattr(net, "check_url", check)
    assert fetch_url(f"{server}/ok", max_bytes=CAP) == BODY
    with pytest.raises(UnsafeURLError, match="refused|non-public"):
        fetch_url(f"{server}/redirect?to={target}", max_bytes=CAP, timeout=2)


def test_declared_length_over_the_cap_is_refused(server):
    url = f"{server}/declared-large"
    expected = f"too large: {CAP + 1} bytes exceeds the {CAP}-byte limit"
    with pytest.raises(ValueError, match=expected):
        fetch_url(url, allow_private=True, max_bytes=CAP)
    assert len(fetch_url(url, allow_private=True, max_bytes=CAP + 1)) == CAP + 1


def test_undeclared_body_over_the_cap_is_refused(server):
    with pytest.raises(ValueError, match=f"too large: exceeds the {CAP}-byte limit"):
        fetch_url(f"{server}/undeclared-large", allow_private=True, max_bytes=CAP)


def test_body_longer_than_its_content_length_is_cut_at_the_length(server):
    # http.client stops at Content-Length, so a lying server cannot push past the cap either.
    data = fetch_url(f"{server}/lying-length", allow_private=True, max_bytes=CAP)
    assert len(data) == 10


def test_http_errors_and_unreachable_hosts_are_os_errors(server):
    with pytest.raises(OSError, match="HTTP 404"):
        fetch_url(f"{server}/missing", allow_private=True, max_bytes=CAP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(OSError, match="cannot fetch"):
        fetch_url(f"http://127.0.0.1:{closed_port}/", allow_private=True, max_bytes=CAP, timeout=2)
