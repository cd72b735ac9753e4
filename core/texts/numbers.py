"""Lists of numbers typed by people ("0, 0.05, 0.1" or "0.1 1"): one parser for every such field.

Each field states its range, its largest count and its own messages; the parser raises the field's error class
with the message of the first thing wrong (the item and why), so the page shows one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class NumberList:
    """How one field reads: the range [low, high] (low excluded when low_open), at most max_count distinct values,
    and its messages: empty, not_a_number ({item!r}), out_of_range ({item}), too_many ({count})."""

    low: float
    high: float
    max_count: int
    empty: str
    not_a_number: str
    out_of_range: str
    too_many: str
    low_open: bool = False
    error: type[Exception] = ValueError

    def parse(self, text: str) -> tuple[float, ...]:
        """The typed numbers, sorted and deduplicated."""
        items = [item for item in _SEPARATORS.split(text.strip()) if item]
        if not items:
            raise self.error(self.empty)
        values = []
        for item in items:
            try:
                value = float(item)
            except ValueError:
                raise self.error(self.not_a_number.format(item=item)) from None
            above_low = value > self.low if self.low_open else value >= self.low
            if not math.isfinite(value) or not above_low or value > self.high:
                raise self.error(self.out_of_range.format(item=item))
            values.append(value)
        numbers = tuple(sorted(set(values)))
        if len(numbers) > self.max_count:
            raise self.error(self.too_many.format(count=len(numbers)))
        return numbers
