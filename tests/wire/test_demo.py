"""`make demo` (examples/demo.py): an HTTP GET over tcpscapy in a lab it builds and removes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tcpscapy.lab import Lab

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsg"
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_demo_prints_the_ladder_and_the_response_and_removes_its_lab() -> None:
    result = subprocess.run([sys.executable, str(DEMO), "--prefix", LAB_PREFIX],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.0 200 OK\r\n")
    assert result.stdout.endswith(b"</p>\n")  # the whole index page
    ladder = result.stderr.decode()
    assert re.search(r"SYN-SENT +── S seq=0 ", ladder)
    assert re.search(r"◀─+ SA seq=0 ack=1 ", ladder)
    # Our FIN: right after the request (ack=1), or after the answer came in first.
    assert re.search(r"── F\w* seq=\d+ ack=\d+ ", ladder)
    assert re.search(r"◀─+ F\w* seq=\d+ ack=\d+ ", ladder)
    assert "handshake RTT" in ladder
    prefix = re.search(r"# lab (tsg[0-9a-f]{6}):", ladder)
    assert prefix is not None
    lab = Lab(prefix.group(1))
    assert not lab.exists()
