"""The core is sans-IO: it must not import anything that reads the world."""

import ast
import pathlib
import subprocess
import sys

import tcpscapy.core

FORBIDDEN = {"scapy", "socket", "time", "random", "os", "threading", "select", "selectors",
             "subprocess", "asyncio", "datetime", "secrets"}
CORE = pathlib.Path(tcpscapy.core.__file__).parent


def imported_names(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_sources_import_nothing_forbidden() -> None:
    files = sorted(CORE.rglob("*.py"))  # (the cc package too)
    assert len(files) > 5
    for path in files:
        assert not imported_names(path) & FORBIDDEN, path.name


def test_importing_the_core_pulls_in_no_forbidden_module() -> None:
    probe = ("import sys; before = set(sys.modules); import tcpscapy.core, tcpscapy.core.stack; "
             "print(' '.join(sorted(m for m in set(sys.modules) - before)))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not {m.split(".")[0] for m in loaded} & (FORBIDDEN - {"os", "time", "threading"})
    assert "scapy" not in {m.split(".")[0] for m in loaded}
