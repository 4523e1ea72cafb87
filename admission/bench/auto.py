"""admission.bench.auto: the same load against `ADMISSION_WINDOW=auto`, to set beside the
static sweep: what the adaptive window got done, and what size it settled on.

The target is served once more on a fresh process with `ADMISSION_WINDOW=auto`, warmed up
for at least `AUTO_WARMUP_S` (the window starts at 4 and must first find
the capacity: a second or two, longer when refused clients stay away for their Retry-After);
while the load runs, a thread reads `/readyz`'s `"window"` every 100 ms. The window "settles"
on the median of the readings in the last half of the run, and the range of that half says
how much it moved.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from admission.bench.process import LOOPBACK, http_get
from admission.bench.recommend import Row
from admission.bench.sweep import (
    ADMISSION_SERVE,
    LoadPlan,
    _check_answered,
    measure,
    server_env,
    started,
    to_row,
)

POLL_S = 0.1
#: Seconds of unmeasured load before the adaptive window is measured, at least.
AUTO_WARMUP_S = 3.0


@dataclass(frozen=True)
class AutoResult:
    """AutoResult is the adaptive window's run: the row the load saw (its `window` None) and
    the sizes read from /readyz as (seconds since the load began, size)."""

    row: Row
    sizes: tuple[tuple[float, int], ...]

    def settled(self) -> tuple[int, int, int] | None:
        """settled is (median, lowest, highest) of the sizes read in the last half of the
        run; None when nothing was read then."""
        if not self.sizes:
            return None
        end = self.sizes[-1][0]
        late = [size for t, size in self.sizes if t >= end / 2]
        return int(statistics.median(late)), min(late), max(late)


@contextmanager
def served_auto(target: str) -> Iterator[int]:
    """served_auto runs `target` under `admission serve` with ADMISSION_WINDOW=auto on a free
    port and yields the port once it is healthy; it is stopped on the way out."""
    env = server_env(1)
    env["ADMISSION_WINDOW"] = "auto"
    with started(target, env, ADMISSION_SERVE) as port:
        yield port


def measure_auto(target: str, plan: LoadPlan) -> AutoResult:
    """measure_auto serves `target` with the adaptive window and runs `plan` against it,
    reading the window's size as it goes."""
    with served_auto(target) as port:
        sizes: list[tuple[float, int]] = []
        done = threading.Event()
        began = time.monotonic()

        def poll() -> None:
            while not done.wait(POLL_S):
                try:
                    status, body = http_get(LOOPBACK, port, "/readyz", timeout_s=1.0)
                    size = json.loads(body).get("window") if status == 200 else None
                except (OSError, ValueError, AttributeError):
                    continue
                if isinstance(size, int):
                    sizes.append((time.monotonic() - began, size))

        watcher = threading.Thread(target=poll, name="admission-bench-auto", daemon=True)
        watcher.start()
        try:
            result = measure(
                LOOPBACK, port, replace(plan, warmup_s=max(plan.warmup_s, AUTO_WARMUP_S))
            )
        finally:
            done.set()
            watcher.join(5.0)
    _check_answered(result, f"{target} with ADMISSION_WINDOW=auto")
    return AutoResult(to_row(None, result), tuple(sizes))


def format_auto(auto: AutoResult, rows: list[Row], recommended: int | None) -> str:
    """format_auto is the lines set beside the static table: what auto got done, where it
    settled, and the same figures of the recommended static window."""
    row = auto.row
    p50 = "-" if row.p50_ms is None else f"{row.p50_ms:.1f} ms"
    p99 = "-" if row.p99_ms is None else f"{row.p99_ms:.1f} ms"
    lines = [
        f"ADMISSION_WINDOW=auto: {row.throughput_rps:,.0f} req/s, p50 {p50}, p99 {p99}, "
        f"{row.rejected_ratio:.1%} rejected"
    ]
    settled = auto.settled()
    if settled is None:
        lines.append("  its size could not be read from /readyz")
    else:
        median, low, high = settled
        lines.append(
            f"  it settled on a window of {median} ({low} to {high} over the last half of the run)"
        )
    static = next((r for r in rows if r.window == recommended), None)
    if static is not None and static.throughput_rps > 0:
        share = row.throughput_rps / static.throughput_rps
        static_p99 = "-" if static.p99_ms is None else f"{static.p99_ms:.1f} ms"
        lines.append(
            f"  beside the recommended static window {recommended}: {share:.0%} of its "
            f"{static.throughput_rps:,.0f} req/s, p99 {p99} against {static_p99}"
        )
    return "\n".join(lines)
