"""Summary statistics for benchmark samples."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median, 99th percentile, minimum and maximum of `count` samples, in the samples' unit."""

    median: float
    p99: float
    min: float
    max: float
    count: int


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100) by linear interpolation between the closest ranks.

    With fewer than 100 samples the 99th percentile lies between the two largest values.
    Raises ValueError when `values` is empty.
    """
    if not values:
        raise ValueError("percentile of an empty sample; run at least one iteration")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], *, scale: float = 1.0) -> Summary:
    """Summarize `values`, each multiplied by `scale` (1000 turns seconds into ms).

    Raises ValueError when `values` is empty.
    """
    scaled = [value * scale for value in values]
    p99 = percentile(scaled, 99)
    return Summary(median=statistics.median(scaled), p99=p99, min=min(scaled), max=max(scaled), count=len(scaled))
