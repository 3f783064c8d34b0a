"""The SVG ladder: well-formed, one arrow per segment, states beside the right rail."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tcpscapy.core import Config, Segment
from tcpscapy.core.stack import Stack
from tcpscapy.sim import Network
from tcpscapy.svg import ladder_svg, write_ladder_svg

NS = "{http://www.w3.org/2000/svg}"


def conversation(drop_first_syn: bool = False):  # type: ignore[no-untyped-def]
    config = Config(secret=b"svg", msl=0.5)
    client, server = Stack(config), Stack(config)
    net = Network({"10.0.0.1": client, "10.0.0.2": server})
    lost = {"done": not drop_first_syn}

    def drop(seg: Segment) -> bool:
        if not lost["done"] and seg.flags == 0x02:
            lost["done"] = True
            return True
        return False

    net.drop = drop
    listener = server.listen("10.0.0.2", 80)
    conn = client.connect(("10.0.0.1", 40000), ("10.0.0.2", 80), 0.0)
    trace = net.follow(conn)
    net.run(lambda: listener.ready > 0, timeout=5)
    conn.close()
    peer = listener.accept()
    assert peer is not None
    peer.close()
    net.run()
    return trace


def test_svg_is_well_formed_and_draws_every_segment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = conversation()
    path = tmp_path / "ladder.svg"
    write_ladder_svg(trace, path, title="a <handshake> & close")
    root = ET.parse(path).getroot()
    arrows = [e for e in root.iter(f"{NS}line") if e.get("marker-end")]
    assert len(arrows) == len(trace.segments())
    texts = [e.text or "" for e in root.iter(f"{NS}text")]
    assert "a <handshake> & close" in texts  # escaped in the file, intact when parsed
    assert any(t.startswith("S seq=0") and "<mss 1460" in t for t in texts)
    assert "SYN-SENT → ESTABLISHED" in texts and "TIME-WAIT → CLOSED" in texts
    assert any(t.startswith("handshake RTT") for t in texts)


def test_lost_segments_are_dashed_and_directions_point_the_right_way() -> None:
    trace = conversation(drop_first_syn=True)
    root = ET.fromstring(ladder_svg(trace))
    arrows = [e for e in root.iter(f"{NS}line") if e.get("marker-end")]
    assert arrows[0].get("stroke-dasharray") and not arrows[1].get("stroke-dasharray")
    directions = [e.direction for e in trace if e.segment is not None]
    for arrow, direction in zip(arrows, directions, strict=True):
        going_right = float(arrow.get("x2", 0)) > float(arrow.get("x1", 0))
        assert going_right == (direction == "out")
