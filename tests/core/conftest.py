"""`each_cc`: run a test once per congestion controller (NewReno, CUBIC, BBR).

A module opts in with `pytestmark = pytest.mark.usefixtures("each_cc")`; a test
marked `default_cc` (a long one that proves nothing more per controller) runs
with the default only. The controller is swapped where connections make it, so
the tests' own Config objects need no change.
"""

from __future__ import annotations

import pytest

from tcpscapy.core import cc as ccmod


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "each_cc" in metafunc.fixturenames:
        names = [ccmod.DEFAULT] if metafunc.definition.get_closest_marker("default_cc") \
            else list(ccmod.NAMES)
        metafunc.parametrize("each_cc", names, indirect=True)


@pytest.fixture
def each_cc(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    cls = ccmod.CONTROLLERS[name]
    monkeypatch.setattr(ccmod, "make",
                        lambda _name, mss, initial_window, **_: cls(mss, initial_window))
    return name
