"""Tests of the bench's pure arithmetic: percentiles, rows, the recommendation and its inputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from admission.bench.command import UsageError, add_arguments, parse_windows, run
from admission.bench.loadgen import LoadResult
from admission.bench.recommend import Row, percentile, recommend
from admission.bench.report import BenchReport, format_table, plot_figure, write_json
from admission.bench.sweep import to_row


def row(window: int | None, rps: float, p50: float | None = 1.0, p99: float | None = 2.0) -> Row:
    return Row(window=window, throughput_rps=rps, p50_ms=p50, p99_ms=p99, rejected_ratio=0.0)


# percentile


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_of_one_value_is_that_value_at_every_rank() -> None:
    assert [percentile([7.0], q) for q in (0, 50, 99, 100)] == [7.0, 7.0, 7.0, 7.0]


def test_percentile_interpolates_between_neighbouring_ranks() -> None:
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert percentile([10.0, 20.0, 30.0, 40.0], 25) == pytest.approx(17.5)


def test_percentile_ends_are_min_and_max() -> None:
    values = [1.0, 3.0, 8.0, 100.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0


def test_p99_of_a_hundred_values_sits_between_the_two_largest() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 99) == pytest.approx(99.01)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rank_outside_0_to_100_is_rejected(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


# rows from load results


def test_row_counts_only_2xx_as_throughput_and_everything_else_as_rejected() -> None:
    result = LoadResult(
        status_counts={200: 300, 204: 100, 429: 500, 503: 100},
        latencies_s=[0.001] * 200 + [0.003] * 200,
        elapsed_s=2.0,
    )
    r = to_row(8, result)
    assert r.window == 8
    assert r.throughput_rps == pytest.approx(200.0)
    assert r.rejected_ratio == pytest.approx(0.6)
    assert r.p50_ms == pytest.approx(2.0)
    assert r.p99_ms == pytest.approx(3.0)


def test_row_without_admitted_requests_has_no_latency_and_all_rejected() -> None:
    r = to_row(1, LoadResult(status_counts={429: 10}, elapsed_s=1.0))
    assert (r.throughput_rps, r.p50_ms, r.p99_ms, r.rejected_ratio) == (0.0, None, None, 1.0)


def test_row_of_a_run_that_never_started_is_all_zero_not_a_division_error() -> None:
    r = to_row(4, LoadResult())
    assert (r.throughput_rps, r.rejected_ratio, r.p50_ms) == (0.0, 0.0, None)


# recommend


def test_recommends_smallest_window_within_95_percent_of_best() -> None:
    rows = [row(1, 1000), row(2, 1900), row(4, 3600), row(8, 3850), row(16, 3900), row(32, 3890)]
    window, _ = recommend(rows)
    # 0.95 * 3900 = 3705: 4 is short, 8 is the first to reach it.
    assert window == 8


def test_exactly_95_percent_is_enough() -> None:
    assert recommend([row(1, 95.0), row(2, 100.0)])[0] == 1


def test_rows_are_considered_in_window_order_whatever_order_they_come_in() -> None:
    rows = [row(64, 1000), row(2, 990), row(8, 1000), row(1, 400)]
    assert recommend(rows)[0] == 2


def test_best_window_is_recommended_when_nothing_smaller_comes_close() -> None:
    window, explanation = recommend([row(1, 100), row(2, 200), row(4, 400)])
    assert window == 4
    assert "best throughput" in explanation
    assert "largest window measured, so measure larger ones" in explanation


def test_explanation_says_when_requests_queue_outside_the_window() -> None:
    # 4,000 req/s x 15 ms = 60 in flight with a window of 1: the queue is in front of it.
    window, explanation = recommend([row(1, 4000, 15.0, 36.0), row(8, 4100, 14.0, 40.0)])
    assert window == 1
    assert "= 60.0 requests in flight, more than the window of 1 admits" in explanation
    assert "queued before the application" in explanation


def test_explanation_applies_littles_law_with_the_numbers() -> None:
    rows = [row(1, 500, 2.0, 3.0), row(4, 2000, 2.0, 3.0), row(64, 2050, 30.0, 80.0)]
    window, explanation = recommend(rows)
    assert window == 4
    assert "Little's law" in explanation
    # 2,000 req/s x 2.0 ms = 4.0 requests in flight.
    assert "2,000 req/s x 2.0 ms" in explanation
    assert "= 4.0 requests in flight" in explanation
    assert "98%" in explanation
    assert "80.0 ms at window 64" in explanation
    assert explanation.count(". ") == 0 and explanation.endswith(".")


def test_explanation_puts_the_knee_at_best_throughput_times_unloaded_latency() -> None:
    rows = [row(1, 50, 20.0, 30.0), row(64, 2800, 21.0, 55.0), row(512, 3700, 130.0, 200.0)]
    window, explanation = recommend(rows)
    assert window == 512
    assert "6.5x the unloaded 20.0 ms, so the process is saturated" in explanation
    # 3,700 req/s x 20 ms = 74 requests in flight at the knee.
    assert "3,700 req/s x 20.0 ms = 74 would give up little throughput" in explanation
    assert "try larger ones" not in explanation


def test_no_admitted_requests_recommends_nothing_and_says_so() -> None:
    window, explanation = recommend([row(8, 0, None, None), row(2, 0, None, None)])
    assert window is None
    assert "no window size admitted any request" in explanation


def test_a_single_configuration_is_not_a_recommendation_and_says_so() -> None:
    for rows in ([row(None, 1234, 5.0, 9.0)], [row(8, 1234, 5.0, 9.0)]):
        window, explanation = recommend(rows)
        assert window is None
        assert "only one configuration" in explanation
        assert explanation.count(". ") == 0 and explanation.endswith(".")


def test_windows_the_load_cannot_fill_are_never_recommended() -> None:
    # The case: --windows 4,32 --concurrency 8 recommended 32.
    rows = [row(4, 1000, 4.0, 8.0), row(32, 1100, 4.0, 9.0)]
    window, explanation = recommend(rows, concurrency=8)
    assert window is None
    assert "can't fill with 8 clients" in explanation
    assert "measure larger" not in explanation
    # With two fillable windows, the recommendation comes from those alone.
    rows = [row(4, 800, 4.0, 8.0), row(8, 1040, 4.0, 8.0), row(32, 1300, 4.0, 9.0)]
    window, explanation = recommend(rows, concurrency=8)
    assert window == 8
    assert "largest window 8 clients can fill" in explanation
    assert "measure larger ones too" not in explanation
    window, explanation = recommend([row(32, 10), row(64, 20)], concurrency=8)
    assert window is None and "could fill" in explanation


def test_no_rows_is_an_error() -> None:
    with pytest.raises(ValueError):
        recommend([])


# report


def test_table_marks_the_recommended_window_and_shows_missing_latency_as_dash() -> None:
    text = format_table([row(1, 10.0, None, None), row(2, 2000.0, 1.234, 5.678)], 2)
    lines = text.splitlines()
    assert lines[0].split()[0] == "window"
    assert len(lines) == 4
    assert lines[2].split()[:4] == ["1", "10", "-", "-"]
    assert lines[3].endswith("<- recommended")
    assert "2,000" in lines[3] and "1.23" in lines[3] and "5.68" in lines[3]
    assert "recommended" not in lines[2]


def test_json_document_has_the_documented_keys(tmp_path: Path) -> None:
    report = BenchReport(
        rows=[row(4, 100.0)],
        recommended_window=4,
        explanation="because.",
        target="admission.demo:app",
        path="/",
        concurrency=64,
        duration_s=5.0,
    )
    out = tmp_path / "bench.json"
    write_json(report, out)
    document = json.loads(out.read_text())
    assert set(document) == {
        "rows",
        "recommended_window",
        "recommended_request_timeout_s",
        "explanation",
        "target",
        "path",
        "concurrency",
        "duration_s",
        "notes",
        "recommended_timeouts",
        "attacks",
    }
    assert document["rows"] == [
        {"window": 4, "throughput_rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "rejected_ratio": 0.0}
    ]


# --windows and the command's argument checks


def test_windows_are_parsed_sorted_and_deduplicated() -> None:
    assert parse_windows("8, 1,2,,8,") == [1, 2, 8]


@pytest.mark.parametrize("text", ["", " , ", "1,two", "0,1", "-4", "1.5"])
def test_bad_windows_are_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_windows(text)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="admission bench")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_documented_ones() -> None:
    args = parse([])
    # --windows unset means the documented default list (and "was not used" is never said).
    assert (args.target, args.windows, args.duration, args.concurrency, args.path) == (
        "admission.demo:app",
        None,
        5.0,
        64,
        "/",
    )
    assert args.json is None and args.plot is None


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--windows", "1,x"], "--windows"),
        (["--duration", "0"], "--duration"),
        (["--concurrency", "0"], "--concurrency"),
        (["--path", "slow"], "--path"),
        (["not-a-target"], "TARGET"),
        (["https://127.0.0.1:1"], "http://"),
        (["--json", "/no/such/dir/out.json"], "--json"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_before_serving_anything(
    argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("admission bench: ") and mentions in err


def test_bad_windows_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse(["--windows", "4,eight"])) == 2
    assert "'eight' is not a positive integer" in capsys.readouterr().err


def test_the_plot_stands_alone_every_window_refusals_and_the_reason_on_it() -> None:
    pytest.importorskip("matplotlib")  # the bench extra
    windows = [1, 2, 4, 8, 16, 32, 57, 58, 59, 60, 61, 64, 128]
    rows = [
        Row(w, 100.0 * min(w, 60), 1.0, 2.0 + w / 10, rejected_ratio=max(0.0, 1 - w / 64))
        for w in windows
    ]
    report = BenchReport(
        rows=rows,
        recommended_window=60,
        explanation="Window 60 reaches 98% of the best throughput measured.",
        target="admission.demo:app",
        path="/",
        concurrency=64,
        duration_s=1.0,
    )
    figure = plot_figure(report)
    top, _, bottom = figure.axes
    # Every measured window has its own labelled slot, however close the sizes.
    assert [t.get_text() for t in bottom.get_xticklabels()] == [str(w) for w in windows]
    assert list(bottom.get_xticks()) == list(range(len(windows)))
    # The rejected share is plotted, one bar per window, in percent.
    heights = [patch.get_height() for patch in bottom.patches if patch.get_width() < 1]
    assert heights == pytest.approx([100 * r.rejected_ratio for r in rows])
    # The recommendation and its reason are on the picture.
    texts = " ".join(t.get_text() for t in figure.texts).replace("\n", " ")
    assert "Recommended window: 60." in texts and "98% of the best" in texts
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert "recommended: 60" in labels and "can't fill with 64 clients" in labels


@pytest.mark.parametrize("p99_ms", [0.7, 5.0, 12.3, 89.0, 205.0, 999.0, 1234.0, 20_000.0])
def test_the_recommended_request_timeout_is_about_one_and_a_half_p99(p99_ms: float) -> None:
    from admission.bench.recommend import request_timeout_s

    timeout = request_timeout_s(p99_ms)
    assert timeout is not None
    assert 1.5 <= timeout * 1000 / p99_ms <= 1.8
    # Two significant digits, no float noise: what an operator would type.
    from decimal import Decimal

    assert len(Decimal(str(timeout)).normalize().as_tuple().digits) <= 2


def test_no_p99_no_timeout() -> None:
    from admission.bench.recommend import request_timeout_s

    assert request_timeout_s(None) is None
