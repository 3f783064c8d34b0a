"""The commands' stop signals: caught from the moment they are installed, never raised.

`tcpscapy listen` once crashed with a traceback (and closed its connections with FIN
instead of RST) when SIGINT landed while its handlers were still being installed: the
handler raised outside the wait that was meant to catch it. A signal that arrives
before the main thread reaches its wait must simply be remembered.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from tcpscapy.cli._common import catch_stop_signals


@pytest.fixture(autouse=True)
def default_handlers() -> Iterator[None]:
    """Each test starts from the default handlers, as a command run from a terminal does
    (a suite started in the background inherits an ignored SIGINT), and leaves the
    suite's own handlers as it found them."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in saved:
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM
                      else signal.default_int_handler)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def never_longer_than(seconds: float) -> threading.Event:
    """A `done` that is set after `seconds`: a lost signal fails the test, never hangs it."""
    done = threading.Event()
    timer = threading.Timer(seconds, done.set)
    timer.daemon = True
    timer.start()
    return done


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_wait_is_remembered_not_raised(signum: int) -> None:
    wait = catch_stop_signals()
    os.kill(os.getpid(), signum)  # handled here, between bytecodes: it must not raise
    work_after_the_signal = sum(range(1000))  # the main thread goes on with its work
    assert wait(never_longer_than(10)) == signum
    assert work_after_the_signal == 499500


def test_the_first_signal_wins_and_later_ones_are_ignored() -> None:
    wait = catch_stop_signals()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    assert wait(never_longer_than(10)) == signal.SIGTERM


def test_done_without_a_signal_returns_none() -> None:
    wait = catch_stop_signals()
    done = threading.Event()
    threading.Timer(0.05, done.set).start()
    assert wait(done) is None


def test_an_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    catch_stop_signals()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
