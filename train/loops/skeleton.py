"""The loop both training runs share: steps to a target, stop signals, a time limit, and
the cadence of metrics records and checkpoints.

    while step < steps:
        agree on stopping (SIGTERM, time limit)   # before reading data: a checkpoint then
        outcome = task.train_step()               #   holds the data state "before this step"
        "exhausted" -> stop | "skipped" -> again (no step taken) | "done" -> step += 1
        every log_every steps: task.log(); every ckpt_every steps: task.save()
    task.save() unless this step is saved already

A task (dit_loop.DiTTask, vae_loop.VAETask) brings the model-specific parts. `agree`
is where a multi-process task reduces the flags over ranks, so every rank stops at the
same step; a one-process task returns them as they are.
"""

from __future__ import annotations

import signal
import time
from typing import Literal, Protocol

__all__ = ["StepOutcome", "TrainingTask", "StopFlag", "run_loop"]

StepOutcome = Literal["done", "skipped", "exhausted"]


class TrainingTask(Protocol):
    step: int  # optimizer steps taken so far (a resume starts above 0)

    def agree(self, flags: list[bool]) -> list[bool]:
        """Each flag OR-ed over ranks (collective when there are several)."""
        ...

    def train_step(self) -> StepOutcome: ...

    def log(self) -> None:
        """Write one metrics record for the steps since the last one (collective)."""
        ...

    def save(self) -> None:
        """Write one checkpoint of the current step (collective)."""
        ...


class StopFlag:
    """SIGTERM -> set a flag the loop reads at the step boundary (main thread only)."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self) -> StopFlag:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, the loop runs to the end
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def run_loop(task: TrainingTask, *, steps: int, log_every: int, ckpt_every: int,
             time_limit: float | None = None) -> str:
    """Drive `task` to `steps`. Returns why it stopped: "steps", "sigterm", "time_limit" or
    "data_exhausted". The last step is always checkpointed."""
    t0 = time.perf_counter()
    saved_at, stopped = -1, "steps"
    with StopFlag() as stop:
        while task.step < steps:
            over_time = time_limit is not None and time.perf_counter() - t0 > time_limit
            sigterm, over_time = task.agree([stop.set, over_time])
            if sigterm or over_time:
                stopped = "sigterm" if sigterm else "time_limit"
                break
            outcome = task.train_step()
            if outcome == "exhausted":
                stopped = "data_exhausted"
                break
            if outcome == "skipped":
                continue
            if task.step % log_every == 0 or task.step == steps:
                task.log()
            if task.step % ckpt_every == 0:
                task.save()
                saved_at = task.step
        if saved_at != task.step:
            task.save()
    return stopped
