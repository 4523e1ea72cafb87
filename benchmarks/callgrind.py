"""benchmarks/callgrind.py: the instructions one child run of a benchmark script executes,
counted under valgrind's callgrind; the one way the *_instructions.py scripts count.

A script that uses it runs itself again as `script --child NAME N` under callgrind, and reads
the total from callgrind's output; the difference of two such totals at two values of N, over
their difference, is one request's (or message's) cost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def require_valgrind() -> None:
    """require_valgrind stops the script with one line when valgrind is missing."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")


def instructions(script: str, name: str, n: int) -> int:
    """instructions runs `script --child name n` under callgrind and returns the instructions
    it executed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [sys.executable, script, "--child", name, str(n)]
        grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
        # A fixed seed, for the same hashing path in every run; not 0, which turns hash
        # randomisation off and makes the memory store digest keys with a keyed BLAKE2b
        # instead of the keyed hash a deployment uses (admission/stores/memory.py).
        env = os.environ | {"PYTHONHASHSEED": "1"}
        done = subprocess.run(grind, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name}: the child failed:\n{done.stderr[-2000:]}")
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"{name}: callgrind wrote no total")


def per_unit(script: str, name: str, low: int, high: int) -> float:
    """per_unit is one request's (or message's) instructions in `script`'s variant `name`:
    the totals of a child run of `high` and of `low`, their difference over `high - low`."""
    return (instructions(script, name, high) - instructions(script, name, low)) / (high - low)
