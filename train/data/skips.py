"""Counting bad samples by reason: the stream skips them and keeps going, within bounds.

Each reason is logged once (logging.warning) with its first example, then only
counted, so a shard full of broken files cannot flood the log. With a `log_path`,
every skip is also appended to a JSON-lines skip list (one line per skipped sample:
key, reason, message, count), so a user with 1,000 bad files gets 1,000 names. Counts
from several DataLoader workers or ranks are merged by adding them (`merge_counts`).

A reader that skips `max_in_a_row` samples in a row with none usable raises
NoUsableData instead of spinning forever (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger("patchpack.train.data")

__all__ = ["SkipCounter", "NoUsableData", "merge_counts", "format_counts", "append_jsonl"]


class NoUsableData(ValueError):
    """The data gives nothing to train on; `counts` are the skips by reason."""

    def __init__(self, message: str, counts: Mapping[str, int] | None = None) -> None:
        super().__init__(message)
        self.message, self.counts = message, dict(counts or {})

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.message, self.counts))


class SkipCounter:
    """reason -> count; `add` logs the first of each reason and appends every skip to `log_path`."""

    def __init__(self, counts: Mapping[str, int] | None = None, *, log_path: str | os.PathLike | None = None,
                 where: Mapping | None = None) -> None:
        self.counts: dict[str, int] = dict(counts or {})
        self._logged: set[str] = set(self.counts)
        self.log_path = None if log_path is None else Path(log_path)
        self.where = dict(where or {})  # fields added to each skip-list line, e.g. rank and worker

    def add(self, reason: str, message: str = "", *, key: str = "", count: int = 1) -> None:
        """Count `count` samples skipped for `reason` (a truncated shard loses several at once)."""
        self.counts[reason] = self.counts.get(reason, 0) + count
        if self.log_path is not None:
            append_jsonl(self.log_path, {"key": key, "reason": reason, "message": message, "count": count,
                                         **self.where})
        if reason not in self._logged:
            self._logged.add(reason)
            where = f" ({key})" if key else ""
            more = f"; every skip is listed in {self.log_path}" if self.log_path is not None else ""
            log.warning("skipping sample%s: %s: %s (further '%s' skips are only counted%s)",
                        where, reason, message, reason, more)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one JSON line. One write() on an O_APPEND file: lines from several processes do not interleave."""
    line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def merge_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for reason, n in part.items():
            out[reason] = out.get(reason, 0) + int(n)
    return dict(sorted(out.items()))


def format_counts(counts: Mapping[str, int]) -> str:
    """'too_large=12, corrupt_video=3' (largest first), or 'none'."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k}={v}" for k, v in items) or "none"
