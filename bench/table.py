"""Rows of the benchmark table and their Markdown rendering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats import Summary

Value = Summary | float | None

HEADER = ("Figure", "Product: median / p99", "Naive: median / p99", "Ratio", "Unit", "n", "Budget")
# Rates are better when higher, so their rows show the median and the worst (lowest) run.
RATE_NOTE = "Rows in events/s show median / min over runs instead of median / p99."


@dataclass(frozen=True)
class Row:
    """One measured figure. A float value is a single number with no spread, such as a rate.

    `ratio` is how many times better the product is than the naive pattern: above 1
    the product wins, below 1 it loses.
    """

    figure: str
    unit: str
    product: Value
    naive: Value = None
    higher_is_better: bool = False
    budget: str = ""

    @property
    def ratio(self) -> float | None:
        product = _central(self.product)
        naive = _central(self.naive)
        if product is None or naive is None or product == 0 or naive == 0:
            return None
        return product / naive if self.higher_is_better else naive / product


def render(rows: Sequence[Row]) -> str:
    """Render `rows` as a Markdown table."""
    lines = [_line(HEADER), _line(["---"] * len(HEADER))]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        cells = (
            row.figure,
            _format_value(row.product, worst_is_min=row.higher_is_better),
            _format_value(row.naive, worst_is_min=row.higher_is_better),
            ratio,
            row.unit,
            _format_count(row),
            row.budget,
        )
        lines.append(_line(cells))
    return "\n".join(lines)


def format_number(value: float) -> str:
    """Format with 3 significant digits, and no exponent for values of 1000 or more."""
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _central(value: Value) -> float | None:
    if isinstance(value, Summary):
        return value.median
    return value


def _format_value(value: Value, *, worst_is_min: bool) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Summary):
        worst = value.min if worst_is_min else value.p99
        return f"{format_number(value.median)} / {format_number(worst)}"
    return format_number(value)


def _format_count(row: Row) -> str:
    counts = [str(value.count) for value in (row.product, row.naive) if isinstance(value, Summary)]
    return " / ".join(counts)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
