"""Tests of `admission bench`'s adaptive-window run: what it reports beside the static sweep."""

from __future__ import annotations

import pytest

from admission.bench.auto import AutoResult, format_auto, measure_auto
from admission.bench.recommend import Row
from admission.bench.sweep import LoadPlan


def row(window: int | None, rps: float, p99: float | None = 30.0) -> Row:
    return Row(window, rps, 20.0 if p99 is not None else None, p99, 0.1)


def test_settled_is_the_median_and_range_of_the_last_half() -> None:
    sizes = ((0.1, 1), (0.5, 2), (1.0, 4), (2.0, 20), (2.5, 16), (3.0, 17), (4.0, 16))
    assert AutoResult(row(None, 100), sizes).settled() == (16, 16, 20)
    assert AutoResult(row(None, 100), ()).settled() is None


def test_format_sets_auto_beside_the_recommended_static_window() -> None:
    auto = AutoResult(row(None, 655.0, 48.2), ((0.0, 1), (4.0, 17), (8.0, 16)))
    text = format_auto(auto, [row(8, 351.0), row(16, 699.0, 29.4)], 16)
    assert text.splitlines() == [
        "ADMISSION_WINDOW=auto: 655 req/s, p50 20.0 ms, p99 48.2 ms, 10.0% rejected",
        "  it settled on a window of 16 (16 to 17 over the last half of the run)",
        "  beside the recommended static window 16: 94% of its 699 req/s, p99 48.2 ms "
        "against 29.4 ms",
    ]
    unread = format_auto(AutoResult(row(None, 0.0, None), ()), [], None)
    assert unread.splitlines() == [
        "ADMISSION_WINDOW=auto: 0 req/s, p50 -, p99 -, 10.0% rejected",
        "  its size could not be read from /readyz",
    ]


@pytest.mark.process
def test_auto_run_serves_the_target_and_reads_the_window_it_settles_on() -> None:
    plan = LoadPlan(
        path="/backend?ms=20&capacity=4",
        concurrency=16,
        duration_s=3.0,
        warmup_s=0.5,
        retry_after_cap_s=1.0,
    )
    auto = measure_auto("admission.demo:app", plan)
    assert auto.row.window is None
    assert auto.row.throughput_rps > 0
    settled = auto.settled()
    assert settled is not None
    median, low, high = settled
    # 4 slots: the window settles near 4, never near the 16 clients. (A pause of a busy
    # machine may take it down to its minimum for a moment: the low end is not checked.)
    assert 1 <= low <= median <= 8
    assert high <= 10
