"""Services written once, run two ways: as generators that yield what they wait for.

A service (echo, discard, a file, the HTTP server) is a generator that yields
``Recv(max, timeout)`` and gets the bytes back (b'' at the peer's FIN), or yields
``Send(data)`` and gets None once every byte is queued; a failure (reset, time-out)
is thrown into it at that yield, as a blocking call would raise it. `run` drives a
service over any blocking stream (tests, a single connection); the listen command's
event loop (tcpscapy.cli._server) drives hundreds of them on one thread.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Recv:
    max: int
    timeout: float | None  # None: wait for ever


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


Op = Recv | Send
Steps = Generator[Op, bytes | None, T]


class Stream(Protocol):
    def recv(self, max: int = ..., timeout: float | None = ...) -> bytes: ...
    def sendall(self, data: bytes, timeout: float | None = ...) -> None: ...


def recv(max: int, timeout: float | None) -> Steps[bytes]:
    """Up to `max` bytes (b'' once the peer closed); TimeoutError after `timeout` s."""
    data = yield Recv(max, timeout)
    assert isinstance(data, bytes)
    return data


def sendall(data: bytes) -> Steps[None]:
    yield Send(data)


def run(steps: Steps[T], stream: Stream) -> T:
    """Drive `steps` to the end over a blocking `stream`; its return value."""
    result: bytes | None = None
    failure: BaseException | None = None
    while True:
        try:
            op = steps.throw(failure) if failure is not None else steps.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        result = failure = None
        try:
            if isinstance(op, Recv):
                result = stream.recv(op.max, op.timeout)
            else:
                stream.sendall(op.data)
        except Exception as exc:
            failure = exc
