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

#: Requests in flight (by Little's law) beyond this multiple of the window are queued outside it.
QUEUED_OUTSIDE = 1.5

#: A median latency beyond this multiple of the unloaded one means requests queue for the CPU.
SATURATED = 1.5


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


def recommend(rows: Sequence[Row], concurrency: int | None = None) -> tuple[int | None, str]:
    """recommend picks the smallest window reaching 95 % of the best throughput, and says why.

    Only windows the load could fill take part: with `concurrency` closed-loop clients, a
    window larger than that never fills and measures the same as no window. The explanation is
    one sentence applying Little's law (requests in flight = throughput x latency, with the
    median latency standing in for the mean) to the chosen row. Rows are considered in
    ascending window order; rows with an unknown window (None) are only used when no row has a
    known one. There is no recommendation (None, with the reason) when no window could fill,
    when fewer than two configurations were measured (nothing to compare), or when none
    admitted a request. An empty sequence is a ValueError.
    """
    if not rows:
        raise ValueError("recommend: no rows were measured")
    known = sorted((r for r in rows if r.window is not None), key=lambda r: r.window or 0)
    if concurrency is not None and known:
        fillable = [r for r in known if (r.window or 0) <= concurrency]
        if not fillable:
            return None, (
                f"No window is recommended: {concurrency} clients never have more than "
                f"{concurrency} requests in flight, so none of the windows measured (the "
                f"smallest is {known[0].window}) could fill; measure windows of at most "
                f"{concurrency}, or raise --concurrency."
            )
        known = fillable
    candidates = known or list(rows)
    if len(candidates) < 2:
        only = candidates[0]
        unfilled = len([r for r in rows if r.window is not None]) - len(known)
        beyond = (
            f" the load could fill (the {unfilled} larger can't fill with {concurrency} clients)"
            if unfilled
            else ""
        )
        return None, (
            f"No window is recommended: only one configuration{beyond} was measured (window "
            f"{_window_text(only.window)}, {_rps(only.throughput_rps)}), and a recommendation "
            "needs at least two window sizes to compare."
        )
    best = max(candidates, key=lambda r: r.throughput_rps)
    if best.throughput_rps <= 0:
        return None, (
            f"No window is recommended: no window size admitted any request "
            f"({_reject_pct(candidates[0])} rejected at window "
            f"{_window_text(candidates[0].window)}), so there is nothing to recommend from: "
            "check the target path and that the service answers 2xx."
        )
    chosen = next(r for r in candidates if r.throughput_rps >= GOOD_ENOUGH * best.throughput_rps)
    return chosen.window, _explain(chosen, best, known, concurrency)


def _explain(chosen: Row, best: Row, known: Sequence[Row], concurrency: int | None) -> str:
    """_explain writes the one-sentence Little's-law reason for choosing `chosen`.

    It ends with what the numbers say beyond the choice: that the requests in flight
    exceed the window (the queue is in front of the application, out of the window's
    reach); that the chosen window is saturated, with the window Little's law puts at the
    knee (best throughput x unloaded latency, the smallest median measured); that the sweep
    stopped before throughput did; or what a larger window costs.
    """
    if chosen is best:
        reach = f"gives the best throughput measured, {_rps(chosen.throughput_rps)}"
    else:
        reach = (
            f"reaches {chosen.throughput_rps / best.throughput_rps:.0%} of the best throughput "
            f"measured ({_rps(chosen.throughput_rps)} of {_rps(best.throughput_rps)} at window "
            f"{_window_text(best.window)})"
        )
    text = f"Window {_window_text(chosen.window)} {reach}"
    if chosen.p50_ms is not None:
        in_flight = chosen.throughput_rps * chosen.p50_ms / 1000.0
        text += (
            f"; by Little's law that is {_rps(chosen.throughput_rps)} x {chosen.p50_ms:.1f} ms "
            f"(median latency) = {in_flight:.1f} requests in flight"
        )
        # The median understates the mean, so exceeding the window by half is no accident.
        if chosen.window is not None and in_flight > QUEUED_OUTSIDE * chosen.window:
            return text + (
                f", more than the window of {chosen.window} admits, so most of that latency is "
                "spent queued before the application (in sockets and the event loop), where no "
                "window can limit it."
            )
    unloaded_ms = min((r.p50_ms for r in known if r.p50_ms is not None), default=None)
    largest = known[-1] if known else None
    if (
        chosen.p50_ms is not None
        and unloaded_ms is not None
        and chosen.p50_ms > SATURATED * unloaded_ms
    ):
        knee = best.throughput_rps * unloaded_ms / 1000.0
        text += (
            f", but its median latency is {chosen.p50_ms / unloaded_ms:.1f}x the unloaded "
            f"{unloaded_ms:.1f} ms, so the process is saturated and a window near "
            f"{_rps(best.throughput_rps)} x {unloaded_ms:.1f} ms = {knee:.0f} would give up "
            "little throughput for much lower latency"
        )
    elif largest is chosen and len(known) > 1:
        if concurrency is not None and (chosen.window or 0) >= concurrency:
            text += (
                f"; it is the largest window {concurrency} clients can fill, so whether a "
                "larger one does better needs more clients (--concurrency) as well as larger "
                "windows"
            )
        else:
            text += (
                "; it is the largest window measured, so measure larger ones too (with at least "
                "as many clients, --concurrency, as the largest window: a window never fills "
                "otherwise)"
            )
    elif (
        largest is not None
        and largest is not chosen
        and largest.p99_ms is not None
        and chosen.p99_ms is not None
        and largest.p99_ms > chosen.p99_ms
    ):
        text += (
            f", and a larger window only adds queueing (p99 {chosen.p99_ms:.1f} ms here vs "
            f"{largest.p99_ms:.1f} ms at window {_window_text(largest.window)})"
        )
    return text + "."


def _rps(value: float) -> str:
    """_rps formats a throughput for prose: whole requests per second with separators."""
    return f"{value:,.0f} req/s"


def _reject_pct(row: Row) -> str:
    """_reject_pct formats a row's rejected share as a percentage."""
    return f"{row.rejected_ratio:.0%}"


def _window_text(window: int | None) -> str:
    """_window_text names a window size, or "unknown" when the target did not report one."""
    return "unknown" if window is None else str(window)


def next_probe(rows: Sequence[Row], concurrency: int | None = None) -> int | None:
    """next_probe is the window worth measuring next to sharpen the recommendation, or None.

    A sweep in powers of two can't see a knee that lies between two of its windows: the
    recommended window W may be far above the window where throughput stopped growing. The
    probe lies strictly between W and the largest smaller window measured: at the knee Little's
    law predicts (best throughput x unloaded median latency) when that falls in between, else
    halfway. None when W is the smallest window measured, no whole window lies in between, or
    nothing was admitted.
    """
    known = sorted({r.window for r in rows if r.window is not None})
    if len(known) < 2:
        return None
    chosen, _ = recommend(rows, concurrency)
    if chosen is None:
        return None
    below = [w for w in known if w < chosen]
    if not below or chosen - below[-1] < 2:
        return None
    lower = below[-1]
    best = max((r for r in rows if r.window is not None), key=lambda r: r.throughput_rps)
    unloaded = min((r.p50_ms for r in rows if r.p50_ms is not None), default=None)
    if best.throughput_rps > 0 and unloaded is not None:
        knee = round(best.throughput_rps * unloaded / 1000.0)
        if lower < knee < chosen and knee not in known:
            return knee
    middle = (lower + chosen) // 2
    return middle if middle not in known else None


#: The request timeout recommended, as a multiple of the p99 at the recommended window: room
#: for the slowest normal request, not for a stuck one to hold its slot many times longer.
TIMEOUT_P99_MULTIPLE = 1.5


def request_timeout_s(p99_ms: float | None) -> float | None:
    """request_timeout_s is the `ADMISSION_REQUEST_TIMEOUT` to recommend for a service whose
    p99 is `p99_ms` at the recommended window: 1.5 times it, rounded up to two significant
    digits (so at most 1.55 times it), at least 1 ms; None without a p99."""
    if p99_ms is None or p99_ms <= 0:
        return None
    seconds = TIMEOUT_P99_MULTIPLE * p99_ms / 1000
    scale = 10 ** (math.floor(math.log10(seconds)) - 1)
    rounded: float = round(math.ceil(seconds / scale - 1e-9) * scale, 6)
    return max(0.001, rounded)
