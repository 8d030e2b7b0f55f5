"""SampleError: a bad input sample, with a short machine-readable reason.

Stream consumers catch it and count skips by `.reason` instead of dying on one
corrupt clip. It subclasses ValueError, so callers that only know "bad input"
still catch it.
"""

from __future__ import annotations

__all__ = ["SampleError", "REASONS"]

# Reasons raised by prepare_sample / fit_budget and counted by StreamPacker.
REASONS = {
    "bad_type": "not a tensor / not a PatchedSample",
    "bad_rank": "wrong number of dimensions",
    "bad_dtype": "not a floating dtype, or a dtype other than the stream's",
    "bad_dim": "feature size D differs from the stream's",
    "bad_coords": "coords are not [N, 3]",
    "empty": "a zero-sized dimension (no channels, frames, rows, columns or tokens)",
    "nonfinite": "NaN or inf values",
    "too_small": "smaller than one patch",
    "too_long": "more temporal patches than the token budget",
    "oversize": "more tokens than max_len",
    "bad_size": "an unsized sample's native size is not 3 ints, or its decoded video is smaller than planned",
}


class SampleError(ValueError):
    """A sample that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.reason, self.message))
