"""The `listen --http` server (tcpscapy.cli._http) over an in-memory stream: no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcpscapy.cli._http import MAX_HEAD, serve


class FakeStream:
    """Hands out `incoming` in chunks, then EOF (or a timeout, with `idle`)."""

    def __init__(self, *chunks: bytes, idle: bool = False) -> None:
        self.incoming = list(chunks)
        self.sent = bytearray()
        self.idle = idle

    def recv(self, max: int = 65536, timeout: float | None = None) -> bytes:
        if self.incoming:
            chunk = self.incoming.pop(0)
            if len(chunk) > max:
                self.incoming.insert(0, chunk[max:])
            return chunk[:max]
        if self.idle:
            raise TimeoutError("idle")
        return b""

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        self.sent += data


def responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split a byte stream of HTTP responses (each with Content-Length)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_bytes(b"<p>home</p>\n")
    (root / "docs" / "a b.txt").write_bytes(b"spaced\n")
    (root / "docs" / "data.bin").write_bytes(os.urandom(200_000))
    (root / "empty").mkdir()
    (tmp_path / "secret.txt").write_text("outside the root")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root


def get(site: Path, *requests: bytes, idle: bool = False) -> list[tuple[str, dict[str, str],
                                                                         bytes]]:
    stream = FakeStream(*requests, idle=idle)
    serve(stream, site, idle=0.01)
    return responses(bytes(stream.sent))


def req(target: str, method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    return f"{method} {target} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


def test_get_a_file(site: Path) -> None:
    [(status, headers, body)] = get(site, req("/docs/data.bin"))
    assert status == "HTTP/1.1 200 OK"
    assert body == (site / "docs" / "data.bin").read_bytes()
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == "200000" and "date" in headers


def test_index_html_content_type_and_percent_decoding(site: Path) -> None:
    (status, headers, body), (status2, _, body2) = get(
        site, req("/", extra="Connection: keep-alive\r\n") + req("/docs/a%20b.txt?x=1"))
    assert (status, headers["content-type"], body) == ("HTTP/1.1 200 OK", "text/html",
                                                       b"<p>home</p>\n")
    assert (status2, body2) == ("HTTP/1.1 200 OK", b"spaced\n")


def test_head_sends_headers_only(site: Path) -> None:
    stream = FakeStream(req("/docs/data.bin", "HEAD"))
    serve(stream, site, idle=0.01)
    head = bytes(stream.sent)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 200000\r\n" in head


@pytest.mark.parametrize(("target", "status"), [
    ("/missing", "404 Not Found"),
    ("/empty/", "404 Not Found"),  # a directory without index.html
    ("/../secret.txt", "403 Forbidden"),
    ("/docs/../../secret.txt", "403 Forbidden"),
    ("/%2e%2e/secret.txt", "403 Forbidden"),
    ("/docs%2f..%2f..%2fsecret.txt", "403 Forbidden"),
    ("/escape", "403 Forbidden"),  # a symlink out of the root
])
def test_missing_and_forbidden(site: Path, target: str, status: str) -> None:
    [(line, _, body)] = get(site, req(target))
    assert line == f"HTTP/1.1 {status}" and body == f"{status}\n".encode()


def test_directory_without_slash_redirects(site: Path) -> None:
    [(line, headers, _)] = get(site, req("/docs"))
    assert line == "HTTP/1.1 301 Moved Permanently" and headers["location"] == "/docs/"


def test_absolute_form_target(site: Path) -> None:
    [(line, _, body)] = get(site, req("http://x/index.html"))
    assert (line, body) == ("HTTP/1.1 200 OK", b"<p>home</p>\n")


def test_other_methods_get_405_with_allow(site: Path) -> None:
    [(line, headers, _)] = get(site, req("/", "DELETE"))
    assert line == "HTTP/1.1 405 Method Not Allowed" and headers["allow"] == "GET, HEAD"


def test_keep_alive_and_pipelining_in_http_1_1(site: Path) -> None:
    both = req("/index.html") + req("/docs/a%20b.txt")
    got = get(site, both[:10], both[10:])  # split mid-request, two requests in one chunk
    assert [(s, b) for s, _, b in got] == [("HTTP/1.1 200 OK", b"<p>home</p>\n"),
                                           ("HTTP/1.1 200 OK", b"spaced\n")]
    assert all("connection" not in h for _, h, _ in got)


def test_connection_close_ends_after_one_response(site: Path) -> None:
    got = get(site, req("/", extra="Connection: close\r\n") + req("/docs/a%20b.txt"))
    assert len(got) == 1 and got[0][1]["connection"] == "close"


def test_http_1_0_closes_unless_asked_to_keep_alive(site: Path) -> None:
    plain = get(site, b"GET / HTTP/1.0\r\n\r\n" + req("/"))
    assert len(plain) == 1 and plain[0][1]["connection"] == "close"
    kept = get(site, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + req("/"))
    assert len(kept) == 2 and kept[0][1]["connection"] == "keep-alive"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", "400 Bad Request"),  # HTTP/1.1 without Host
    (b"GET /\r\n\r\n", "400 Bad Request"),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505 HTTP Version Not Supported"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", "400 Bad Request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", "400 Bad Request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "501 Not Implemented"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n", "413 Content Too Large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (MAX_HEAD + 10),
     "431 Request Header Fields Too Large"),
    (b"GET / HTTP/1.1\r\nHost: x", "400 Bad Request"),  # EOF mid-head
])
def test_bad_requests_get_an_error_and_a_close(site: Path, request_bytes: bytes,
                                               status: str) -> None:
    [(line, headers, _)] = get(site, request_bytes + req("/"))
    assert line == f"HTTP/1.1 {status}" and headers["connection"] == "close"


def test_a_small_body_is_read_and_skipped(site: Path) -> None:
    got = get(site, req("/", extra="Content-Length: 5\r\n") + b"hello" + req("/docs/a%20b.txt"))
    assert [b for _, _, b in got] == [b"<p>home</p>\n", b"spaced\n"]


def test_an_idle_connection_ends_quietly(site: Path) -> None:
    assert get(site, req("/"), idle=True)[0][2] == b"<p>home</p>\n"  # then the timeout
    stream = FakeStream(b"GET / HT", idle=True)
    serve(stream, site, idle=0.01)
    assert bytes(stream.sent).startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_served_records_each_request(site: Path) -> None:
    stream = FakeStream(req("/") + req("/missing") + req("/../x", extra="Connection: close\r\n"))
    served = serve(stream, site, idle=0.01)
    assert served.requests == [("GET", "/", 200), ("GET", "/missing", 404),
                               ("GET", "/../x", 403)]
