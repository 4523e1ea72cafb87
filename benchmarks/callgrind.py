"""benchmarks/callgrind.py: the instructions one child run of a benchmark script executes,
counted under valgrind's callgrind; the one way the *_instructions.py scripts count.

A script that uses it runs itself again as `script --child NAME N` under callgrind, and reads
the total from callgrind's output; the difference of two such totals at two values of N, over
their difference, is one request's (or message's) cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def parse(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    run: Callable[[str, int], None],
    counts: str,
) -> tuple[argparse.Namespace, int, int] | None:
    """parse reads a script's options with the hidden `--child NAME N` added. A child runs
    `run(NAME, N)` and gets None. Otherwise the script's own run gets its options and the two
    counts of its option `counts` ("N1,N2", N1 < N2), once valgrind is known to be there."""
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run(args.child[0], int(args.child[1]))
        return None
    require_valgrind()
    low, high = (int(n) for n in getattr(args, counts).split(","))
    if not 0 < low < high:
        raise SystemExit(f"--{counts} needs two counts N1 < N2")
    return args, low, high


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
