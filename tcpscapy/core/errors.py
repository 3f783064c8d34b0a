"""The engine's one exception family: a wrong call by the local application.

A misbehaving peer never raises; its segments are dropped, answered, or turned
into events (see events.py).
"""


class LocalProtocolError(Exception):
    """The application asked for something the connection cannot do in its state."""
