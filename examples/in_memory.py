"""Two tcpscapy engines talk over an in-memory link: no root, no network.

Run: python examples/in_memory.py
A client connects to a server, sends a request, gets an answer, and both close;
the ladder shows every segment and both sides' states on a simulated clock.
"""

from tcpscapy.core import Config, DataReceived
from tcpscapy.core.stack import Stack
from tcpscapy.sim import Network

config = Config(secret=b"in-memory demo", msl=1.0)  # a short TIME-WAIT for the demo
client, server = Stack(config), Stack(config)
net = Network({"10.0.0.1": client, "10.0.0.2": server}, delay=0.010)  # 10 ms each way
listener = server.listen("10.0.0.2", 80)

conn = client.connect(("10.0.0.1", 40000), ("10.0.0.2", 80), net.now)
trace = net.follow(conn)  # what the client saw, with the server's states beside it
net.run(lambda: listener.ready > 0)
peer = listener.accept()
assert peer is not None

conn.send(b"GET / HTTP/1.0\r\n\r\n")
net.run(timeout=0.1)
request = b"".join(e.data for e in iter(peer.next_event, None) if isinstance(e, DataReceived))
peer.send(b"HTTP/1.0 200 OK\r\n\r\nhello from the other engine\n")
peer.close()
net.run(timeout=0.5)
conn.close()
net.run()  # until TIME-WAIT ends and nothing is left to do

print(trace.ladder(width=100))
print()
print(f"server got {request!r}; the client ended {conn.state} ({conn.close_reason})")
