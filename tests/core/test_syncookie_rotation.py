"""Cookie keys rotate every hour without breaking cookies in flight."""

from __future__ import annotations

from tcpscapy.core import ACK, SYN, Config, Options, Segment
from tcpscapy.core.seq import seq_add
from tcpscapy.core.syncookies import ROTATION, SynCookies, epoch_keys

CFG = Config(secret=b"rotation-secret!", syncookies="always")


def syn() -> Segment:
    return Segment("10.0.0.1", "10.0.0.2", 40000, 80, 1234, 0, SYN, 65535,
                   Options(mss=1460, timestamps=(100, 0), sack_permitted=True, wscale=7))


def ack_for(synack: Segment) -> Segment:
    return Segment("10.0.0.1", "10.0.0.2", 40000, 80, 1235, seq_add(synack.seq, 1), ACK, 502,
                   Options(timestamps=(101, synack.options.timestamps[0])))  # type: ignore[index]


def test_keys_differ_from_one_period_to_the_next() -> None:
    cookies = SynCookies(CFG)
    assert cookies.keys(0.0) != cookies.keys(ROTATION) != cookies.keys(2 * ROTATION)
    assert cookies.keys(10.0) == cookies.keys(ROTATION - 1) == epoch_keys(CFG.secret, 0)


def test_a_cookie_sent_just_before_a_rotation_validates_just_after() -> None:
    cookies = SynCookies(CFG)
    sent_at = 5 * ROTATION - 30
    synack = cookies.synack(syn(), sent_at)
    found = cookies.check(ack_for(synack), sent_at + 60)  # next period, within the lifetime
    assert found is not None and found.mss == 1460 and found.sack and found.wscale == 7


def test_the_same_cookie_made_with_other_keys_is_rejected() -> None:
    cookies = SynCookies(CFG)
    other = SynCookies(CFG.with_(secret=b"another-secret!!"))
    synack = other.synack(syn(), 100.0)
    assert cookies.check(ack_for(synack), 101.0) is None
    assert other.check(ack_for(synack), 101.0) is not None
