"""Smoke run of every benchmark figure, so that `python -m bench` keeps working.

Each figure runs a few iterations at the smoke scale. No timing is asserted: a
figure passes when it returns its rows and every value is a finite number.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from bench.figures import FIGURES, Figure
from bench.loopback import loopback_only
from bench.scale import SMOKE
from bench.stats import Summary, percentile, summarize
from bench.table import Row, render


@pytest.fixture
def loopback_guard() -> Iterator[None]:
    with loopback_only():
        yield


@pytest.mark.parametrize("figure", FIGURES, ids=lambda figure: f"figure{figure.number}")
async def test_bench_figure_produces_numbers(figure: Figure, loopback_guard: None) -> None:
    rows = await figure.run(SMOKE)

    assert rows
    for row in rows:
        assert row.figure.startswith(str(figure.number)), row.figure
        assert _is_number(row.product), row
        assert row.naive is None or _is_number(row.naive), row


def test_bench_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]

    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 99) == pytest.approx(3.97)


def test_bench_percentile_empty_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 99)


def test_bench_table_ratio_and_rendering() -> None:
    faster = Row(figure="1a. x", unit="ms", product=summarize([0.001, 0.002], scale=1000), naive=summarize([0.5], scale=1000))
    rate = Row(figure="3a. y", unit="events/s", product=summarize([100.0, 300.0]), naive=50.0, higher_is_better=True)

    table = render([faster, rate])

    assert faster.ratio == pytest.approx(500 / 1.5)
    assert rate.ratio == pytest.approx(4.0)
    assert "| 1a. x | 1.50 / 1.99 | 500 / 500 | 333.33x | ms | 2 / 1 |  |" in table
    assert "| 3a. y | 200 / 100 | 50.0 | 4.00x | events/s | 2 |  |" in table


def _is_number(value: Summary | float | None) -> bool:
    if isinstance(value, Summary):
        return all(math.isfinite(number) for number in (value.median, value.p99, value.min, value.max)) and value.count > 0
    return isinstance(value, float) and math.isfinite(value)
