"""Fetching http(s) inputs safely: no requests to private networks, capped sizes.

A job or server that fetches user-supplied URLs must not become a way into the network it runs
in (SSRF), so loopback, private, link-local and other non-global addresses are refused unless
explicitly allowed, on every redirect hop.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 5


class UnsafeURLError(ValueError):
    """A URL refused by policy rather than by the network."""


def http_base_url(url: str) -> str:
    """``url`` without its trailing slash when it is an http(s) base URL with a host (servers
    the user configures: judges, router backends); ValueError naming what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s):// URL with a host, e.g. http://host:8000")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL has no ?query or #fragment")
    return url.rstrip("/")


def check_url(url: str, allow_private: bool = False) -> None:
    """Raise UnsafeURLError unless ``url`` is http(s) to a public address (or private is allowed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if allow_private:
            return
        raise UnsafeURLError("file:// URLs are refused (pass --allow-private-urls to allow)")
    if scheme not in ("http", "https"):
        raise UnsafeURLError(f"unsupported URL scheme {scheme!r}")
    host = parts.hostname
    if not host:
        raise UnsafeURLError("URL has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global:
            raise UnsafeURLError(
                f"{host} resolves to non-public address {addr} "
                "(pass --allow-private-urls to allow)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Redirects are followed by hand so that every hop goes through check_url.
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def fetch_url(url: str, *, allow_private: bool = False, max_bytes: int, timeout: float = 30.0) -> bytes:
    """GET ``url`` following up to MAX_REDIRECTS checked redirects; at most ``max_bytes`` bytes."""
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allow_private)
        if urlsplit(url).scheme.lower() == "file":
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return _read_capped(resp, max_bytes)
        request = urllib.request.Request(url, headers={"User-Agent": "mmpipe"})
        try:
            with _opener.open(request, timeout=timeout) as resp:
                return _read_capped(resp, max_bytes)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                url = urljoin(url, exc.headers["Location"])
                continue
            raise OSError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise OSError(f"cannot fetch: {exc.reason}") from None
    raise OSError(f"more than {MAX_REDIRECTS} redirects")


def _read_capped(resp, max_bytes: int) -> bytes:
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ValueError(f"too large: {int(length)} bytes exceeds the {max_bytes}-byte limit")
    data = resp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"too large: exceeds the {max_bytes}-byte limit")
    return data
