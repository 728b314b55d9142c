"""Counted warnings: every fix a reader makes to its input is counted, logged, and never silent."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("via_tools")


@dataclass
class Report:
    """Collects what a reader changed or skipped, by kind, with the first few places for each.

    Example:
        >>> r = Report(source="shoes.json")
        >>> r.warn("clipped", "image 'a.jpg' region 2: 3 points outside the image")
        >>> r.counts["clipped"]
        1
    """

    source: str = ""
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def warn(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < self.max_examples:
            ex.append(detail)

    def log(self) -> None:
        """Logs one warning line per kind, with its count and first examples."""
        for kind, n in sorted(self.counts.items()):
            log.warning("%s: %d %s (e.g. %s)", self.source, n, kind, "; ".join(self.examples.get(kind, [])))

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)
