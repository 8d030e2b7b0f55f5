"""Training metrics: one JSON object per line in `metrics.jsonl`, a short console line,
a progress bar on a terminal, and TensorBoard scalars when asked."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends records to run_dir/metrics.jsonl; TensorBoard too when asked and installed."""

    def __init__(self, path: str | Path, *, console: bool = False, tensorboard_dir: str | Path | None = None,
                 bar: Progress | None = None):
        self.path = Path(path)
        self.console = console
        self.bar = bar or Progress(total=0, enabled=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = _summary_writer(tensorboard_dir) if tensorboard_dir is not None else None
        self._file = open(self.path, "a", buffering=1)  # line-buffered: a crash keeps every full record

    def log(self, step: int, record: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time(), 3), **record}
        self._file.write(json.dumps(row) + "\n")
        if self.console:
            self.bar.write(format_record(step, record))
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
                elif isinstance(v, dict):  # skip counts by reason
                    for reason, n in v.items():
                        self._tb.add_scalar(f"{k}/{reason}", n, step)

    def close(self) -> None:
        self.bar.close()
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _summary_writer(log_dir: str | Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
    except ImportError as e:
        raise ValueError(f"loop.tensorboard=true needs the tensorboard package ({e}); "
                         "pip install tensorboard, or set loop.tensorboard=false") from None
    return SummaryWriter(str(log_dir))


class Progress:
    """A tqdm bar (step / steps, loss) that leaves the one-line records readable.

    Records go through `write`: above the bar (tqdm.write) when there is one, plain
    print otherwise. The bar is drawn only on a terminal, never into a log file.
    """

    def __init__(self, *, total: int, initial: int = 0, enabled: bool = True, stream=None,
                 mininterval: float = 0.5):
        self.stream = stream or sys.stderr
        self._bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                             file=self.stream, leave=False, mininterval=mininterval)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, step: int, loss: float) -> None:
        if self._bar is None:
            return
        if math.isfinite(loss):
            self._bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
        self._bar.update(step - self._bar.n)  # redraws at most every `mininterval` seconds

    def write(self, line: str) -> None:
        if self._bar is None:
            print(line, flush=True)
        else:
            self._bar.write(line, file=sys.stdout)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
