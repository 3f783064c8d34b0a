"""Keep-alive and Nagle: `tcpscapy listen --http` answers many requests on one connection.

A response leaves in one send (headers and body together), so Nagle, on by default,
has nothing to hold back. The client is a python socket in the lab's client host.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpscapy.lab import Lab
from tests.wire.cli_helpers import SERVER, finish, read_until, tcpscapy_popen

pytestmark = pytest.mark.wire
LAB_PREFIX = "co"
PORT = 8080
REQUESTS = 100

# One connection, REQUESTS sequential GETs; prints how many bodies came back byte-exact.
KEEPALIVE_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
want = open(sys.argv[4], "rb").read()
ok = 0
with socket.create_connection((host, port), timeout=30) as s:
    buf = b""
    for i in range(n):
        s.sendall(b"GET /page.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(f"closed after {i} responses")
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(buf) < length:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(f"closed inside response {i}")
            buf += chunk
        body, buf = buf[:length], buf[length:]
        ok += head.startswith(b"HTTP/1.1 200 ") and body == want
print(ok)
"""


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    finish(lab)


@pytest.mark.parametrize("extra", [[], ["--nodelay"]], ids=["nagle", "nodelay"])
def test_one_connection_serves_a_hundred_requests_byte_exact(
        net: Lab, tmp_path: Path, extra: list[str]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    page = os.urandom(3000)  # two full segments and a small one: Nagle has a say
    (site / "page.bin").write_bytes(page)
    (tmp_path / "want.bin").write_bytes(page)
    server = tcpscapy_popen(net, "server", "listen", f"{SERVER}:{PORT}", "--http", str(site),
                            *extra)
    assert server.stderr is not None
    read_until(server.stderr, b"listening")
    client = net.run("client", [os.environ.get("PYTHON", "python3"), "-c", KEEPALIVE_CLIENT,
                                SERVER, str(PORT), str(REQUESTS), str(tmp_path / "want.bin")],
                     capture_output=True, timeout=120)
    assert client.returncode == 0, client.stderr.decode()
    assert client.stdout.decode().strip() == str(REQUESTS)
    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=30)
    lines = [x for x in err.decode().splitlines() if x.startswith("10.77.0.1:")]
    assert len(lines) == 1  # every request on the one connection
