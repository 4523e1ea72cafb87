"""admission.bench.report: the bench's results as a text table, a JSON document and a PNG plot."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admission.bench.attacks import ATTACKS, Attacked
from admission.bench.recommend import GOOD_ENOUGH, Row, request_timeout_s


@dataclass(frozen=True)
class BenchReport:
    """BenchReport is everything one bench run found, and how it was run.

    `recommended_window` is None when it is unknown (a URL target not reporting its window).
    `attacks` are the runs under attack (`--attacks`), none without.
    """

    rows: Sequence[Row]
    recommended_window: int | None
    explanation: str
    target: str
    path: str
    concurrency: int
    duration_s: float
    notes: Sequence[str] = ()
    attacks: Sequence[Attacked] = ()

    @property
    def recommended_request_timeout_s(self) -> float | None:
        """recommended_request_timeout_s is the request timeout for the recommended window:
        1.5 times its p99, rounded up (`recommend.request_timeout_s`); None without one."""
        chosen = [r for r in self.rows if r.window == self.recommended_window]
        if self.recommended_window is None or not chosen:
            return None
        return request_timeout_s(chosen[0].p99_ms)

    def as_dict(self) -> dict[str, Any]:
        """as_dict returns the JSON document `--json` writes."""
        return {
            "rows": [row.as_dict() for row in self.rows],
            "recommended_window": self.recommended_window,
            "recommended_request_timeout_s": self.recommended_request_timeout_s,
            # The same, beside what the others are set from: the read and write timeouts
            # bound the client's pace, which the bench's loopback clients can't measure.
            "recommended_timeouts": {
                "request_s": self.recommended_request_timeout_s,
                "read_s": None,
                "write_s": None,
                "read_write": READ_WRITE,
            },
            "explanation": self.explanation,
            "target": self.target,
            "path": self.path,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "notes": list(self.notes),
            "attacks": [run.as_dict() for run in self.attacks],
        }


#: What the bench says of the read and write timeouts, which it does not measure.
READ_WRITE = (
    "ADMISSION_READ_TIMEOUT and ADMISSION_WRITE_TIMEOUT bound the client's pace, not the "
    "handler's: set them from the largest body you accept and your slowest clients' "
    "bandwidth (docs/tuning.md), not from this latency"
)

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


def write_plot(report: BenchReport, path: Path) -> bool:
    """write_plot draws the sweep into a PNG at `path` that stands alone.

    Three panels share one axis with a slot per measured window, each labelled, so windows
    that refinement packs together (58, 60, 61, 62, 64) stay apart and findable: throughput
    (with the 95 % of best line), latency (p50, p99) and the rejected share. The recommended
    window is marked in all three; windows the load could not fill (above the number of
    clients) are shaded; the recommendation and its one-sentence reason are written under the
    panels. Rows with an unknown window cannot be placed and are left out; if that leaves
    nothing, no file is written and the result is False (True when the plot was written).
    """
    figure = plot_figure(report)
    if figure is None:
        return False
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_figure(report: BenchReport) -> Any:
    """plot_figure is the matplotlib figure `write_plot` saves, or None with nothing to plot."""
    rows = sorted((r for r in report.rows if r.window is not None), key=lambda r: r.window or 0)
    if not rows:
        return None
    # Imported here: matplotlib is slow to import and only this function needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = list(range(len(rows)))
    windows = [r.window or 0 for r in rows]
    if report.attacks:
        figure, axes = plt.subplots(4, 1, figsize=(8.0, 12.0), height_ratios=(3, 3, 2, 3))
        top, middle, bottom, attacked = axes
        middle.sharex(top)
        bottom.sharex(top)
        _plot_attacks(attacked, report.attacks)
    else:
        figure, (top, middle, bottom) = plt.subplots(
            3, 1, sharex=True, figsize=(8.0, 9.0), height_ratios=(3, 3, 2)
        )
    best = max(r.throughput_rps for r in rows)
    top.plot(slots, [r.throughput_rps for r in rows], marker="o", color="tab:blue", label="2xx")
    top.axhline(
        GOOD_ENOUGH * best,
        color="tab:blue",
        linestyle=":",
        alpha=0.6,
        label=f"{GOOD_ENOUGH:.0%} of best",
    )
    top.set_ylabel("throughput (req/s)")
    # Headroom above the best point keeps it clear of the legend.
    top.set_ylim(0, best * 1.25 if best > 0 else 1.0)
    latency = [(i, r) for i, r in zip(slots, rows, strict=True) if r.p99_ms is not None]
    middle.plot(
        [i for i, _ in latency],
        [r.p99_ms for _, r in latency],
        marker="o",
        color="tab:red",
        label="p99",
    )
    middle.plot(
        [i for i, _ in latency],
        [r.p50_ms for _, r in latency],
        marker=".",
        linestyle="--",
        color="tab:gray",
        label="p50",
    )
    middle.set_ylabel("latency of 2xx (ms)")
    middle.set_ylim(0, max((r.p99_ms or 0.0 for r in rows), default=0.0) * 1.25 or 1.0)
    bottom.bar(slots, [100 * r.rejected_ratio for r in rows], color="tab:orange", label="rejected")
    bottom.set_ylabel("rejected (%)")
    bottom.set_ylim(0, 105)
    bottom.set_xticks(slots)
    bottom.set_xticklabels([str(w) for w in windows], rotation=90 if len(rows) > 16 else 0)
    bottom.set_xlabel("window (max requests in flight per process), one slot per measured size")
    unfilled = [i for i, w in zip(slots, windows, strict=True) if w > report.concurrency]
    for axis in (top, middle, bottom):
        axis.grid(True, alpha=0.3)
        axis.set_xlim(-0.5, len(rows) - 0.5)
        if unfilled:
            axis.axvspan(
                unfilled[0] - 0.5,
                len(rows) - 0.5,
                color="gray",
                alpha=0.15,
                label=f"can't fill with {report.concurrency} clients" if axis is top else None,
            )
        if report.recommended_window in windows:
            axis.axvline(
                windows.index(report.recommended_window),
                color="tab:green",
                linewidth=2,
                linestyle=":",
                label=f"recommended: {report.recommended_window}" if axis is top else None,
            )
    top.legend(loc="upper left", fontsize="small")
    middle.legend(loc="upper left", fontsize="small")
    figure.suptitle(
        f"admission bench: {report.target} {report.path}\n"
        f"{report.concurrency} clients, {report.duration_s:g} s per window"
    )
    recommended = "none" if report.recommended_window is None else str(report.recommended_window)
    caption = textwrap.fill(f"Recommended window: {recommended}. {report.explanation}", width=125)
    figure.text(0.01, 0.01, caption, fontsize="small", va="bottom", ha="left")
    lines = caption.count("\n") + 1
    figure.tight_layout(rect=(0, 0.025 + 0.018 * lines, 1, 1))
    return figure


def _plot_attacks(axis: Any, runs: Sequence[Attacked]) -> None:
    """_plot_attacks draws the runs under attack as bars, one group per window (auto and the
    recommended static one): the honest throughput without an attack, then under each."""
    windows = list(dict.fromkeys(run.window for run in runs))
    attacks = [name for name in ATTACKS if any(run.attack == name for run in runs)]
    width = 0.8 / (len(attacks) + 1)
    colors = ("tab:gray", "tab:red", "tab:blue", "tab:orange")
    for slot, window in enumerate(windows):
        mine = [run for run in runs if run.window == window]
        bars = [mine[0].alone.throughput_rps] + [
            next((r.row.throughput_rps for r in mine if r.attack == name), 0.0) for name in attacks
        ]
        for i, value in enumerate(bars):
            label = ("no attack" if i == 0 else ATTACKS[attacks[i - 1]]) if slot == 0 else None
            x = slot + (i - len(attacks) / 2) * width
            axis.bar(x, value, width, color=colors[i % len(colors)], label=label)
            if i:
                axis.text(
                    x,
                    value,
                    f"{value / bars[0]:.0%}" if bars[0] else "-",
                    ha="center",
                    va="bottom",
                    fontsize="small",
                )
    axis.set_xticks(range(len(windows)))
    axis.set_xticklabels(["auto" if w is None else f"static {w}" for w in windows])
    axis.set_ylabel("throughput (req/s)")
    top = max((run.alone.throughput_rps for run in runs), default=0.0)
    top = max([top] + [run.row.throughput_rps for run in runs])
    # Headroom above the bars for the legend.
    axis.set_ylim(0, top * 1.45 if top > 0 else 1.0)
    axis.set_title("the same load beside one hostile client", fontsize="medium")
    axis.legend(loc="upper left", fontsize="small", ncol=len(attacks) + 1)
    axis.grid(True, axis="y", alpha=0.3)
