"""The loop both training runs share: steps to a target, stop signals, a time limit, and
the cadence of metrics records and checkpoints.

    while step < steps:
        agree on stopping (SIGTERM/Ctrl-C, time limit)   # before reading data: a checkpoint
        outcome = task.train_step()                      #   then holds the data state "before this step"
        "exhausted" -> stop | "stopped" -> stop | "skipped" -> again (no step taken) | "done" -> step += 1
        every log_every steps: task.log(); every ckpt_every steps: task.save()
    task.save() unless this step is saved already

A task (dit_loop.DiTTask, vae_loop.VAETask) brings the model-specific parts. `agree`
is where a multi-process task reduces the flags over ranks, so every rank stops at the
same step; a one-process task returns them as they are. A stop signal that arrives
while the task waits for data (a stream skipping bad records for a long time) is raised
there at a safe point (patchpack.train.stop) and the task returns "stopped": the loop
still ends with a checkpoint.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

from patchpack.train.stop import StopSignals

__all__ = ["StepOutcome", "TrainingTask", "run_loop"]

StepOutcome = Literal["done", "skipped", "exhausted", "stopped"]


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


def run_loop(task: TrainingTask, *, steps: int, log_every: int, ckpt_every: int,
             time_limit: float | None = None) -> str:
    """Drive `task` to `steps`. Returns why it stopped: "steps", "sigterm", "sigint",
    "time_limit" or "data_exhausted". The last step is always checkpointed."""
    t0 = time.perf_counter()
    saved_at, stopped = -1, "steps"
    with StopSignals() as stop:
        while task.step < steps:
            over_time = time_limit is not None and time.perf_counter() - t0 > time_limit
            signalled, over_time = task.agree([stop.requested, over_time])
            if signalled or over_time:
                stopped = (stop.signal_name.lower() or "sigterm") if signalled else "time_limit"
                break
            outcome = task.train_step()
            if outcome == "stopped":
                stopped = stop.signal_name.lower() or "sigterm"
                break
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
