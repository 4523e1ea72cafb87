"""The refinement step of `admission bench`: where to measure after a coarse sweep."""

from __future__ import annotations

from admission.bench.recommend import Row, next_probe, recommend


def _row(window: int, rps: float, p50: float = 20.0) -> Row:
    return Row(window, rps, p50, p50 * 1.5, 0.0)


def test_probe_lands_on_the_littles_law_knee_between_two_windows() -> None:
    rows = [_row(16, 780), _row(32, 1240, 25.0), _row(64, 1880, 31.7)]
    assert recommend(rows)[0] == 64
    # best 1880 req/s x unloaded 20 ms = 37.6 requests in flight: the knee is at 38.
    assert next_probe(rows) == 38


def test_probe_bisects_when_the_knee_was_already_measured() -> None:
    rows = [_row(32, 1240), _row(38, 1500), _row(64, 1880, 31.7)]
    assert next_probe(rows) == 51


def test_no_probe_when_the_smallest_window_is_recommended() -> None:
    rows = [_row(4, 1000), _row(8, 1000), _row(16, 1001)]
    assert recommend(rows)[0] == 4
    assert next_probe(rows) is None


def test_no_probe_between_adjacent_windows() -> None:
    rows = [_row(7, 500), _row(8, 1000)]
    assert next_probe(rows) is None


def test_a_probe_that_reaches_the_bar_becomes_the_recommendation() -> None:
    rows = [_row(32, 1240), _row(64, 1880, 31.7)]
    probe = next_probe(rows)
    assert probe is not None and 32 < probe < 64
    rows.append(_row(probe, 1850, 24.0))
    assert recommend(rows)[0] == probe


def test_nothing_admitted_means_nothing_to_probe() -> None:
    rows = [Row(1, 0.0, None, None, 1.0), Row(8, 0.0, None, None, 1.0)]
    assert next_probe(rows) is None
