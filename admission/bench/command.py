"""admission.bench.command: the `admission bench` command line, its arguments and its run.

`add_arguments` declares the options on a parser the CLI provides; `run` carries out a
parsed invocation and returns the exit code: 0 on success, 1 when the bench could not
measure (the target did not start, a load process failed), 2 on a bad argument, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TextIO

from admission.bench.attacks import ATTACKS, Attacked, format_attacks, measure_attacked
from admission.bench.auto import AUTO_WARMUP_S, AutoResult, format_auto, measure_auto
from admission.bench.loadgen import LoadError, LoadResult
from admission.bench.recommend import Row, next_probe, recommend
from admission.bench.report import (
    READ_WRITE,
    BenchReport,
    format_table,
    write_json,
    write_plot,
)
from admission.bench.sweep import (
    ADMISSION_SERVE,
    BenchError,
    LoadPlan,
    Progress,
    parse_url_target,
    sweep_app,
    sweep_url,
)
from admission.errors import quote

DEFAULT_TARGET = "admission.demo:app"
DEFAULT_WINDOWS = "1,2,4,8,16,32,64"
#: How to get matplotlib, which --plot needs.
PLOT_INSTALL = "pip install 'admission[bench]' (from a clone: .venv/bin/pip install -e '.[bench]')"

#: Longest Retry-After a rejected client honours; the window's own is 1 s.
RETRY_AFTER_CAP_S = 1.0

#: Exit codes: measured, could not measure, bad argument (argparse's own code for usage errors).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: The shell's convention for a command ended by SIGINT.
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """UsageError is a bad argument, reported in one line with exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """add_arguments declares TARGET and the bench options on `parser`."""
    parser.add_argument(
        "target",
        nargs="?",
        default=DEFAULT_TARGET,
        metavar="TARGET",
        help=(
            "MODULE:APP to serve under the middleware once per window size, or the http:// URL "
            f"of a service already running with it (measured once). Default: {DEFAULT_TARGET}"
        ),
    )
    parser.add_argument(
        "--windows",
        default=None,
        metavar="LIST",
        help=f"comma-separated window sizes to measure (default: {DEFAULT_WINDOWS})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds of load per window (default: 5)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        metavar="N",
        help="closed-loop clients, each with one request outstanding (default: 64)",
    )
    parser.add_argument(
        "--path", default="/", metavar="PATH", help="request path and query (default: /)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help=(
            "write throughput, latency and the rejected share against window, with the "
            f"recommendation and its reason, as a PNG to FILE (needs matplotlib: {PLOT_INSTALL})"
        ),
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=4,
        metavar="K",
        help=(
            "after the sweep, measure up to K more windows between the recommended one and the "
            "next smaller one, to find the knee a coarse sweep steps over (default: 4; 0: off)"
        ),
    )
    parser.add_argument(
        "--ignore-retry-after",
        action="store_true",
        help=(
            "rejected clients retry at once instead of first waiting the Retry-After they "
            f"were given (at most {RETRY_AFTER_CAP_S:g} s); this measures a retry storm, where "
            "rejecting itself takes the server's time"
        ),
    )
    parser.add_argument(
        "--no-auto",
        dest="auto",
        action="store_false",
        help=(
            "skip the last run, with ADMISSION_WINDOW=auto, that the sweep is compared with "
            "(what the adaptive window gets done and the size it settles on)"
        ),
    )
    parser.add_argument(
        "--attacks",
        action="store_true",
        help=(
            "then measure the load again beside one hostile client, for auto and for the "
            "recommended window: 100 random-path requests every 3 s, and 10 slowly trickled "
            "uploads a second (four more runs)"
        ),
    )
    parser.add_argument(
        "--load-processes",
        type=int,
        default=1,
        metavar="P",
        help=(
            "processes generating the load (default: 1, which drives a single server process "
            "to saturation; raise it for a multi-worker URL target on a machine with spare cores)"
        ),
    )


def parse_windows(text: str) -> list[int]:
    """parse_windows reads "1,2,4" into sorted, distinct positive window sizes.

    Blank items around commas are ignored ("1, 2," is [1, 2]); anything else that is not a
    positive integer, or a list with no sizes at all, is a UsageError.
    """
    windows: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            window = int(item)
        except ValueError:
            window = 0
        if window < 1:
            raise UsageError(
                f"--windows: {quote(item)} is not a positive integer "
                "(expected a comma-separated list such as 1,2,4,8)"
            )
        windows.add(window)
    if not windows:
        raise UsageError("--windows: no window sizes given (expected a list such as 1,2,4,8)")
    return sorted(windows)


def _plan(args: argparse.Namespace) -> LoadPlan:
    """_plan validates the load options and turns them into a LoadPlan."""
    if not args.duration > 0:
        raise UsageError(f"--duration: must be a positive number of seconds, got {args.duration}")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency: must be at least 1, got {args.concurrency}")
    if args.load_processes < 1:
        raise UsageError(f"--load-processes: must be at least 1, got {args.load_processes}")
    if not args.path.startswith("/"):
        raise UsageError(f"--path: must start with '/', got {quote(args.path)}")
    # Checked before measuring, so a typo does not throw away minutes of load.
    for option, value in (("--json", args.json), ("--plot", args.plot)):
        if value and not Path(value).parent.is_dir():
            raise UsageError(f"{option}: directory of {quote(value)} does not exist")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"--plot: matplotlib is not installed; install it with {PLOT_INSTALL}")
    return LoadPlan(
        path=args.path,
        concurrency=args.concurrency,
        duration_s=args.duration,
        processes=args.load_processes,
        # Long enough to open every connection, short next to the measurement itself.
        warmup_s=min(0.5, args.duration / 5),
        # Well-behaved clients back off when told to; without it, small windows measure how
        # fast the server can say 429 rather than how much work it gets done.
        retry_after_cap_s=None if args.ignore_retry_after else RETRY_AFTER_CAP_S,
    )


def _count(n: int, noun: str) -> str:
    """_count writes "1 window size" or "7 window sizes"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _is_url(target: str) -> bool:
    """_is_url tells a URL target from a MODULE:APP one by its scheme."""
    return target.startswith(("http://", "https://"))


def _check_app_target(target: str) -> None:
    """_check_app_target rejects a target that cannot be MODULE:APP before any process starts."""
    module, sep, attribute = target.partition(":")
    if not sep or not module or not attribute:
        raise UsageError(f"TARGET: {quote(target)} is neither MODULE:APP nor an http:// URL")


def _progress_printer(stream: TextIO, total: int, label: str = "") -> Progress:
    """_progress_printer returns a callback printing one line per measured window to `stream`,
    numbered out of `total`; refinement steps are labelled, since fewer may run than allowed."""
    done = 0

    prefix = label + " " if label else ""

    def report(row: Row, result: LoadResult) -> None:
        nonlocal done
        done += 1
        window = "unknown" if row.window is None else str(row.window)
        p99 = "-" if row.p99_ms is None else f"{row.p99_ms:.1f} ms"
        line = (
            f"[{prefix}{done}/{total}] window {window}: "
            f"{row.throughput_rps:,.0f} req/s, p99 {p99}, "
            f"{row.rejected_ratio:.1%} rejected"
        )
        if result.errors:
            line += f", {result.errors} requests got no response"
        print(line, file=stream, flush=True)

    return report


def run(args: argparse.Namespace) -> int:
    """run carries out `admission bench` and returns its exit code.

    The table, the recommendation and any notes go to stdout; progress and errors go to
    stderr, errors as one line starting with "admission bench:".
    """
    try:
        return _run(args, sys.stdout, sys.stderr)
    except UsageError as exc:
        print(f"admission bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BenchError, LoadError) as exc:
        print(f"admission bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # The served target was already stopped on the way out of its context manager.
        print("admission bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """_run is run without the error reporting: it raises UsageError, BenchError, LoadError."""
    plan = _plan(args)
    target: str = args.target
    notes: list[str] = []
    if _is_url(target):
        try:
            url_target = parse_url_target(target)
        except BenchError as exc:
            raise UsageError(str(exc)) from exc
        print(
            f"admission bench: measuring {target} as it runs: {plan.concurrency} clients "
            f"on {plan.path} for {plan.duration_s:g} s",
            file=err,
            flush=True,
        )
        rows = sweep_url(url_target, plan, _progress_printer(err, 1))
        used = "; --windows was not used" if args.windows is not None else ""
        notes.append(
            f"note: a URL target is measured as it is configured and can't be swept{used}. "
            "Serve MODULE:APP to compare window sizes."
        )
    else:
        _check_app_target(target)
        windows = parse_windows(DEFAULT_WINDOWS if args.windows is None else args.windows)
        if windows[0] > plan.concurrency:
            raise UsageError(
                f"--windows: none of {args.windows or DEFAULT_WINDOWS} can fill with "
                f"--concurrency {plan.concurrency} (a window fills only with at least as many "
                "clients): measure smaller windows or raise --concurrency"
            )
        print(
            f"admission bench: serving {target} under {ADMISSION_SERVE.name} for "
            f"{_count(len(windows), 'window size')}: {plan.concurrency} clients on {plan.path} "
            f"for {plan.duration_s:g} s each",
            file=err,
            flush=True,
        )
        rows = sweep_app(target, windows, plan, progress=_progress_printer(err, len(windows)))
        refine = _progress_printer(err, max(0, args.refine), label="refine")
        for _ in range(max(0, args.refine)):
            probe = next_probe(rows, plan.concurrency)
            if probe is None:
                break
            rows += sweep_app(target, [probe], plan, progress=refine)
        rows.sort(key=lambda r: r.window or 0)
        if windows[-1] > plan.concurrency:
            notes.append(
                f"note: windows above --concurrency ({plan.concurrency}) can never fill, "
                "so they measure the same as no window and are not recommended."
            )
    auto = None
    if not _is_url(target) and getattr(args, "auto", True):
        print("admission bench: the same load with ADMISSION_WINDOW=auto", file=err, flush=True)
        auto = measure_auto(target, plan)
    window, explanation = recommend(rows, plan.concurrency)
    attacked = _attacks(args, target, plan, window, rows, auto, err)
    report = BenchReport(
        rows=rows,
        recommended_window=window,
        explanation=explanation,
        target=target,
        path=plan.path,
        concurrency=plan.concurrency,
        duration_s=plan.duration_s,
        notes=tuple(notes),
        attacks=tuple(attacked),
    )
    _print_report(report, out)
    if auto is not None:
        print(file=out)
        print(format_auto(auto, rows, window), file=out)
    if attacked:
        print(file=out)
        print(format_attacks(attacked), file=out)
    _write_files(args, report, notes, out)
    for note in notes:
        print(note, file=out)
    return EXIT_OK


def _attacks(
    args: argparse.Namespace,
    target: str,
    plan: LoadPlan,
    window: int | None,
    rows: list[Row],
    auto: AutoResult | None,
    err: TextIO,
) -> list[Attacked]:
    """_attacks measures the runs under attack (`--attacks`): auto and the recommended static
    window, beside each attack in turn; none for a URL target or without the flag."""
    if not getattr(args, "attacks", False) or _is_url(target):
        return []
    pairs: list[tuple[int | None, Row, float]] = []
    if auto is not None:
        pairs.append((None, auto.row, AUTO_WARMUP_S))
    static = next((r for r in rows if r.window == window), None)
    if window is not None and static is not None:
        pairs.append((window, static, plan.warmup_s))
    runs = []
    for size, alone, warmup_s in pairs:
        for attack in ATTACKS:
            name = "auto" if size is None else f"window {size}"
            print(f"admission bench: {name} beside {ATTACKS[attack]}", file=err, flush=True)
            runs.append(measure_attacked(target, size, attack, plan, alone, warmup_s))
    return runs


def _print_report(report: BenchReport, out: TextIO) -> None:
    """_print_report writes the table and the recommendation to `out`."""
    print(format_table(report.rows, report.recommended_window), file=out)
    print(file=out)
    shown = "none" if report.recommended_window is None else str(report.recommended_window)
    print(f"recommended window: {shown}", file=out)
    print(report.explanation, file=out)
    timeout = report.recommended_request_timeout_s
    if timeout is not None:
        p99 = next(r.p99_ms for r in report.rows if r.window == report.recommended_window)
        print(
            f"recommended request timeout: ADMISSION_REQUEST_TIMEOUT={timeout:g} "
            f"(1.5 x the {p99:.0f} ms p99 at window {shown}, rounded up)",
            file=out,
        )
        print(f"  {READ_WRITE}", file=out)


def _write_files(
    args: argparse.Namespace, report: BenchReport, notes: list[str], out: TextIO
) -> None:
    """_write_files writes --json and --plot when asked, saying where in `out` or in `notes`."""
    if args.json:
        try:
            write_json(report, Path(args.json))
        except OSError as exc:
            raise BenchError(f"--json: cannot write {args.json}: {exc.strerror}") from exc
        print(f"wrote {args.json}", file=out)
    if args.plot:
        try:
            written = write_plot(report, Path(args.plot))
        except OSError as exc:
            raise BenchError(f"--plot: cannot write {args.plot}: {exc.strerror}") from exc
        if written:
            print(f"wrote {args.plot}", file=out)
        else:
            notes.append(f"note: {args.plot} not written: no row has a known window to plot.")
