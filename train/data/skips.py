"""Counting bad samples by reason: the stream skips them and keeps going.

Each reason is logged once (logging.warning) with its first example, then only
counted, so a shard full of broken files cannot flood the log. Counts from several
DataLoader workers or ranks are merged by adding them (`merge_counts`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

log = logging.getLogger("patchpack.train.data")


class SkipCounter:
    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts: dict[str, int] = dict(counts or {})
        self._logged: set[str] = set(self.counts)

    def add(self, reason: str, message: str = "", *, key: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason not in self._logged:
            self._logged.add(reason)
            where = f" ({key})" if key else ""
            log.warning("skipping sample%s: %s: %s (further '%s' skips are only counted)", where, reason, message, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def merge_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for reason, n in part.items():
            out[reason] = out.get(reason, 0) + int(n)
    return dict(sorted(out.items()))
