"""Fixtures for wire tests: real sockets, as root, inside namespaces the test creates.

Nothing here skips: a wire test run without root fails with a message saying so.

    LAB_PREFIX = "tsx"           # in your test module: your namespace prefix

    def test_something(lab):     # a fresh Lab named LAB_PREFIX + 6 random hex digits,
        with lab.enter("client"):  # up before the test, always torn down after it
            ...

Override the `lab_prefix` fixture instead of LAB_PREFIX if you prefer.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tcpscapy import netns
from tcpscapy.lab import Lab, lab_kind
from tcpscapy.routed import open_lab


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("wire") and not netns.is_privileged():
        pytest.fail(
            "wire tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW): run them as root",
            pytrace=False,
        )


@pytest.fixture
def lab_prefix(request: pytest.FixtureRequest) -> str:
    """The test module's LAB_PREFIX: the namespace-name prefix its author was given."""
    prefix = getattr(request.module, "LAB_PREFIX", None)
    if not prefix:
        pytest.fail(
            f"{request.module.__name__}: set LAB_PREFIX = '<your prefix>' "
            "or override the lab_prefix fixture",
            pytrace=False,
        )
    return str(prefix)


@pytest.fixture
def unique_prefix(lab_prefix: str) -> Iterator[str]:
    """A fresh lab prefix; whatever lab a test builds under it is removed afterwards."""
    prefix = f"{lab_prefix}{secrets.token_hex(3)}"
    assert lab_kind(prefix) is None and not Lab(prefix).exists(), f"lab {prefix} already exists"
    try:
        yield prefix
    finally:
        open_lab(prefix).down()  # flat or routed, whichever the test built


@pytest.fixture
def lab(unique_prefix: str) -> Iterator[Lab]:
    """A lab that is up for the test and always torn down, even if `up()` fails."""
    the_lab = Lab(unique_prefix)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
    assert not the_lab.exists(), f"lab {unique_prefix} left namespaces behind"
