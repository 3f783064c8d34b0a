"""What a new user hit in the first hour (issue 16), run as a user would: `tcpscapy ...`
subprocesses in the lab's hosts, against kernel peers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpscapy
from tcpscapy import lab as labmod
from tcpscapy.io.driver import Driver
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    SERVER,
    TCPSCAPY,
    finish,
    json_objects,
    kernel_server,
    lab_processes,
    tcpscapy_run,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "fh"


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    finish(lab)


# -- 1. inside the lab a lab address is fine ----------------------------------------------


def test_inside_the_lab_a_lab_address_is_allowed(net: Lab) -> None:
    assert labmod.outside_lab(SERVER) is not None  # this thread: the host's namespace
    with net.enter("client"):  # as the shell's lab_enter("client") does
        assert labmod.outside_lab(SERVER) is None
    port = kernel_server(net, "greet")
    result = tcpscapy_run(net, "client", "connect", SERVER, str(port), "-q")  # HOST PORT
    assert (result.returncode, result.stdout) == (0, b"hello"), result.stderr
    with net.enter("client"):
        driver = Driver(background=False)  # made in the lab, then used from outside it
    try:
        conn = tcpscapy.connect(SERVER, port, driver=driver, timeout=10)
        assert conn.recv(timeout=10) == b"hello"
        conn.abort()
    finally:
        driver.close(linger=0.5)


# -- 4. --timeout and the ladder agree ---------------------------------------------------


def test_the_timeout_counts_from_the_syn_the_ladder_shows(net: Lab) -> None:
    port = kernel_server(net)
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "--syn", "-j", "DROP"]
    net.run("server", ["iptables", "-I", *rule], check=True)  # gone with the lab
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--timeout", "1.5",
                          "--json")
    assert result.returncode == 5
    objs = json_objects(result.stderr)
    error = next(o for o in objs if o["type"] == "error")
    assert error["message"].endswith("timed out after 1.5 s")
    syn = next(o for o in objs if o["type"] == "segment")
    closed = next(o for o in objs if o["type"] == "state" and o["new"] == "CLOSED")
    assert closed["t"] - syn["t"] >= 1.5, (syn, closed)


# -- 7. --no-fin ---------------------------------------------------------------------------

# Answers b"go" with CHUNKS chunks, PAUSE s apart, but stops as soon as the client half-closes
# (as some servers do): only a client that keeps its side open gets everything.
STOP_ON_HALF_CLOSE = r"""
import select, socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    with c:
        got = b""
        while b"go" not in got and (data := c.recv(100)):
            got += data
        for _ in range(40):
            if select.select([c], [], [], 0.05)[0] and not c.recv(100):
                break
            c.sendall(b"x" * 1000)
"""


def test_no_fin_keeps_our_side_open_until_the_peer_closes(net: Lab) -> None:
    proc = net.popen("server", [sys.executable, "-c", STOP_ON_HALF_CLOSE, SERVER],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    kept = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--send", "go",
                        "--no-fin", "--json")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == b"x" * 40_000
    objs = json_objects(kept.stderr)
    fins = [o for o in objs if o["type"] == "segment" and "F" in o["flags"]]
    assert [f["dir"] for f in fins] == ["in", "out"]  # the peer's FIN came first
    closed = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--send", "go", "-q")
    assert closed.returncode == 0, closed.stderr
    assert len(closed.stdout) < 40_000  # the default half-close stopped it


# -- 2. lab exec passes signals on ---------------------------------------------------------

# Says "ready", then sleeps; SIGTERM makes it exit 42 (a program that cleans up), SIGINT and
# SIGHUP kill it (their default action).
SLEEPER = r"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
signal.signal(signal.SIGINT, signal.SIG_DFL)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 42), (signal.SIGINT, 130),
                                              (signal.SIGHUP, 129)])
def test_lab_exec_forwards_signals_and_returns_the_childs_code(net: Lab, signum: int,
                                                                code: int) -> None:
    proc = subprocess.Popen([*TCPSCAPY, "lab", "exec", "--prefix", net.prefix, "client", "--",
                             sys.executable, "-c", SLEEPER],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code
        assert proc.stderr is not None and "Aborted" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lab_processes(net) == []  # the child did not outlive the wrapper


# -- 3. closed standard streams ------------------------------------------------------------


def _shell(net: Lab, script: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`sh -c SCRIPT` in the client host, "$@" being `tcpscapy ARGS`."""
    return net.run("client", ["sh", "-c", script, "sh", *TCPSCAPY, *args],
                   capture_output=True, timeout=60)


def test_closed_standard_streams(net: Lab) -> None:
    port = str(kernel_server(net))
    no_stderr = _shell(net, 'echo hello | "$@" 2>&-', "connect", SERVER, port)
    assert (no_stderr.returncode, no_stderr.stdout) == (0, b"hello\n")  # the echo is intact
    empty = _shell(net, '"$@" <&-', "connect", SERVER, port, "-q")  # as if empty: FIN at once
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, b"", b"")
    no_stdout = _shell(net, 'echo hello | "$@" >&-', "connect", SERVER, port, "-q")
    assert no_stdout.returncode == 2
    assert no_stdout.stderr.decode().splitlines() == [
        "tcpscapy connect: stdout is closed (>&-): the peer's bytes would be lost; redirect "
        "it instead (>/dev/null to discard them)"]


# -- 9. make demo: the ladder, then the page -------------------------------------------------


def test_demo_shows_the_ladder_then_the_page_on_one_terminal(unique_prefix: str) -> None:
    """stdout and stderr into one pipe, as a terminal shows them: no interleaving."""
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
    result = subprocess.run([sys.executable, str(demo), "--prefix", unique_prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=90)
    assert result.returncode == 0, result.stdout
    text = result.stdout.decode()
    footer = text.index("seq/ack relative to the ISNs")  # the ladder's last line
    page = text.index("HTTP/1.0 200 OK")
    assert footer < text.index("# the page (tcpscapy connect's stdout):") < page
    assert text.rstrip().endswith("</p>")
    assert f"# tcpscapy lab exec --prefix {unique_prefix}" in text


# -- 10. labs take a prefix; lab 7 marks what its excerpt leaves out; the shell -----------

LABS = Path(__file__).resolve().parents[2] / "examples" / "labs"


def test_lab_scripts_take_a_prefix_and_lab_7_marks_its_excerpt(lab_prefix: str) -> None:
    bad = subprocess.run([sys.executable, str(LABS / "01_handshake.py"), "--prefix", "no way!"],
                         cwd=LABS, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "bad lab prefix 'no way!" in bad.stderr  # nothing built
    env = {**os.environ, "TCPSCAPY_LAB_PREFIX": lab_prefix}
    res = subprocess.run([sys.executable, str(LABS / "07_zero_window.py")], cwd=LABS, env=env,
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    used = re.search(rf"\(lab ({lab_prefix}[0-9a-f]{{6}}):", res.stdout)
    assert used is not None, res.stdout
    assert not Lab(used.group(1)).exists()
    excerpt = res.stdout.split("-- the handshake, then the window closing")[1]
    gaps = [int(n) for n in re.findall(r"^ +… (\d+) rows omitted …$", excerpt, re.M)]
    assert len(gaps) == 2 and all(n > 0 for n in gaps), excerpt  # the data, and the rest


def test_the_shell_session_reads_as_the_readme_shows(net: Lab) -> None:
    port = kernel_server(net)
    script = f'c = connect("{SERVER}:{port}")\nc.send("hello"); c.recv()\nc.trace.summary()\n'
    res = net.run("client", [*TCPSCAPY, "shell"], input=script, capture_output=True,
                  text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout)  # the prompt's colours
    assert ">>> b'hello'\n" in out  # the reply alone, no byte count echoed before it
    assert re.search(r"^(>>> )? +0\.000 ms  IP / TCP 10\.77\.0\.1:\d+ > \S+ S$", out, re.M), out
    assert re.search(r"^ +\d+\.\d{3} ms  IP / TCP 10\.77\.0\.1:\d+ > \S+ PA / Raw$", out, re.M)
