"""`make demo`: an HTTP GET over tcpscapy's own TCP, to a kernel web server, in a lab.

Builds a throwaway lab (network namespaces client 10.77.0.1 and server
10.77.0.2 on one link), starts `python3 -m http.server 80` on the server,
runs `tcpscapy lab exec client -- tcpscapy connect 10.77.0.2:80 --send "GET / ..."`
-- the segment ladder appears on stderr as it happens; the page, which
tcpscapy writes to stdout, is held back and printed after the ladder so the two
do not interleave on a terminal -- and removes the lab whatever happens. Needs
root (namespaces, raw sockets).
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tcpscapy import netns
from tcpscapy.lab import Lab, LabError

PORT = 80
READY_TIMEOUT = 10.0
EXIT_NEEDS_ROOT = 4
INDEX = """<!doctype html>
<title>tcpscapy demo</title>
<p>Hello from the kernel's TCP, fetched over tcpscapy's.</p>
"""


def listening(lab: Lab, host: str, port: int) -> bool:
    out = lab.run(host, ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description="An HTTP GET over tcpscapy, in a lab.")
    parser.add_argument("--prefix", default="demo",
                        help="lab name prefix; a random suffix is added (default: demo)")
    args = parser.parse_args()
    if not netns.is_privileged():
        print("make demo needs root (network namespaces and raw sockets): run it as root",
              file=sys.stderr)
        return EXIT_NEEDS_ROOT
    try:
        lab = Lab(f"{args.prefix}{secrets.token_hex(3)}")
    except LabError as exc:
        parser.error(str(exc))
    server = lab.addr("server")
    request = f"GET / HTTP/1.1\\r\\nHost: {server}\\r\\nConnection: close\\r\\n\\r\\n"
    try:
        with tempfile.TemporaryDirectory(prefix="tcpscapy-demo-") as site:
            Path(site, "index.html").write_text(INDEX)
            lab.up()
            lab.popen("server", [sys.executable, "-m", "http.server", str(PORT), "--bind", server,
                                 "--directory", site],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + READY_TIMEOUT
            while not listening(lab, "server", PORT):
                if time.monotonic() > deadline:
                    print(f"http.server did not start listening on {server}:{PORT}",
                          file=sys.stderr)
                    return 1
                time.sleep(0.05)
            print(f"# lab {lab.prefix}: client {lab.addr('client')}, server {server} "
                  f"(python3 -m http.server {PORT})", file=sys.stderr)
            print(f"# tcpscapy lab exec --prefix {lab.prefix} client -- tcpscapy connect "
                  f"{server}:{PORT} --send '{request}'\n", file=sys.stderr, flush=True)
            argv = [sys.executable, "-m", "tcpscapy", "connect", f"{server}:{PORT}",
                    "--send", request, "--timeout", "10"]
            # The ladder (stderr) goes straight to the terminal; the page (stdout) after it.
            run = lab.run("client", argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            print("\n# the page (tcpscapy connect's stdout):", file=sys.stderr, flush=True)
            sys.stdout.buffer.write(run.stdout)
            sys.stdout.flush()
            return run.returncode
    except LabError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
