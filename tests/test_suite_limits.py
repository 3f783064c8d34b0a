"""The suite's own safety net: every test has a time limit, so a hang is a failure.

A test that waits forever (a listener that never hears its signal, a peer that
never answers) must end as a failure with a stack, not as a suite that never ends.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_has_a_generous_default_time_limit() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    options = config["tool"]["pytest"]["ini_options"]
    assert 60 <= int(options["timeout"]) <= 900
    assert any(dep.startswith("pytest-timeout") for dep in
               config["project"]["optional-dependencies"]["test"])


def test_a_hanging_test_fails_with_its_stack(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(
        "import time\n\ndef test_waits_forever():\n    time.sleep(3600)\n")
    # The project's own configuration, with the limit cut to 2 s for this run.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
                          "-o", "timeout=2", str(tmp_path / "test_hang.py")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Timeout" in run.stdout and "time.sleep(3600)" in run.stdout
    assert "1 failed" in run.stdout
