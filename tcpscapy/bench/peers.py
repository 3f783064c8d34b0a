"""The programs a wire benchmark runs inside the lab's hosts, one process each.

    ip netns exec HOST python -m tcpscapy.bench.peers ROLE [ARGS]   (started by `Peer`)

A peer prints one JSON line when it is ready, then answers each JSON request
line on stdin with one JSON line, and exits at EOF. Roles:

- `kernel-servers ADDR`: kernel listeners on ADDR, one thread each. `close`
  accepts and closes; `discard` reads to EOF and closes; `sink` reads to EOF,
  answers the byte count (8 bytes) and closes; `source` reads an 8-byte size and
  sends that many bytes. Ready line: their ports.
- `tcpscapy-server ADDR [own-port]`: tcpscapy.listen() in an accept+close loop.
  Requests get {"accepted", "cpu" (this process's CPU seconds), "received",
  "foreign" (segments its loop decoded for itself, for other ports)}. With
  `own-port`, its packet sockets see only its own port's segments, as the
  kernel's fan-out (PACKET_FANOUT_HASH) would hand each worker only its flows.
- `tcpscapy-holder ADDR [TRACE_LIMIT]`: tcpscapy.listen() that keeps every
  connection it accepts, idle. Requests get {"held", "rss_kb"}.
- `client`: kernel and Scapy clients, driven by requests (see `Client`).

Every loop is bounded: by the request's count, by socket timeouts, and by the
lab, which stops its processes when it is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from tcpscapy.lab import Lab

SOCKET_TIMEOUT = 5.0  # no single connect or recv in a benchmark may hang longer
CHUNK = 1 << 20
ANSWER_TIMEOUT = 120.0  # seconds a peer may take to answer one request
Json = dict[str, Any]


# -- the parent's side -------------------------------------------------------------------


class PeerError(RuntimeError):
    """A peer did not start or did not answer."""


class Peer:
    """A peer process in a lab host; `ask()` sends one request and returns its answer."""

    def __init__(self, lab: Lab, host: str, role: str, *args: str) -> None:
        self.proc = lab.popen(host, [sys.executable, "-m", "tcpscapy.bench.peers", role, *args],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.role = role
        self.ready = self._read()

    def _read(self) -> Json:
        out = self.proc.stdout
        assert out is not None
        line = _readline(out, ANSWER_TIMEOUT)
        if not line:
            code = self.proc.poll()
            why = f"did not answer in {ANSWER_TIMEOUT:g} s" if code is None else \
                f"exited (code {code})"
            raise PeerError(f"benchmark peer {self.role} {why}")
        answer: Json = json.loads(line)
        if "error" in answer:
            raise PeerError(f"benchmark peer {self.role}: {answer['error']}")
        return answer

    def ask(self, **request: Any) -> Json:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        return self._read()

    def stop(self, timeout: float = 10.0) -> None:
        """Close its stdin (it exits), then wait; terminate it if it does not."""
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _readline(stream: IO[str], timeout: float) -> str:
    """One line from a peer, or '' if it sent none within `timeout` (it is then stuck)."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


# -- the peers ---------------------------------------------------------------------------


def _reply(obj: Json) -> None:
    print(json.dumps(obj), flush=True)


def _serve_requests(answer: Callable[[Json], Json]) -> None:
    """Answer each request line on stdin until EOF; a failure is answered, not raised."""
    for line in sys.stdin:
        try:
            _reply(answer(json.loads(line)))
        except Exception as exc:
            _reply({"error": f"{type(exc).__name__}: {exc}"})


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            break
        data += more
    return data


def _recv_some(conn: socket.socket) -> bytes:
    more = conn.recv(CHUNK)
    if not more:
        raise ConnectionError("the server closed the kept-alive connection")
    return more


def _drain(conn: socket.socket) -> int:
    buf = bytearray(CHUNK)
    total = 0
    while n := conn.recv_into(buf):
        total += n
    return total


def _handle_close(conn: socket.socket) -> None:
    pass


def _handle_discard(conn: socket.socket) -> None:
    _drain(conn)


def _handle_sink(conn: socket.socket) -> None:
    conn.sendall(_drain(conn).to_bytes(8, "big"))


_ZEROS = memoryview(bytes(CHUNK))


def _handle_source(conn: socket.socket) -> None:
    left = int.from_bytes(_recv_exactly(conn, 8), "big")
    while left > 0:
        left -= conn.send(_ZEROS[: min(left, CHUNK)])


PAGE = bytes(range(32, 127)) * 6 + b"\n"  # 571 bytes: what both keep-alive servers serve


def _handle_http(conn: socket.socket) -> None:
    """A keep-alive HTTP/1.1 server at its simplest: every request head gets PAGE, the
    whole response in one send (what a kernel server such as nginx does)."""
    response = (b"HTTP/1.1 200 OK\r\nServer: kernel\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n" % len(PAGE)) + PAGE
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            more = conn.recv(CHUNK)
            if not more:
                return
            buf += more
        buf = buf.split(b"\r\n\r\n", 1)[1]
        conn.sendall(response)


KERNEL_HANDLERS: dict[str, Callable[[socket.socket], None]] = {
    "close": _handle_close,
    "discard": _handle_discard,
    "sink": _handle_sink,
    "source": _handle_source,
    "http": _handle_http,
}


def _accept_loop(srv: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = srv.accept()
        conn.settimeout(SOCKET_TIMEOUT)
        try:
            handle(conn)
        except OSError:
            pass  # a reset or a timeout ends that connection, not the server
        finally:
            conn.close()


def kernel_servers(addr: str) -> None:
    ports = {}
    for mode, handle in KERNEL_HANDLERS.items():
        srv = socket.create_server((addr, 0), backlog=4096)
        ports[mode] = srv.getsockname()[1]
        threading.Thread(target=_accept_loop, args=(srv, handle), daemon=True).start()
    _reply(ports)
    _serve_requests(lambda _: ports)


def tcpscapy_server(addr: str, feed: str = "all") -> None:
    import tcpscapy.errors
    from tcpscapy.io.driver import default_driver

    listener = tcpscapy.listen(0, addr, backlog=4096)
    if feed == "own-port":
        _own_port_only(addr, listener.port)
    accepted = 0

    def loop() -> None:
        nonlocal accepted
        with contextlib.suppress(tcpscapy.errors.ConnectionClosed):  # closed at exit
            while True:
                listener.accept().close()
                accepted += 1

    threading.Thread(target=loop, daemon=True).start()
    _reply({"port": listener.port})
    stats = default_driver().stats  # what the loop decoded: its own segments, and others'
    _serve_requests(lambda _: {"accepted": accepted, "cpu": time.process_time(),
                               "received": stats.received, "foreign": stats.foreign})


def _port_filter(dst_ip: str, port: int) -> bytes:
    """Classic BPF for Ethernet frames: `ip and tcp and dst host DST_IP and dst port PORT`."""
    from tcpscapy.io.rawsock import ETH_HLEN, ETH_P_IP, RECV_BUFFER

    dst = int.from_bytes(socket.inet_aton(dst_ip), "big")
    program = [
        (0x28, 0, 0, 12),  # ldh [12]              EtherType
        (0x15, 0, 8, ETH_P_IP),  # jeq IPv4, else drop
        (0x30, 0, 0, ETH_HLEN + 9),  # ldb [23]    IP protocol
        (0x15, 0, 6, socket.IPPROTO_TCP),  # jeq TCP, else drop
        (0x20, 0, 0, ETH_HLEN + 16),  # ld [30]    IP destination
        (0x15, 0, 4, dst),  # jeq DST_IP, else drop
        (0xB1, 0, 0, ETH_HLEN),  # ldxb 4*([14]&0xf)  IP header length
        (0x48, 0, 0, ETH_HLEN + 2),  # ldh [x+16] TCP destination port
        (0x15, 0, 1, port),  # jeq PORT, else drop
        (0x06, 0, 0, RECV_BUFFER),  # ret: keep
        (0x06, 0, 0, 0),  # ret 0: drop
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _own_port_only(addr: str, port: int) -> None:
    """Narrow the driver's packet sockets to one port (an experiment: reads the driver's
    private reader list; the filter belongs to the socket, so a dup of its fd sets it)."""
    from tcpscapy.io.driver import default_driver
    from tcpscapy.io.rawsock import _attach_filter

    drv = default_driver()
    for link in drv._reader_list:
        with socket.socket(fileno=os.dup(link.fileno())) as sock:
            _attach_filter(sock, _port_filter(addr, port))


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def tcpscapy_holder(addr: str, trace_limit: str = "default") -> None:
    import tcpscapy.errors

    options: dict[str, Any] = {} if trace_limit == "default" else {"trace_limit": int(trace_limit)}
    listener = tcpscapy.listen(0, addr, backlog=65535, **options)
    held: list[Any] = []

    def loop() -> None:
        with contextlib.suppress(tcpscapy.errors.ConnectionClosed):
            while True:
                held.append(listener.accept())

    threading.Thread(target=loop, daemon=True).start()
    _reply({"port": listener.port})
    _serve_requests(lambda _: {"held": len(held), "rss_kb": _rss_kb()})
    os._exit(0)  # the kernel clients are gone: no FIN exchange to wait for


class Client:
    """Kernel and Scapy clients in the client host. Requests (`op` and its fields):

    - cycles host ports count threads: `threads` threads (spread over `ports`)
      connect, read to EOF (the server closes first, so no TIME-WAIT piles up
      here) and close, `count` in all; answer {"seconds": wall time, "errors",
      "cpu": this process's CPU seconds}.
    - tcplink / sr1 host port count: Scapy handshakes; answer {"samples": seconds}.
    - hold host port count: open `count` connections and keep them; release: reset them.
    """

    def __init__(self) -> None:
        self.held: list[socket.socket] = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def answer(self, req: Json) -> Json:
        op = req.get("op")
        if op == "cycles":
            return self.cycles(req["host"], req["ports"], req["count"], req["threads"])
        if op == "tcplink":
            return {"samples": scapy_tcplink(req["host"], req["port"], req["count"])}
        if op == "sr1":
            return {"samples": scapy_sr1(req["host"], req["port"], req["count"])}
        if op == "hold":
            return self.hold(req["host"], req["port"], req["count"])
        if op == "release":
            return self.release()
        if op == "keepalive":
            return self.keepalive(req["host"], req["port"], req["count"], req["path"])
        raise ValueError(f"unknown request {op!r}")

    def cycles(self, host: str, ports: list[int], count: int, threads: int) -> Json:
        errors = [0] * threads
        start = threading.Barrier(threads + 1)

        def work(i: int, n: int) -> None:
            address = (host, ports[i % len(ports)])  # threads spread over the ports
            start.wait()
            for _ in range(n):
                try:
                    with socket.create_connection(address, SOCKET_TIMEOUT) as s:
                        s.recv(1)
                except OSError:
                    errors[i] += 1

        share = [count // threads + (i < count % threads) for i in range(threads)]
        workers = [threading.Thread(target=work, args=(i, n)) for i, n in enumerate(share)]
        for w in workers:
            w.start()
        cpu = time.process_time()
        start.wait()
        began = time.perf_counter()
        for w in workers:
            w.join()
        return {"seconds": time.perf_counter() - began, "errors": sum(errors),
                "cpu": time.process_time() - cpu}

    def hold(self, host: str, port: int, count: int) -> Json:
        began = time.perf_counter()
        for _ in range(count):
            self.held.append(socket.create_connection((host, port), SOCKET_TIMEOUT))
        return {"held": len(self.held), "seconds": time.perf_counter() - began}

    def keepalive(self, host: str, port: int, count: int, path: str) -> Json:
        """`count` GETs of `path` on one kept-alive connection, each read whole before the
        next is sent (as `ab -k -c1`); answer {"median", "mean": seconds per request,
        "bytes": of a body}. The median is what a busy shared machine leaves readable."""
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        times = []
        with socket.create_connection((host, port), SOCKET_TIMEOUT) as s:
            buf = b""
            for _ in range(count):
                began = time.perf_counter()
                s.sendall(request)
                while b"\r\n\r\n" not in buf:
                    buf += _recv_some(s)
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                while len(buf) < length:
                    buf += _recv_some(s)
                body, buf = buf[:length], buf[length:]
                times.append(time.perf_counter() - began)
        return {"median": statistics.median(times), "mean": sum(times) / count,
                "bytes": len(body)}

    def release(self) -> Json:
        linger_off = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
        for s in self.held:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_off)  # RST, no TIME-WAIT
            s.close()
        released, self.held = len(self.held), []
        return {"released": released}


def client() -> None:
    peer = Client()
    _reply({"ready": True})
    _serve_requests(peer.answer)


# -- Scapy's clients ---------------------------------------------------------------------

_RST_DROP = ["--tcp-flags", "RST", "RST", "-m", "comment", "--comment", "tcpscapy-bench",
             "-j", "DROP"]


def _iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", "5", *args], check=True, capture_output=True, timeout=15)


def scapy_tcplink(host: str, port: int, count: int) -> list[float]:
    """Seconds from TCP_client.tcplink() to ESTABLISHED, `count` times; each then closed.

    The client kernel would reset the handshake Scapy makes behind its back, so
    its RSTs to the server are dropped meanwhile (in the client host only), as
    Scapy's documentation asks.
    """
    from scapy.config import conf
    from scapy.layers.inet import TCP_client
    from scapy.packet import Raw

    conf.verb = 0
    rule = ["-p", "tcp", "-d", host, "--dport", str(port), *_RST_DROP]
    _iptables("-I", "OUTPUT", *rule)
    samples = []
    try:
        for _ in range(count + 1):  # the first one warms Scapy up and is not kept
            began = time.perf_counter()
            link = TCP_client.tcplink(Raw, host, port)  # type: ignore[attr-defined]
            try:
                while link.atmt.state.state != "ESTABLISHED":
                    if time.perf_counter() - began > SOCKET_TIMEOUT:
                        raise TimeoutError(f"TCP_client stuck in {link.atmt.state.state}")
                    time.sleep(0.0001)
                samples.append(time.perf_counter() - began)
            finally:
                link.close()
    finally:
        _iptables("-D", "OUTPUT", *rule)
    return samples[1:]


def scapy_sr1(host: str, port: int, count: int) -> list[float]:
    """Seconds for sr1() of a SYN to return the SYN-ACK, `count` times."""
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP
    from scapy.sendrecv import sr1

    conf.verb = 0
    samples = []
    for i in range(count + 1):  # the first one warms Scapy up and is not kept
        syn = IP(dst=host) / TCP(sport=40000 + i % 20000, dport=port, flags="S")
        began = time.perf_counter()
        answer = sr1(syn, timeout=SOCKET_TIMEOUT)
        took = time.perf_counter() - began
        if answer is None or TCP not in answer or answer[TCP].flags != "SA":
            raise RuntimeError(f"sr1: no SYN-ACK from {host}:{port}")
        samples.append(took)
    return samples[1:]


ROLES: dict[str, Callable[..., None]] = {
    "kernel-servers": kernel_servers,
    "tcpscapy-server": tcpscapy_server,
    "tcpscapy-holder": tcpscapy_holder,
    "client": client,
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ROLES:
        sys.exit(f"usage: python -m tcpscapy.bench.peers {{{','.join(ROLES)}}} [ADDR]")
    try:
        ROLES[argv[0]](*argv[1:])
    except Exception as exc:  # the parent reads one JSON line, whatever happened
        _reply({"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
