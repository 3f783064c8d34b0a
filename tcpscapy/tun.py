"""A point-to-point link of two TUN devices in two namespaces, joined by a relay.

Links without a link layer (TUN, WireGuard, PPP) are where many VPN users run
tcpscapy; this kernel has TUN but no ipip/GRE/WireGuard, so a pair of TUN
devices and a process that copies each packet from one device to the other
stands in for a tunnel (and tests the driver on it):

    python -m tcpscapy.tun NS_A ADDR_A NS_B ADDR_B [--mtu N] [--lifetime S]

creates `tun0` in both namespaces with the addresses (a /24 each), prints
"ready" once both are up, and relays until SIGTERM/SIGINT or `--lifetime`
seconds (bounded, so a forgotten relay ends by itself). Packets are copied as
they come, one read and one write each; the devices disappear with the
relay's exit (or with their namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import time

from tcpscapy import netns

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
DEVICE = "tun0"
LIFETIME = 600.0


def open_tun(name: str = DEVICE) -> int:
    """A TUN device `name` in the calling thread's namespace; its fd (bare IP packets)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        os.set_blocking(fd, False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def up(ns: str, addr: str, mtu: int) -> int:
    with netns.enter(ns):
        fd = open_tun()
    for args in (["addr", "add", f"{addr}/24", "dev", DEVICE],
                 ["link", "set", DEVICE, "mtu", str(mtu), "up"]):
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)
    return fd


def relay(a: int, b: int, deadline: float) -> None:
    """Copy packets between the two fds until `deadline` (monotonic) or a signal."""
    other = {a: b, b: a}
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([a, b], [], [], min(left, 1.0))
        for fd in ready:
            for _ in range(64):  # a burst per turn, then look at the other side
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                # The other side's queue full, or the device gone: dropped, as on a wire.
                with contextlib.suppress(OSError):
                    os.write(other[fd], packet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpscapy.tun", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("ns_a")
    parser.add_argument("addr_a")
    parser.add_argument("ns_b")
    parser.add_argument("addr_b")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--lifetime", type=float, default=LIFETIME)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        a = up(args.ns_a, args.addr_a, args.mtu)
        b = up(args.ns_b, args.addr_b, args.mtu)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"tun: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        relay(a, b, time.monotonic() + args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
