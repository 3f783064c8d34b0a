"""The handshake floor figure (tcpscapy/bench/floor.py): a bare AF_PACKET handshake."""

from __future__ import annotations

import math
import struct

import pytest

from tcpscapy.bench import __main__ as runner
from tcpscapy.bench import floor
from tcpscapy.lab import Lab


def test_checksum_is_the_internet_checksum() -> None:
    # RFC 1071 §3's example words sum to 0xddf2; the checksum is its complement.
    assert floor.checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0,
                                   bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])))
    struct.pack_into("!H", header, 10, floor.checksum(bytes(header)))
    assert floor.checksum(bytes(header)) == 0  # a header with its checksum sums to zero
    assert floor.checksum(b"\x01") == ~0x0100 & 0xFFFF  # an odd byte is padded on the right


def test_the_floor_has_ratios_against_the_kernel_and_tcpscapy() -> None:
    rows = [runner.Row(floor.FLOOR, "µs", [25.0]), runner.Row(floor.FLOOR_KERNEL, "µs", [10.0]),
            runner.Row(runner.wire.CONNECT_TCPSCAPY, "µs", [100.0])]
    ratios = runner.ratio_table(rows)
    assert "| bare AF_PACKET floor / kernel connect() (floor lab) | 2.50x |" in ratios
    assert "| tcpscapy.connect() / bare AF_PACKET floor | 4.00x |" in ratios


@pytest.mark.wire
def test_the_floor_and_the_kernel_give_numbers_and_the_lab_goes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floor, "HANDSHAKES", 20)
    monkeypatch.setattr(floor, "WARMUP", 2)
    made: list[Lab] = []
    original = Lab.up

    def remember(self: Lab, sysctls: object = ()) -> Lab:
        made.append(self)
        return original(self)

    monkeypatch.setattr(Lab, "up", remember)
    bare = floor.bare_handshake_us()
    kernel = floor.kernel_connect_us()
    for value in (bare, kernel):
        assert math.isfinite(value) and 0 < value < 1e6, value
    assert made and not made[0].exists()
