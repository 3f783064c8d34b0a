"""Start, stop and talk to a routed lab's impairment process (tcpscapy.impair.daemon).

The process belongs to the lab, not to whoever started it: it runs in the router namespace
in a session of its own (so a Ctrl-C at the terminal that ran `lab path` leaves it alone),
its pid file and control socket live in the lab's runtime directory, and `lab down` stops
it. Found by pid file and, in case that was lost, by looking through the router's processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcpscapy.impair.daemon import LOG_NAME, MODULE, PIDFILE_NAME, SOCKET_NAME, remove_rules
from tcpscapy.impair.model import DIRECTIONS, NEUTRAL, PathError
from tcpscapy.lab import LabError, LabUsageError

if TYPE_CHECKING:
    from tcpscapy.routed import RoutedLab

START_TIMEOUT = 30.0  # a busy 2-core machine imports scapy-free Python in ~1 s; be generous
STOP_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
LOCK_NAME = "path.lock"


def _ours(lab: RoutedLab, pid: int) -> bool:
    """True if `pid` is this lab's impairment process (not a recycled pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in argv and str(lab.runtime_dir).encode() in argv


def _pids(lab: RoutedLab) -> set[int]:
    pids: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((lab.runtime_dir / PIDFILE_NAME).read_text()))
    if os.path.exists(f"/run/netns/{lab.router_ns}"):
        res = subprocess.run(["ip", "netns", "pids", lab.router_ns], capture_output=True,
                             text=True)
        pids.update(int(p) for p in res.stdout.split() if p.isdigit())
    return {pid for pid in pids if _ours(lab, pid)}


def running(lab: RoutedLab) -> bool:
    return bool(_pids(lab))


def start(lab: RoutedLab) -> None:
    """Start the process if none runs; return once it answers on its control socket."""
    if running(lab):
        return
    lab._present_ns("router")  # LabError if the lab is not up: nothing made before that
    rundir = lab.runtime_dir
    rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(rundir / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `lab path` at once start one process
        if not running(lab):
            _spawn(lab)


def _spawn(lab: RoutedLab) -> None:
    rundir = lab.runtime_dir
    for name in (SOCKET_NAME, PIDFILE_NAME):
        (rundir / name).unlink(missing_ok=True)
    with open(rundir / LOG_NAME, "ab") as log:
        proc = lab.popen("router", [sys.executable, "-m", MODULE, "--dir", str(rundir),
                                    "--netns", lab.router_ns],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"the path impairment did not start: {_last_log_line(lab)}")
        if (rundir / PIDFILE_NAME).exists():
            with contextlib.suppress(LabError):
                request(lab, {"op": "get"})
                return
        time.sleep(0.05)
    stop(lab)
    raise LabError(f"the path impairment did not answer within {START_TIMEOUT:g} s")


def stop(lab: RoutedLab) -> None:
    """Stop the process (SIGTERM, then SIGKILL), remove any rules it left. Idempotent."""
    had_pidfile = (lab.runtime_dir / PIDFILE_NAME).exists()
    for pid in _pids(lab):
        _terminate(pid)
    if had_pidfile and os.path.exists(f"/run/netns/{lab.router_ns}"):
        remove_rules(lambda *a: subprocess.run(
            ["ip", "netns", "exec", lab.router_ns, "iptables", "-w", *a],
            capture_output=True, text=True))
    for name in (SOCKET_NAME, PIDFILE_NAME):
        (lab.runtime_dir / name).unlink(missing_ok=True)


def _terminate(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
            if select.select([pidfd], [], [], wait)[0]:
                return  # it exited (a zombie of ours is reaped by Lab._stop_children)
    finally:
        os.close(pidfd)


def request(lab: RoutedLab, message: dict[str, Any]) -> dict[str, Any]:
    """One request to the process; its answer, or LabError."""
    path = lab.runtime_dir / SOCKET_NAME
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(REQUEST_TIMEOUT)
            s.connect(str(path))
            s.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
    except (OSError, ValueError) as e:
        raise LabError(f"the path impairment of lab {lab.prefix!r} does not answer "
                       f"({e.__class__.__name__}): see {lab.runtime_dir / LOG_NAME}") from None
    if not answer.get("ok"):
        raise LabUsageError(answer.get("error", "the path impairment refused the request"))
    return dict(answer)


def configure(lab: RoutedLab, direction: str = "both", clear: bool = False,
              **params: Any) -> dict[str, Any]:
    """Change the impairment of one direction or both (starting the process if needed)."""
    if direction not in (*DIRECTIONS, "both"):
        raise LabUsageError(f"unknown direction {direction!r}: to-server, to-client or both")
    try:
        NEUTRAL.changed(**params)  # refuse bad values before starting anything
    except PathError as e:
        raise LabUsageError(str(e)) from None
    start(lab)
    return request(lab, {"op": "set", "direction": direction, "clear": clear,
                         "params": params})


def path_status(lab: RoutedLab) -> dict[str, Any] | None:
    """The process's settings and counters; None when none runs."""
    if not running(lab):
        return None
    try:
        answer = request(lab, {"op": "get"})
    except LabError as e:
        return {"running": True, "error": str(e)}
    answer.pop("ok", None)
    return {"running": True, **answer}


def _last_log_line(lab: RoutedLab) -> str:
    with contextlib.suppress(OSError):
        lines = (lab.runtime_dir / LOG_NAME).read_text(errors="replace").splitlines()
        for line in reversed(lines):
            if line.strip():
                return line.strip()
    return "no log"
