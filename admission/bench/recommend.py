"""admission.bench.recommend: percentiles and the window recommendation, as pure functions.

Nothing here reads a clock, a socket or a file, so every rule the bench applies to its
measurements can be checked with hand-made numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: A window reaching this share of the best measured throughput counts as "enough".
GOOD_ENOUGH = 0.95


@dataclass(frozen=True)
class Row:
    """Row is one measured window size: what the load saw while the window was `window`.

    `window` is None when it is unknown (a URL target whose `/readyz` does not report it).
    `p50_ms` and `p99_ms` are None when no request was admitted, so there is no latency.
    """

    window: int | None
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    rejected_ratio: float

    def as_dict(self) -> dict[str, float | int | None]:
        """as_dict returns the row as the JSON object the bench writes, keys in report order."""
        return {
            "window": self.window,
            "throughput_rps": self.throughput_rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "rejected_ratio": self.rejected_ratio,
        }


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """percentile returns the q-th percentile (0..100) of already sorted values.

    It interpolates linearly between the two nearest ranks (numpy's default "linear"
    method), so the 50th percentile of [1, 2] is 1.5. An empty sequence has no percentile:
    the result is None. q outside 0..100 is a ValueError.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q must be within 0..100, got {q}")
    n = len(sorted_values)
    if n == 0:
        return None
    rank = (n - 1) * q / 100.0
    lower = math.floor(rank)
    upper = min(lower + 1, n - 1)
    fraction = rank - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * fraction


def recommend(rows: Sequence[Row]) -> tuple[int | None, str]:
    """recommend picks the smallest window reaching 95 % of the best throughput, and says why.

    The explanation is one sentence applying Little's law (requests in flight = throughput
    x latency, with the median latency standing in for the mean) to the chosen row. Rows
    are considered in ascending window order; rows with an unknown window (None) are only
    used when no row has a known one. If no row admitted anything (best throughput 0), the
    smallest window is returned with an explanation saying the measurement is unusable. An
    empty sequence is a ValueError.
    """
    if not rows:
        raise ValueError("recommend: no rows were measured")
    known = sorted((r for r in rows if r.window is not None), key=lambda r: r.window or 0)
    candidates = known or list(rows)
    best = max(candidates, key=lambda r: r.throughput_rps)
    if best.throughput_rps <= 0:
        chosen = candidates[0]
        return chosen.window, (
            f"No window size admitted any request ({_reject_pct(chosen)} rejected at window "
            f"{_window_text(chosen.window)}), so there is nothing to recommend from: check the "
            "target path and that the service answers 2xx."
        )
    chosen = next(r for r in candidates if r.throughput_rps >= GOOD_ENOUGH * best.throughput_rps)
    return chosen.window, _explain(chosen, best, known)


def _explain(chosen: Row, best: Row, known: Sequence[Row]) -> str:
    """_explain writes the one-sentence Little's-law reason for choosing `chosen`."""
    share = chosen.throughput_rps / best.throughput_rps
    if chosen is best:
        reach = f"gives the best throughput measured, {_rps(chosen.throughput_rps)}"
    else:
        reach = (
            f"reaches {share:.0%} of the best throughput measured "
            f"({_rps(chosen.throughput_rps)} of {_rps(best.throughput_rps)} at window "
            f"{_window_text(best.window)})"
        )
    if chosen.p50_ms is None:
        little = ""
    else:
        in_flight = chosen.throughput_rps * chosen.p50_ms / 1000.0
        little = (
            f"; by Little's law that is {_rps(chosen.throughput_rps)} x {chosen.p50_ms:.1f} ms "
            f"(median latency) = {in_flight:.1f} requests in flight"
        )
    largest = known[-1] if known else None
    if (
        largest is not None
        and largest is not chosen
        and largest.p99_ms is not None
        and chosen.p99_ms is not None
        and largest.p99_ms > chosen.p99_ms
    ):
        tail = (
            f", and a larger window only adds queueing (p99 {chosen.p99_ms:.1f} ms here vs "
            f"{largest.p99_ms:.1f} ms at window {_window_text(largest.window)})"
        )
    else:
        tail = ""
    return f"Window {_window_text(chosen.window)} {reach}{little}{tail}."


def _rps(value: float) -> str:
    """_rps formats a throughput for prose: whole requests per second with separators."""
    return f"{value:,.0f} req/s"


def _reject_pct(row: Row) -> str:
    """_reject_pct formats a row's rejected share as a percentage."""
    return f"{row.rejected_ratio:.0%}"


def _window_text(window: int | None) -> str:
    """_window_text names a window size, or "unknown" when the target did not report one."""
    return "unknown" if window is None else str(window)
