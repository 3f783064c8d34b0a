"""The sans-IO TCP engine. Imports nothing that touches the world: no scapy,
socket, time, random, os or threading (tests/core/test_purity.py checks)."""

from .config import Config
from .errors import LocalProtocolError
from .events import (
    Closed,
    Connected,
    DataReceived,
    Event,
    PeerClosed,
    Reset,
    SendSpace,
    StateChanged,
    TfoCookieReceived,
    TfoIgnored,
)
from .options import NO_OPTIONS, Options, encode_options, parse_options
from .segment import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Segment, flag_str, parse_flags
from .state import State

__all__ = [
    "ACK", "CWR", "ECE", "FIN", "NO_OPTIONS", "PSH", "RST", "SYN", "URG",
    "Closed", "Config", "Connected", "DataReceived", "Event", "LocalProtocolError",
    "Options", "PeerClosed", "Reset", "Segment", "SendSpace", "State", "StateChanged",
    "TfoCookieReceived", "TfoIgnored",
    "encode_options", "flag_str", "parse_flags", "parse_options",
]
