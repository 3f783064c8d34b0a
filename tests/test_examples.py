"""The examples users copy from must run and show what they claim."""

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_in_memory_example_prints_the_whole_conversation() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "in_memory.py")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    for expected in ("── S seq=0", "SA seq=0 ack=1", "SYN-SENT → ESTABLISHED",
                     "peer: FIN-WAIT-2 → TIME-WAIT", "LAST-ACK → CLOSED", "handshake RTT 20.000 ms",
                     "server got b'GET / HTTP/1.0\\r\\n\\r\\n'"):
        assert expected in out, expected
