"""Run a command as a transparent stand-in: signals go on to it, its exit code comes back.

`tcpscapy lab exec HOST -- CMD` is a wrapper a user may send SIGTERM to (a test's
teardown, systemd, `timeout`) or press Ctrl-C in; CMD must get those signals too,
and the wrapper must end only when CMD has, with CMD's exit code.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SI_KERNEL = 0x80  # si_code of a signal the terminal raised (Ctrl-C, hang-up)


def run_forwarding_signals(argv: Sequence[str]) -> int:
    """Run argv with this process's stdio; forward SIGINT, SIGTERM and SIGHUP to it; return
    its exit code (128+N when a signal N killed it, as a shell reports it).

    The signals (and SIGCHLD) are blocked and taken with sigwaitinfo, so no handler
    runs mid-wait and nothing is lost between spawning and waiting. A signal from the
    terminal reached the child already (same foreground process group): not sent twice.
    """
    watched = {*FORWARDED, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        pid = os.posix_spawnp(argv[0], list(argv), dict(os.environ), setsigmask=old)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code
            info = signal.sigwaitinfo(watched)
            if info.si_signo != signal.SIGCHLD and info.si_code != SI_KERNEL:
                os.kill(pid, info.si_signo)  # unreaped, so the pid is still its own
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
