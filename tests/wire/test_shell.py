"""tcpscapy.shell on the wire: segments injected into a live connection to a kernel
echo server, the kernel's reaction in the trace, the lab helpers, and `tcpscapy shell`
itself driven through its stdin."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import TCP

from tcpscapy import shell
from tcpscapy.core.segment import RST
from tcpscapy.core.state import State
from tcpscapy.lab import Lab, LabError
from tcpscapy.netns import current_id
from tests.wire.cli_helpers import _default_sigint, close_and_check_nothing_left

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsl"
SERVER = "10.77.0.2"
PORT = 7
MASK = 0xFFFFFFFF


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The lab with a kernel echo server on the server host; nothing of ours left after."""
    proc = lab.popen("server", [sys.executable, "-c", shell.ECHO_SERVER, SERVER, str(PORT)],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        yield lab
    finally:
        close_and_check_nothing_left(lab)


def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def snmp_tcp(lab: Lab, host: str) -> dict[str, int]:
    text = lab.run(host, ["cat", "/proc/net/snmp"], capture_output=True, text=True,
                   check=True).stdout
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
    return dict(zip(names, map(int, values), strict=True))


def test_injected_data_is_acknowledged_and_echoed_by_the_kernel(net: Lab) -> None:
    with net.enter("client"):
        c = shell.connect(f"{SERVER}:{PORT}")
        c.send("hello")
        assert c.recv() == b"hello"
        seq = c.snd_nxt
        sent = c.inject(TCP(flags="PA") / "hi")
        assert (sent[TCP].seq, sent[TCP].ack) == (seq, c.rcv_nxt)
        assert sent[TCP].sport == c.local[1] and sent[TCP].dport == PORT

        def kernel_took_it() -> bool:
            return any(s.ack == (seq + 2) & MASK and s.payload == b"hi"
                       for s in c.records.segments("in"))

        # The kernel acknowledges the two bytes our engine never sent and echoes them.
        assert wait_for(kernel_took_it), c.records.ladder()
        notes = [e.note for e in c.records if e.segment is not None and e.direction == "out"]
        assert notes.count("injected") == 1
        assert c.snd_nxt == seq  # the engine itself knows nothing of it
        c.abort()


def test_a_bad_checksum_is_dropped_by_the_kernel_and_the_good_copy_answered(net: Lab) -> None:
    with net.enter("client"):
        c = shell.connect(f"{SERVER}:{PORT}")
        before = snmp_tcp(net, "server")
        bad = c.fill(TCP(flags="PA") / "zz")
        bad[TCP].chksum = 0xDEAD
        seen = len(c.records.segments("in"))
        c.inject(bad, raw=True)
        time.sleep(0.5)  # the kernel ACKs data within its delayed-ACK time (< 40 ms here)
        assert len(c.records.segments("in")) == seen, c.records.ladder()
        after = snmp_tcp(net, "server")
        assert after["InCsumErrors"] == before["InCsumErrors"] + 1
        (entry,) = [e for e in c.records if e.note.startswith("injected")]
        assert entry.note == "injected raw, bad TCP checksum"

        good = c.fill(TCP(flags="PA") / "zz")  # the same segment with its checksum right
        c.inject(good)
        seq = good[TCP].seq
        assert wait_for(lambda: any(s.ack == (seq + 2) & MASK
                                    for s in c.records.segments("in"))), c.records.ladder()
        c.abort()


def test_an_injected_rst_with_the_exact_sequence_number_resets_the_kernel_side(
        net: Lab) -> None:
    with net.enter("client"):
        c = shell.connect(f"{SERVER}:{PORT}")
        resets = snmp_tcp(net, "server")["EstabResets"]
        sent = c.inject(TCP(flags="R"))
        assert sent[TCP].flags.value == RST and sent[TCP].seq == c.snd_nxt
        assert wait_for(lambda: snmp_tcp(net, "server")["EstabResets"] == resets + 1)
        # Our engine still thinks it is ESTABLISHED: its next segment draws the kernel's RST.
        assert c.state is State.ESTABLISHED
        c.send("anyone?")
        assert wait_for(lambda: c.state is State.CLOSED), c.records.ladder()
        assert any(s.flags & RST for s in c.records.segments("in"))


def test_lab_helpers_build_enter_and_remove_a_lab(unique_prefix: str) -> None:
    home = current_id()
    try:
        the_lab = shell.lab_up(unique_prefix)
        assert the_lab.status()["state"] == "up"
        assert shell.echo_server(PORT) == f"kernel echo server on {SERVER}:{PORT}"
        with pytest.raises(LabError, match=r"did not start: OSError: .*Address already in use"):
            shell.echo_server(PORT)
        assert shell.lab_enter("client") == "now on client (10.77.0.1)"
        assert current_id() != home
        c = shell.connect(SERVER, PORT)
        c.send(b"ping")
        assert c.recv() == b"ping"
        assert "(injected)" not in c.records.ladder()
    finally:
        shell.lab_down()
    assert current_id() == home
    assert not Lab(unique_prefix).exists()


def test_tcpscapy_shell_runs_a_session_from_stdin(net: Lab, tmp_path: Path) -> None:
    svg = f"{tmp_path}/c.svg"
    script = "\n".join([
        f'c = connect("{SERVER}:{PORT}")',
        'c.send("hello")',
        "print('got', c.recv())",
        'p = c.inject(TCP(flags="PA")/"hi")',
        "print('injected', p[TCP].seq == c.snd_nxt)",
        "c.trace.summary()",
        f'c.ladder_svg("{svg}")',
        "print('state', c.state)",
        "c.close()",
        'connect("10.77.0.2:notaport")',
        "",
    ])
    res = net.run("client", [sys.executable, "-m", "tcpscapy", "shell"], input=script,
                  capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "tcpscapy 0.1.0" in res.stdout  # our banner
    assert "got b'hello'" in res.stdout
    assert "injected True" in res.stdout
    assert "state ESTABLISHED" in res.stdout
    assert "10.77.0.1" in res.stdout and "PA / Raw" in res.stdout  # the PacketList summary
    assert "error: bad port 'notaport'" in res.stderr and "Traceback" not in res.stderr
    assert Path(svg).read_text().startswith("<svg")


# -- the ladder as a picture from `tcpscapy listen` --------------------------------------

KERNEL_CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(b"hi")
    assert s.recv(10) == b"hi"
    print(s.getsockname()[1])
"""


def test_listen_writes_each_connections_ladder_as_svg(lab: Lab, tmp_path: Path) -> None:
    base = f"{tmp_path}/ladder.svg"
    server = lab.popen("server", [sys.executable, "-m", "tcpscapy", "listen", "7007",
                                  "--ladder-svg", base, "--max-conns", "4"],
                       stderr=subprocess.PIPE, text=True,
                       preexec_fn=_default_sigint)  # SIGINT below, even from `pytest &`
    assert server.stderr is not None
    assert "listening on" in server.stderr.readline()
    ports = []
    for _ in range(2):
        res = lab.run("client", [sys.executable, "-c", KERNEL_CLIENT, SERVER, "7007"],
                      capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        ports.append(int(res.stdout))
    for port in ports:
        path = f"{tmp_path}/ladder-10.77.0.1-{port}.svg"
        assert wait_for(lambda path=path: _complete_svg(path)), f"no {path}"
        text = Path(path).read_text()
        assert f"10.77.0.1:{port}" in text and "SYN-RECEIVED" in text and "SA seq=0 ack=1" in text
    server.send_signal(2)
    server.wait(10)


def test_listen_once_writes_the_svg_to_the_file_named(lab: Lab, tmp_path: Path) -> None:
    path = f"{tmp_path}/once.svg"
    server = lab.popen("server", [sys.executable, "-m", "tcpscapy", "listen", "7008", "--once",
                                  "--ladder-svg", path], stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None and "listening on" in server.stderr.readline()
    res = lab.run("client", [sys.executable, "-c", KERNEL_CLIENT, SERVER, "7008"],
                  capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert server.wait(15) == 0
    assert _complete_svg(path) and "ESTABLISHED" in Path(path).read_text()


def _complete_svg(path: str) -> bool:
    try:
        return Path(path).read_text().rstrip().endswith("</svg>")
    except FileNotFoundError:
        return False
