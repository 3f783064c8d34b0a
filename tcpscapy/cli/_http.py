"""A small, correct HTTP/1.1 file server over one connection, for `tcpscapy listen --http`.

GET and HEAD of files under a root directory: Content-Length, a Content-Type
guessed from the name, index.html for directories (a redirect adds the
missing slash), 404, 403 for any path that leaves the root ('..', symlinks),
keep-alive (HTTP/1.1 by default, HTTP/1.0 on request) and pipelining. No
request bodies beyond a small discarded Content-Length, no chunked uploads.
Written as steps (tcpscapy.cli._steps): `serve_steps` runs in the listen command's
event loop, `serve` over anything with recv(max, timeout) and sendall(data), so it
is tested without a network.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tcpscapy.cli._steps import Steps, Stream, recv, run, sendall

MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 1 << 20  # a GET/HEAD body we read and throw away
IDLE_TIMEOUT = 15.0  # seconds a kept-alive connection may wait for its next request
FILE_CHUNK = 64 * 1024
SERVER = "tcpscapy"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_REASONS = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Content Too Large", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}


class _Reject(Exception):
    """A request we answer with an error status and then close."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Request:
    method: str
    target: str
    version: tuple[int, int]
    headers: dict[str, str] = field(default_factory=dict)

    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


@dataclass
class Served:
    """What one connection asked for: (method, target, status) per request."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)


def serve(conn: Stream, root: str | Path, *, idle: float = IDLE_TIMEOUT) -> Served:
    """Answer requests on `conn` until the client closes, asks to close, or idles.

    Returns normally in every case the client caused (the caller then closes);
    connection errors (reset, ...) propagate.
    """
    return run(serve_steps(root, idle=idle), conn)


def serve_steps(root: str | Path, *, idle: float = IDLE_TIMEOUT) -> Steps[Served]:
    """serve() as steps, for an event loop."""
    base = Path(root).resolve()
    served = Served()
    buf = bytearray()
    while True:
        try:
            head = yield from _read_head(buf, idle)
            if head is None:
                return served  # closed or idle between requests
            request = _parse(head)
            yield from _discard_body(buf, request, idle)
        except _Reject as exc:
            yield from _send_error(exc.status, keep_alive=False, version=(1, 1))
            served.requests.append(("?", "?", exc.status))
            return served
        status, keep = yield from _respond(base, request)
        served.requests.append((request.method, request.target, status))
        if not keep:
            return served


def _read_head(buf: bytearray, idle: float) -> Steps[bytes | None]:
    """The bytes up to the blank line ending a request head; None at EOF/idle before one."""
    while True:
        while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request
            del buf[:2]
        end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end >= 0:
            head = bytes(buf[:end])
            del buf[: end + 4]
            return head
        if len(buf) >= MAX_HEAD + 4:
            raise _Reject(431)
        try:
            chunk = yield from recv(65536, idle)
        except TimeoutError:
            if buf:
                raise _Reject(408) from None
            return None
        if not chunk:
            if buf:
                raise _Reject(400)
            return None
        buf += chunk


def _parse(head: bytes) -> Request:
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise _Reject(400) from None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _Reject(400)
    method, target, version_text = parts
    version = _VERSION.fullmatch(version_text)
    if version is None:
        raise _Reject(400)
    if version.group(1) != "1":
        raise _Reject(505)
    request = Request(method, target, (1, int(version.group(2))))
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):  # also rejects obsolete line folding
            raise _Reject(400)
        key, value = name.lower(), value.strip(" \t")
        if key in request.headers:
            if key in ("content-length", "host") and request.headers[key] != value:
                raise _Reject(400)
            request.headers[key] = f"{request.headers[key]}, {value}"
        else:
            request.headers[key] = value
    if request.version >= (1, 1) and "host" not in request.headers:
        raise _Reject(400)  # RFC 9112 3.2
    return request


def _discard_body(buf: bytearray, request: Request, idle: float) -> Steps[None]:
    if "transfer-encoding" in request.headers:
        raise _Reject(501)
    length_text = request.headers.get("content-length", "0").split(",")[0].strip()
    if not length_text.isdigit():
        raise _Reject(400)
    left = int(length_text)
    if left > MAX_BODY:
        raise _Reject(413)
    while len(buf) < left:
        try:
            chunk = yield from recv(65536, idle)
        except TimeoutError:
            raise _Reject(408) from None
        if not chunk:
            raise _Reject(400)
        buf += chunk
    del buf[:left]


def _respond(base: Path, request: Request) -> Steps[tuple[int, bool]]:
    """Send the response to one request; (status, keep the connection)."""
    keep = request.keep_alive()
    head_only = request.method == "HEAD"
    if request.method not in ("GET", "HEAD"):
        yield from _send_error(405, keep_alive=keep, version=request.version,
                               extra={"Allow": "GET, HEAD"})
        return 405, keep
    raw = _target_path(request.target)
    path, status = _locate(base, raw)
    if path is None:
        extra = {"Location": raw + "/"} if status == 301 else None
        yield from _send_error(status, keep_alive=keep, version=request.version, extra=extra,
                               head_only=head_only)
        return status, keep
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            head = _head(200, {"Content-Type": kind, "Content-Length": str(size)},
                         keep_alive=keep, version=request.version)
            # Headers and the first chunk in one send: apart, Nagle holds the body
            # back until the client (delaying its ACK) acknowledges the headers.
            yield from sendall(head + (b"" if head_only else f.read(FILE_CHUNK)))
            if not head_only:
                while chunk := f.read(FILE_CHUNK):
                    yield from sendall(chunk)
    except OSError:  # vanished or unreadable between the check and the open
        yield from _send_error(404, keep_alive=keep, version=request.version,
                               head_only=head_only)
        return 404, keep
    return 200, keep


def _target_path(target: str) -> str:
    """The (still percent-encoded) path of an origin-form or absolute-form target."""
    if not target.startswith("/"):
        target = urlsplit(target).path or "/"  # http://host/path
    return target.split("?", 1)[0]


def _locate(base: Path, raw: str) -> tuple[Path | None, int]:
    """The file a request path names under `base`: (path, 200) or (None, 301|403|404)."""
    if not raw.startswith("/"):
        return None, 404
    parts = unquote(raw).split("/")  # decoded first: %2e%2e and %2f count as '..' and '/'
    if ".." in parts:
        return None, 403  # path traversal refused
    if any("\0" in part for part in parts):
        return None, 404
    path = base.joinpath(*[p for p in parts if p not in ("", ".")])
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None, 404
    if resolved != base and base not in resolved.parents:
        return None, 403  # a symlink out of the root
    if resolved.is_dir():
        if not raw.endswith("/"):
            return None, 301
        resolved = resolved / "index.html"
    if not resolved.is_file():
        return None, 404
    return resolved, 200


def _head(status: int, headers: dict[str, str], *, keep_alive: bool,
          version: tuple[int, int]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Server: {SERVER}",
             f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if not keep_alive:
        lines.append("Connection: close")
    elif version < (1, 1):
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send_error(status: int, *, keep_alive: bool, version: tuple[int, int],
                extra: dict[str, str] | None = None, head_only: bool = False) -> Steps[None]:
    body = f"{status} {_REASONS[status]}\n".encode()
    headers = {**(extra or {}), "Content-Type": "text/plain; charset=utf-8",
               "Content-Length": str(len(body))}
    yield from sendall(_head(status, headers, keep_alive=keep_alive, version=version)
                       + (b"" if head_only else body))
