"""admission.bench.report: the bench's results as a text table, a JSON document and a PNG plot."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admission.bench.recommend import GOOD_ENOUGH, Row


@dataclass(frozen=True)
class BenchReport:
    """BenchReport is everything one bench run found, and how it was run.

    `recommended_window` is None when it is unknown (a URL target not reporting its window).
    """

    rows: Sequence[Row]
    recommended_window: int | None
    explanation: str
    target: str
    path: str
    concurrency: int
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        """as_dict returns the JSON document `--json` writes."""
        return {
            "rows": [row.as_dict() for row in self.rows],
            "recommended_window": self.recommended_window,
            "explanation": self.explanation,
            "target": self.target,
            "path": self.path,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
        }


_HEADERS = ("window", "throughput (req/s)", "p50 (ms)", "p99 (ms)", "rejected")


def format_table(rows: Sequence[Row], recommended_window: int | None = None) -> str:
    """format_table renders the rows as an aligned text table, one line per window.

    The recommended window's line is marked with "<- recommended"; a None window reads
    "unknown" and a missing latency reads "-". No rows gives just the header lines.
    """
    cells = [
        (
            "unknown" if row.window is None else str(row.window),
            f"{row.throughput_rps:,.0f}",
            _ms(row.p50_ms),
            _ms(row.p99_ms),
            f"{row.rejected_ratio:.1%}",
        )
        for row in rows
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(_HEADERS)]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(_HEADERS, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for row, line in zip(rows, cells, strict=True):
        text = "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
        if row.window is not None and row.window == recommended_window:
            text += "  <- recommended"
        lines.append(text)
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    """_ms formats a latency in milliseconds, "-" when there is none."""
    return "-" if value is None else f"{value:.2f}"


def write_json(report: BenchReport, path: Path) -> None:
    """write_json writes the report as indented JSON to `path`, replacing any file there."""
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")


#: Octaves (on the plot's log-2 axis) between two labelled ticks: closer labels would overlap.
MIN_LABEL_GAP_OCTAVES = 0.25


def tick_labels(windows: list[int], recommended: int | None) -> list[str]:
    """tick_labels labels the window ticks of the plot, leaving out a label that would overlap
    one already placed: the recommended window's first, then the others from the smallest.
    Refinement clusters windows (57, 58, 59, 60, 64); every one keeps its tick."""
    placed: list[int] = []
    order = sorted(windows, key=lambda w: (w != recommended, w))
    for window in order:
        if all(abs(math.log2(window / other)) >= MIN_LABEL_GAP_OCTAVES for other in placed):
            placed.append(window)
    return [str(w) if w in placed else "" for w in windows]


def write_plot(report: BenchReport, path: Path) -> bool:
    """write_plot draws throughput and p99 latency against window size into a PNG at `path`.

    Two panels share a log2 window axis; the recommended window is marked in both. Rows
    with an unknown window cannot be placed on the axis and are left out; if that leaves
    nothing, no file is written and the result is False (True when the plot was written).
    """
    rows = sorted((r for r in report.rows if r.window is not None), key=lambda r: r.window or 0)
    if not rows:
        return False
    # Imported here: matplotlib is slow to import and only this function needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = [r.window for r in rows]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7.0, 6.5))
    best = max(r.throughput_rps for r in rows)
    top.plot(windows, [r.throughput_rps for r in rows], marker="o", color="tab:blue", label="2xx")
    top.axhline(
        GOOD_ENOUGH * best,
        color="tab:blue",
        linestyle=":",
        alpha=0.6,
        label=f"{GOOD_ENOUGH:.0%} of best",
    )
    top.set_ylabel("throughput (req/s)")
    # Headroom above the best point keeps it clear of the legend.
    top.set_ylim(0, best * 1.15 if best > 0 else 1.0)
    top.grid(True, alpha=0.3)
    latency_rows = [r for r in rows if r.p99_ms is not None]
    bottom.plot(
        [r.window for r in latency_rows],
        [r.p99_ms for r in latency_rows],
        marker="o",
        color="tab:red",
        label="p99",
    )
    bottom.plot(
        [r.window for r in latency_rows],
        [r.p50_ms for r in latency_rows],
        marker=".",
        linestyle="--",
        color="tab:gray",
        label="p50",
    )
    bottom.set_ylabel("latency of 2xx (ms)")
    bottom.set_ylim(0, max((r.p99_ms or 0.0 for r in rows), default=0.0) * 1.15 or 1.0)
    bottom.grid(True, alpha=0.3)
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(windows)
    bottom.set_xticklabels(tick_labels([r.window or 0 for r in rows], report.recommended_window))
    bottom.set_xlabel("window (max requests in flight per process)")
    if report.recommended_window is not None:
        for axis in (top, bottom):
            axis.axvline(
                report.recommended_window,
                color="tab:green",
                linestyle=":",
                label=f"recommended: {report.recommended_window}",
            )
    top.legend(loc="upper left")
    bottom.legend(loc="upper left")
    figure.suptitle(
        f"admission bench: {report.target} {report.path}\n"
        f"{report.concurrency} clients, {report.duration_s:g} s per window"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
