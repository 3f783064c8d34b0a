"""The wheel a user installs: typed (PEP 561's py.typed marker) and complete."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_py_typed_marker(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("tcpscapy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tcpscapy/py.typed" in names  # type checkers then read our hints
    assert "tcpscapy/core/connection.py" in names
