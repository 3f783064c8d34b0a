"""Segment in -> segments out and new state, for every state (RFC 9293 §3.10.7).

Each row names a fixture state, the segment the peer sends (built from the
connection's numbers before it arrives) and what must come back. Expected
segments are (flags, seq, ack) with `snd`/`rcv` meaning SND.NXT / RCV.NXT as they
were before the segment arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tcpscapy.core import ACK, FIN, PSH, RST, SYN, Options, State, flag_str
from tcpscapy.core.connection import Connection
from tcpscapy.core.segment import Segment
from tcpscapy.core.seq import seq_add

from . import states
from .states import PEER_ISN, drain, from_peer


@dataclass(frozen=True)
class Before:
    snd: int
    rcv: int
    una: int
    iss: int


Inbound = Callable[[Before], Segment]
Expected = Callable[[Before], list[tuple[str, int, int]]]

# Segments the peer may send, relative to the connection's numbers.
SYN_IN_WINDOW: Inbound = lambda b: from_peer(SYN, b.rcv)  # noqa: E731
ACK_NOTHING_NEW: Inbound = lambda b: from_peer(ACK, b.rcv, b.snd)  # noqa: E731
ACK_TOO_FAR: Inbound = lambda b: from_peer(ACK, b.rcv, b.snd + 1000)  # noqa: E731
FIN_IN: Inbound = lambda b: from_peer(FIN | ACK, b.rcv, b.snd)  # noqa: E731
FIN_OLD: Inbound = lambda b: from_peer(FIN | ACK, b.rcv - 1, b.snd)  # noqa: E731
RST_EXACT: Inbound = lambda b: from_peer(RST, b.rcv)  # noqa: E731
RST_IN_WINDOW: Inbound = lambda b: from_peer(RST, b.rcv + 100)  # noqa: E731
RST_OUT_OF_WINDOW: Inbound = lambda b: from_peer(RST, b.rcv - 1000)  # noqa: E731
DATA: Inbound = lambda b: from_peer(PSH | ACK, b.rcv, b.snd, b"0123456789")  # noqa: E731
DATA_OLD: Inbound = lambda b: from_peer(PSH | ACK, b.rcv - 100, b.snd, b"0123456789")  # noqa: E731
DATA_NO_ACK: Inbound = lambda b: from_peer(PSH, b.rcv, 0, b"0123456789")  # noqa: E731

NOTHING: Expected = lambda b: []  # noqa: E731
ACK_BACK: Expected = lambda b: [("A", b.snd, b.rcv)]  # noqa: E731  (also the challenge ACK)

ROWS: list[tuple[str, str, Inbound, Expected, State]] = [
    # SYN-SENT (RFC 9293 §3.10.7.3)
    ("syn_sent", "SYN-ACK", lambda b: from_peer(SYN | ACK, PEER_ISN, b.iss + 1),
     lambda b: [("A", b.iss + 1, PEER_ISN + 1)], State.ESTABLISHED),
    ("syn_sent", "SYN (simultaneous open)", lambda b: from_peer(SYN, PEER_ISN),
     lambda b: [("SA", b.iss, PEER_ISN + 1)], State.SYN_RECEIVED),
    ("syn_sent", "ACK of an old ISN", lambda b: from_peer(ACK, PEER_ISN, b.iss),
     lambda b: [("R", b.iss, 0)], State.SYN_SENT),
    ("syn_sent", "SYN-ACK acking too much", lambda b: from_peer(SYN | ACK, PEER_ISN, b.iss + 9),
     lambda b: [("R", b.iss + 9, 0)], State.SYN_SENT),
    ("syn_sent", "RST+ACK (refused)", lambda b: from_peer(RST | ACK, 0, b.iss + 1),
     NOTHING, State.CLOSED),
    ("syn_sent", "RST without ACK", lambda b: from_peer(RST, PEER_ISN), NOTHING, State.SYN_SENT),
    ("syn_sent", "RST with a bad ACK", lambda b: from_peer(RST | ACK, 0, b.iss + 5),
     NOTHING, State.SYN_SENT),
    ("syn_sent", "ACK without SYN", lambda b: from_peer(ACK, PEER_ISN, b.iss + 1),
     NOTHING, State.SYN_SENT),
    # SYN-RECEIVED (passive)
    ("syn_received", "ACK of our SYN", lambda b: from_peer(ACK, b.rcv, b.iss + 1),
     NOTHING, State.ESTABLISHED),
    ("syn_received", "third ACK with data",
     lambda b: from_peer(PSH | ACK, b.rcv, b.iss + 1, b"GET /"),
     lambda b: [("A", b.iss + 1, b.rcv + 5)], State.ESTABLISHED),
    ("syn_received", "unacceptable ACK", lambda b: from_peer(ACK, b.rcv, b.iss + 7),
     lambda b: [("R", b.iss + 7, 0)], State.SYN_RECEIVED),
    ("syn_received", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("syn_received", "RST in window", RST_IN_WINDOW, ACK_BACK, State.SYN_RECEIVED),
    # The SYN-ACK's window field says at most 65,535 (never scaled): that is the window.
    ("syn_received", "RST at the SYN-ACK window's last byte",
     lambda b: from_peer(RST, b.rcv + 0xFFFE), ACK_BACK, State.SYN_RECEIVED),
    ("syn_received", "RST just past the SYN-ACK's window",
     lambda b: from_peer(RST, b.rcv + 0xFFFF), NOTHING, State.SYN_RECEIVED),
    ("syn_received", "data just past the SYN-ACK's window",
     lambda b: from_peer(PSH | ACK, b.rcv + 0xFFFF, b.iss + 1, b"x"), ACK_BACK,
     State.SYN_RECEIVED),
    ("syn_received", "SYN again", lambda b: from_peer(SYN, PEER_ISN),
     lambda b: [("SA", b.iss, PEER_ISN + 1)], State.SYN_RECEIVED),
    ("syn_received", "FIN with the third ACK",
     lambda b: from_peer(FIN | ACK, b.rcv, b.iss + 1),
     lambda b: [("A", b.iss + 1, b.rcv + 1)], State.CLOSE_WAIT),
    ("syn_received", "old data", DATA_OLD, ACK_BACK, State.SYN_RECEIVED),
    # ESTABLISHED
    ("established", "SYN", SYN_IN_WINDOW, ACK_BACK, State.ESTABLISHED),
    ("established", "ACK", ACK_NOTHING_NEW, NOTHING, State.ESTABLISHED),
    ("established", "ACK for unsent data", ACK_TOO_FAR, ACK_BACK, State.ESTABLISHED),
    ("established", "FIN", FIN_IN, lambda b: [("A", b.snd, b.rcv + 1)], State.CLOSE_WAIT),
    ("established", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("established", "RST in window", RST_IN_WINDOW, ACK_BACK, State.ESTABLISHED),
    ("established", "RST out of window", RST_OUT_OF_WINDOW, NOTHING, State.ESTABLISHED),
    # RFC 5961 judges the RST's own SEG.SEQ, not the seq after trimming old bytes off.
    ("established", "RST with a byte before RCV.NXT",
     lambda b: from_peer(RST | FIN, b.rcv - 1, 0, b"x"), ACK_BACK, State.ESTABLISHED),
    ("established", "data", DATA, lambda b: [("A", b.snd, b.rcv + 10)], State.ESTABLISHED),
    ("established", "old data", DATA_OLD, ACK_BACK, State.ESTABLISHED),
    ("established", "data without ACK", DATA_NO_ACK, NOTHING, State.ESTABLISHED),
    ("established", "data and FIN",
     lambda b: from_peer(FIN | PSH | ACK, b.rcv, b.snd, b"bye"),
     lambda b: [("A", b.snd, b.rcv + 4)], State.CLOSE_WAIT),
    # FIN-WAIT-1
    ("fin_wait_1", "ACK of our FIN", ACK_NOTHING_NEW, NOTHING, State.FIN_WAIT_2),
    ("fin_wait_1", "FIN not acking ours", lambda b: from_peer(FIN | ACK, b.rcv, b.una),
     lambda b: [("A", b.snd, b.rcv + 1)], State.CLOSING),
    ("fin_wait_1", "FIN acking ours", FIN_IN,
     lambda b: [("A", b.snd, b.rcv + 1)], State.TIME_WAIT),
    ("fin_wait_1", "data", lambda b: from_peer(PSH | ACK, b.rcv, b.una, b"0123456789"),
     lambda b: [("A", b.snd, b.rcv + 10)], State.FIN_WAIT_1),
    ("fin_wait_1", "SYN", SYN_IN_WINDOW, ACK_BACK, State.FIN_WAIT_1),
    ("fin_wait_1", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("fin_wait_1", "RST in window", RST_IN_WINDOW, ACK_BACK, State.FIN_WAIT_1),
    # FIN-WAIT-2
    ("fin_wait_2", "FIN", FIN_IN, lambda b: [("A", b.snd, b.rcv + 1)], State.TIME_WAIT),
    ("fin_wait_2", "data", DATA, lambda b: [("A", b.snd, b.rcv + 10)], State.FIN_WAIT_2),
    ("fin_wait_2", "SYN", SYN_IN_WINDOW, ACK_BACK, State.FIN_WAIT_2),
    ("fin_wait_2", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("fin_wait_2", "old data", DATA_OLD, ACK_BACK, State.FIN_WAIT_2),
    # CLOSE-WAIT
    ("close_wait", "FIN again", FIN_OLD, ACK_BACK, State.CLOSE_WAIT),
    ("close_wait", "SYN", SYN_IN_WINDOW, ACK_BACK, State.CLOSE_WAIT),
    ("close_wait", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("close_wait", "RST in window", RST_IN_WINDOW, ACK_BACK, State.CLOSE_WAIT),
    # CLOSING
    ("closing", "ACK of our FIN", ACK_NOTHING_NEW, NOTHING, State.TIME_WAIT),
    ("closing", "FIN again", FIN_OLD, ACK_BACK, State.CLOSING),
    ("closing", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("closing", "SYN", SYN_IN_WINDOW, ACK_BACK, State.CLOSING),
    # LAST-ACK
    ("last_ack", "ACK of our FIN", ACK_NOTHING_NEW, NOTHING, State.CLOSED),
    ("last_ack", "FIN again", FIN_OLD, ACK_BACK, State.LAST_ACK),
    ("last_ack", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("last_ack", "RST in window", RST_IN_WINDOW, ACK_BACK, State.LAST_ACK),
    # TIME-WAIT
    ("time_wait", "FIN again", FIN_OLD, ACK_BACK, State.TIME_WAIT),
    ("time_wait", "RST exact", RST_EXACT, NOTHING, State.CLOSED),
    ("time_wait", "RST in window", RST_IN_WINDOW, ACK_BACK, State.TIME_WAIT),
    ("time_wait", "SYN", SYN_IN_WINDOW, ACK_BACK, State.TIME_WAIT),
    ("time_wait", "old data", DATA_OLD, ACK_BACK, State.TIME_WAIT),
    # CLOSED (a connection object that has ended answers nothing; the stack does)
    ("closed_by_reset", "data", DATA, NOTHING, State.CLOSED),
]


def outline(segments: list[Segment]) -> list[tuple[str, int, int]]:
    return [(flag_str(s.flags), s.seq, s.ack) for s in segments]


def wrap(expected: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [(f, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF) for f, seq, ack in expected]


@pytest.mark.parametrize(("fixture", "what", "inbound", "expected", "new_state"), ROWS,
                         ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_segment_table(fixture: str, what: str, inbound: Inbound, expected: Expected,
                       new_state: State) -> None:
    conn: Connection = getattr(states, fixture)()
    before = Before(conn.snd_nxt, conn.rcv_nxt, conn.snd_una, conn.iss)
    conn.receive(inbound(before), 1.0)
    assert outline(drain(conn, 1.0)) == wrap(expected(before)), what
    assert conn.state is new_state, what


def test_fixtures_are_in_their_states() -> None:
    for name in ("syn_sent", "syn_received", "established", "fin_wait_1", "fin_wait_2",
                 "closing", "time_wait", "close_wait", "last_ack"):
        assert str(getattr(states, name)().state) == name.upper().replace("_", "-")


def test_state_names_read_as_in_the_rfc() -> None:
    assert str(State.SYN_SENT) == "SYN-SENT"
    assert [str(s) for s in State] == [
        "CLOSED", "LISTEN", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1",
        "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT"]


def test_syn_options_follow_what_the_peer_offered() -> None:
    conn = states.new(states.CONFIG.with_(timestamps=True))
    conn.accept_syn(from_peer(SYN, PEER_ISN, options=Options(mss=1200, sack_permitted=True)), 0.0)
    synack = drain(conn)[0]
    # No window scale or timestamps unless the peer sent them (RFC 7323); MSS always.
    assert synack.options == Options(mss=1460, sack_permitted=True)
    assert conn.snd_mss == 1200 and conn.sack_ok and not conn.ts_ok and conn.snd_wscale == 0


def test_mss_defaults_to_536_without_the_option() -> None:
    conn = states.syn_sent()
    conn.receive(from_peer(SYN | ACK, PEER_ISN, conn.iss + 1), 0.0)
    assert conn.snd_mss == 536
    assert all(s.options.mss is None for s in drain(conn))  # never MSS on a non-SYN


def test_window_scale_only_when_both_sides_send_it() -> None:
    conn = states.syn_sent()
    conn.receive(from_peer(SYN | ACK, PEER_ISN, conn.iss + 1, window=1000,
                           options=Options(mss=1460, wscale=3)), 0.0)
    assert (conn.snd_wscale, conn.rcv_wscale) == (3, 7)
    assert conn.snd_wnd == 1000  # the SYN-ACK's own window is never scaled
    conn.receive(from_peer(ACK, conn.rcv_nxt, conn.snd_nxt, window=1000), 0.0)
    assert conn.snd_wnd == 8000
    unscaled = states.established()
    assert (unscaled.snd_wscale, unscaled.rcv_wscale) == (0, 0)


def test_unknown_options_are_ignored() -> None:
    conn = states.established()
    seg = from_peer(PSH | ACK, conn.rcv_nxt, conn.snd_nxt, b"hi",
                    options=Options(unknown=((99, b"\x01\x02"),)))
    conn.receive(seg, 0.0)
    assert outline(drain(conn)) == [("A", conn.snd_nxt, conn.rcv_nxt)]
    assert conn.rcv_nxt == seq_add(seg.seq, 2)


def test_the_rfc_5961_section_5_ack_shares_the_challenge_ack_limit() -> None:
    """An ACK for data never sent (or far behind SND.UNA) is dropped and answered
    (RFC 5961 §5.2), but as a challenge ACK: within the §7 limit it shares with the
    RST and SYN challenges, as Linux does, so forged ACKs cannot draw one ACK each."""
    conn = states.established(states.CONFIG.with_(challenge_ack_limit=2))
    before = Before(conn.snd_nxt, conn.rcv_nxt, conn.snd_una, conn.iss)
    for _ in range(3):
        conn.receive(ACK_TOO_FAR(before), 1.0)
    conn.receive(RST_IN_WINDOW(before), 1.0)
    assert outline(drain(conn, 1.0)) == wrap(ACK_BACK(before) * 2)  # the limit, no more
    conn.receive(from_peer(ACK, before.rcv, before.una - 2**30), 2.0)  # far behind SND.UNA
    assert outline(drain(conn, 2.0)) == wrap(ACK_BACK(before))  # a new second, a new budget
    assert conn.state is State.ESTABLISHED
