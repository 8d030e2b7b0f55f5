"""Training metrics: one JSON object per line in `metrics.jsonl`, a short console line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends records to run_dir/metrics.jsonl; TensorBoard too when asked and installed."""

    def __init__(self, path: str | Path, *, console: bool = False, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.console = console
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)  # line-buffered: a crash keeps every full record
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # optional: needs the tensorboard package
            )

            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, step: int, record: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time(), 3), **record}
        self._file.write(json.dumps(row) + "\n")
        if self.console:
            print(format_record(step, record), flush=True)
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def format_record(step: int, record: dict[str, Any]) -> str:
    """One console line: `step 120 | loss 0.4812 | lr 2.4e-04 | tokens_per_s 3,263 | ...`."""
    parts = [f"step {step}"]
    for k, v in record.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if v:  # non-numeric fields (skip counts, reasons) only when non-empty
                parts.append(f"{k} {v}")
        elif isinstance(v, int) or abs(v) >= 100:
            parts.append(f"{k} {v:,.0f}")
        else:
            parts.append(f"{k} {v:.4g}")
    return " | ".join(parts)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
