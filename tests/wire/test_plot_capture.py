"""`tcpscapy plot` and `tcpscapy ladder` on a capture that tcpdump wrote of real kernel
traffic: curl downloading from python's http.server inside a lab."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcpscapy.capture import CaptureError, read_capture
from tcpscapy.core.segment import FIN
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    SERVER,
    finish,
    kernel_server,
    read_until,
    tcpscapy_popen,
    tcpscapy_run,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "pl"
PORT = 8081
WAIT = 20.0  # generous: a busy machine


def _wait_for(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen in {WAIT:g} s"
        time.sleep(0.05)


def _fins(pcap: Path) -> int:
    try:
        return sum(1 for _, seg in read_capture(pcap) if seg.flags & FIN)
    except CaptureError:  # a record being written
        return 0


def _capture_download(lab: Lab, site: Path, pcap: Path) -> None:
    lab.popen("server", [sys.executable, "-m", "http.server", str(PORT), "--bind", SERVER,
                         "--directory", str(site)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for("http.server listening", lambda: lab.run(
        "server", ["ss", "-Hltn", f"sport = :{PORT}"], capture_output=True,
        text=True).stdout.strip())
    dump = lab.popen("server", ["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-Z", "root",
                                "-w", str(pcap), "tcp", "port", str(PORT)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert dump.stderr is not None
    line = ""
    for _ in range(3):  # "listening on eth0, ...": it captures from now on
        line = dump.stderr.readline().decode()
        if "listening" in line or not line:
            break
    assert "listening" in line, line
    got = lab.run("client", ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w",
                             "%{size_download}", f"http://{SERVER}:{PORT}/blob.bin"],
                  capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and got.stdout == "300000", (got.stdout, got.stderr)
    _wait_for("both FINs in the capture", lambda: _fins(pcap) >= 2)
    dump.terminate()
    dump.communicate(timeout=WAIT)


def test_kernel_capture_plots_and_ladders(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(os.urandom(300_000))
    pcap = tmp_path / "kernel.pcap"
    _capture_download(lab, tmp_path, pcap)

    svg = tmp_path / "kernel.svg"
    plotted = subprocess.run([sys.executable, "-m", "tcpscapy", "plot", str(pcap), "-o",
                              str(svg)], capture_output=True, text=True, timeout=120)
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stderr.startswith("wrote ")
    text = svg.read_text()
    assert "data from server to client" in text  # the download's direction was found
    assert 'class="data"' in text and 'class="ack"' in text and 'class="rwnd"' in text
    assert re.search(r"30\d\.\d+ kB in ", text), "the summary names the bytes sent"
    png = tmp_path / "kernel.png"
    subprocess.run([shutil.which("rsvg-convert") or "rsvg-convert", "-o", str(png), str(svg)],
                   check=True, timeout=120)
    assert png.stat().st_size > 1000

    laddered = subprocess.run([sys.executable, "-m", "tcpscapy", "ladder", str(pcap), "--svg",
                               str(tmp_path / "ladder.svg")], capture_output=True, text=True,
                              timeout=120)
    assert laddered.returncode == 0, laddered.stderr
    out = laddered.stdout
    assert "CLOSED → SYN-SENT" in out and "SYN-SENT → ESTABLISHED" in out
    assert "peer: SYN-RECEIVED → ESTABLISHED" in out
    assert "FIN-WAIT-1" in out and "CLOSE-WAIT" in out  # the close, from the wire
    assert " S seq=0 " in out and " SA seq=0 ack=1 " in out
    assert (tmp_path / "ladder.svg").read_text().count("<line") > 20


def test_connect_and_listen_plot_their_transfers(lab: Lab, tmp_path: Path) -> None:
    """--plot on both commands: our sending side's cwnd and RTT come from the engine."""
    try:
        port = kernel_server(lab, "count")
        upload = tmp_path / "up.svg"
        sent = tcpscapy_run(lab, "client", "connect", f"{SERVER}:{port}", "-q", "--plot",
                            str(upload), input=os.urandom(200_000))
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout == b"got 200000"
        text = upload.read_text()
        assert "Time-sequence graph: our data" in text
        for series in ("data", "ack", "rwnd", "cwnd", "flight", "srtt", "rto"):
            assert f'class="{series}"' in text, series

        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(150_000))
        served = tmp_path / "served.svg"
        server = tcpscapy_popen(lab, "server", "listen", f"{SERVER}:{PORT + 1}", "--file",
                                str(blob), "--once", "--plot", str(served))
        assert server.stderr is not None
        read_until(server.stderr, b"listening")
        got = lab.run("client", ["curl", "-sS", "--max-time", "20", "--http0.9", "-o",
                                 "/dev/null", "-w", "%{size_download}",
                                 f"http://{SERVER}:{PORT + 1}/"], capture_output=True, text=True,
                      timeout=60)
        assert got.stdout == "150000", got.stderr
        _, err = server.communicate(timeout=WAIT)
        assert server.returncode == 0, err
        text = served.read_text()
        assert "Time-sequence graph: our data" in text and 'class="cwnd"' in text
    finally:
        finish(lab)
