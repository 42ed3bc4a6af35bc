"""Small real agent programs for the CLI driver tests, written to a temp dir and run by Python."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

# Echoes what it received, as JSON: proves the stdin format, argv substitution, env and cwd.
ECHO = """
import json, os, sys
data = sys.stdin.read()  # returns only once the driver closes stdin
json.dump({
    "stdin": data,
    "argv": sys.argv[1:],
    "model": os.environ.get("AMELIA_MODEL"),
    "cwd": os.getcwd(),
    "own_group": os.getpgid(0) == os.getpid(),
}, sys.stdout)
"""

# Fails with 30 lines of stderr (the driver must show the last ones) and exit code 3.
FAIL = """
import sys
sys.stdin.read()
print("partial output")
for i in range(1, 31):
    print(f"err-{i:02d}", file=sys.stderr)
sys.exit(3)
"""

# Starts a grandchild, records both pids in argv[1], then hangs. With "--ignore-term" both
# ignore SIGTERM (the disposition is inherited), so only the SIGKILL escalation stops them.
HANG = """
import os, signal, subprocess, sys, time
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""

# Succeeds without saying anything.
SILENT = """
import sys
sys.stdin.read()
print("only a warning", file=sys.stderr)
"""


def write_agent(directory: Path, name: str, source: str) -> list[str]:
    """Write `source` to `directory/name.py` and return the argv that runs it."""
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return [sys.executable, str(path)]


def is_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def wait_gone(pids: list[int], timeout: float = 3.0) -> bool:
    """Poll until every pid is gone; False if one is still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(is_gone(pid) for pid in pids):
            return True
        await asyncio.sleep(0.02)
    return all(is_gone(pid) for pid in pids)
