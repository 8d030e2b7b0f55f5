"""PackerConfig: every knob of the packer in one typed dataclass.

Token counts are in patches (tokens), sizes in the input's units (pixels or latent
cells), frames in the input's frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PackerConfig", "POLICIES", "OVERSIZE", "SIZING"]

POLICIES = ("next_fit", "ffd", "bfd")
OVERSIZE = ("error", "drop", "split_time", "downscale")
SIZING = ("plan", "fit")

# A per-sample token-drop rate: constant, a function of the (T', H', W') patch grid
# (as NaViT / lucidrains na_vit take a function of (h, w)), or (lo, hi) for a rate
# drawn uniformly per sample.
DropRate = float | Callable[[tuple[int, int, int]], float] | tuple[float, float]


@dataclass
class PackerConfig:
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw); a T=1 image is replicated to pt frames
    max_len: int = 4096  # L: tokens per packed row (static, so compiled models see one shape)
    rows: int = 1  # B: rows per PackedBatch
    max_tokens_per_sample: int | None = None  # budget-resize target; None = max_len
    max_frames: int | None = None  # keep at most this many leading frames; None = all
    # fraction of tokens dropped at random after patchify, in [0, 1): a DropRate (a float, (lo, hi),
    # or a function of the grid). Typed Any so a YAML run config can hold it: OmegaConf has no
    # callable type; __post_init__ checks the value.
    drop_rate: Any = 0.0
    policy: str = "bfd"  # bin policy: "next_fit" (NaViT greedy baseline), "ffd", "bfd"
    buffer: int = 64  # open rows held by the stream packer; memory ~ buffer * max_len tokens
    oversize: str = "error"  # sample > max_len: "error" | "drop" (counted) | "split_time" | "downscale"
    fill_to_exact: bool = False  # shrink a sample by <= max_shrink so that its row closes full
    max_shrink: float = 0.1  # largest fraction of a sample's tokens fill-to-exact may drop
    min_tokens: int = 1  # fill-to-exact never shrinks a sample below this many tokens
    # NaViT-style random resolution: (lo, hi) range of the linear scale s ~ U(lo, hi);
    # the sample's token budget becomes s^2 * max_tokens_per_sample. None = off.
    resolution_sampling: tuple[float, float] | None = None
    check_finite: bool = True  # StreamPacker scans tokens for NaN/inf (one pass over N*D)
    # Unsized samples (StreamPacker given UnsizedSample: native size known, decoded once planned):
    # "plan" sizes each with its row in mind (plan_sized; needs policy "bfd"), "fit" takes the
    # plain budget fit and places it whole with `policy` (sizes untouched by the packer).
    sizing: str = "plan"
    min_scale: float = 0.9  # "plan": each target side, frames too, >= min_scale x the plain fit's
    time_trim: int = 3  # fit_budget may cut up to this many trailing temporal patches for more tokens

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        if isinstance(self.drop_rate, list):  # (lo, hi) from YAML or JSON
            self.drop_rate = tuple(self.drop_rate)
        if isinstance(self.resolution_sampling, list):
            self.resolution_sampling = tuple(self.resolution_sampling)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be 3 ints >= 1 (pt, ph, pw), got {self.patch}")
        for name in ("max_len", "rows", "buffer", "min_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_tokens_per_sample", "max_frames"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be None or >= 1, got {v}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.sizing not in SIZING:
            raise ValueError(f"sizing must be one of {SIZING}, got {self.sizing!r}")
        if isinstance(self.min_scale, bool) or not 0.0 < float(self.min_scale) <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale!r}")
        if isinstance(self.time_trim, bool) or not isinstance(self.time_trim, int) or self.time_trim < 0:
            raise ValueError(f"time_trim must be an int >= 0, got {self.time_trim!r}")
        if self.oversize not in OVERSIZE:
            raise ValueError(f"oversize must be one of {OVERSIZE}, got {self.oversize!r}")
        if not 0.0 <= self.max_shrink < 1.0:
            raise ValueError(f"max_shrink must be in [0, 1), got {self.max_shrink}")
        dr = self.drop_rate
        if isinstance(dr, tuple):
            if len(dr) != 2 or not 0.0 <= dr[0] <= dr[1] < 1.0:
                raise ValueError(f"drop_rate (lo, hi) needs 0 <= lo <= hi < 1, got {dr}")
        elif not callable(dr) and not 0.0 <= float(dr) < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {dr}")
        rs = self.resolution_sampling
        if rs is not None and (len(rs) != 2 or not 0.0 < rs[0] <= rs[1] <= 1.0):
            raise ValueError(f"resolution_sampling (lo, hi) needs 0 < lo <= hi <= 1, got {rs}")

    @property
    def token_budget(self) -> int:
        """Tokens one prepared sample may hold before dropping (capped at max_len for "downscale")."""
        budget = self.max_len if self.max_tokens_per_sample is None else int(self.max_tokens_per_sample)
        return min(budget, self.max_len) if self.oversize == "downscale" else budget
