"""tcpscapy: a user-space TCP endpoint for seeing and steering TCP segment by segment."""

__version__ = "0.1.0"
