"""`DiTConfig`: every knob of the packed DiT, and the size presets.

Presets follow facebookresearch/DiT (S/B/L/XL: hidden, depth, heads), plus a `tiny`
preset small enough to train on a laptop CPU. Parameter counts: docs/model.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

__all__ = ["DiTConfig", "DiT_configs", "dit_config"]

PREDICTIONS = ("v", "x")
ROPE_EXTRAPOLATION = ("none", "ntk", "pi")


@dataclass(frozen=True)
class DiTConfig:
    # --- input: tokens are patch vectors of C * pt * ph * pw features (packer's patchify)
    in_channels: int = 3  # C: 3 for pixels, the latent channels behind an autoencoder
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw) the packer used
    # --- transformer trunk
    hidden: int = 384  # D, the token width
    depth: int = 12  # number of DiT blocks
    heads: int = 6  # attention heads; head_dim = hidden // heads must be even (RoPE pairs)
    mlp_ratio: float = 4.0  # MLP width = mlp_ratio * hidden
    text_dim: int = 384  # feature size of the text encoder's tokens (TextEncoder.dim)
    qk_norm: bool = True  # RMSNorm on q and k per head: keeps logits bounded at large scale
    # --- 3D RoPE over the packer's (t, h, w) coords; see model/rope.py
    rope_theta: float = 10000.0  # base of the frequency ladder, as RoFormer
    rope_split: tuple[int, int, int] = (2, 3, 3)  # share of rotary pairs for t : h : w
    rope_extrapolation: str = "none"  # "none" | "ntk" (NTK-aware theta) | "pi" (position interp.)
    rope_train_grid: tuple[int, int, int] = (16, 32, 32)  # largest (T', H', W') seen in training;
    #   grids beyond it on an axis get that axis rescaled (ntk/pi); "none" ignores it
    # --- output
    prediction: str = "v"  # what the final layer predicts: "v" (velocity) or "x" (the clean tokens;
    #   JiT, arXiv:2511.13720: a narrow model cannot reproduce high-dimensional patch noise, but can
    #   output clean data). model/flow.py `to_velocity` turns either into a velocity.
    # --- kernels
    attn_backend: str = "auto"  # patchpack.kernels backend: auto | reference | cpu | flex | ...

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise lists (from JSON / YAML) to tuples.
        for name in ("patch", "rope_split", "rope_train_grid"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be 3 positive ints, got {self.patch}")
        if min(self.in_channels, self.hidden, self.depth, self.heads, self.text_dim) < 1:
            raise ValueError(f"sizes must be positive: {self}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(
                f"hidden={self.hidden} must split into heads={self.heads} of even head_dim "
                f"(got {self.hidden / self.heads})"
            )
        if len(self.rope_split) != 3 or min(self.rope_split) < 0 or sum(self.rope_split) == 0:
            raise ValueError(f"rope_split must be 3 non-negative ints, not all 0: {self.rope_split}")
        if self.rope_extrapolation not in ROPE_EXTRAPOLATION:
            raise ValueError(
                f"rope_extrapolation={self.rope_extrapolation!r} not in {ROPE_EXTRAPOLATION}"
            )
        if len(self.rope_train_grid) != 3 or min(self.rope_train_grid) < 1:
            raise ValueError(f"rope_train_grid must be 3 positive ints: {self.rope_train_grid}")
        if not 0 < self.mlp_ratio < math.inf:  # NaN fails this too
            raise ValueError(f"mlp_ratio must be a finite number > 0, got {self.mlp_ratio}")
        if not 0 < self.rope_theta < math.inf:
            raise ValueError(f"rope_theta must be a finite number > 0, got {self.rope_theta}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction={self.prediction!r} not in {PREDICTIONS}")

    @property
    def patch_dim(self) -> int:
        """Features per token: C * pt * ph * pw."""
        return self.in_channels * math.prod(self.patch)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig keys {unknown}")
        return cls(**d)


#################################################################################
#                                  DiT Configs                                  #
#################################################################################


def DiT_tiny(**kw) -> DiTConfig:
    # CPU demo size: ~2.5M params (docs/model.md counts every preset).
    return replace(DiTConfig(hidden=128, depth=6, heads=4, text_dim=64), **kw)


def DiT_S(**kw) -> DiTConfig:
    return replace(DiTConfig(hidden=384, depth=12, heads=6), **kw)


def DiT_B(**kw) -> DiTConfig:
    return replace(DiTConfig(hidden=768, depth=12, heads=12), **kw)


def DiT_L(**kw) -> DiTConfig:
    return replace(DiTConfig(hidden=1024, depth=24, heads=16), **kw)


def DiT_XL(**kw) -> DiTConfig:
    return replace(DiTConfig(hidden=1152, depth=28, heads=16), **kw)


DiT_configs: dict[str, Callable[..., DiTConfig]] = {
    "tiny": DiT_tiny,
    "S": DiT_S,
    "B": DiT_B,
    "L": DiT_L,
    "XL": DiT_XL,
}


def dit_config(name: str, **overrides) -> DiTConfig:
    """A preset by name, with field overrides: dit_config("tiny", text_dim=384)."""
    if name not in DiT_configs:
        raise ValueError(f"unknown DiT preset {name!r}; choose from {sorted(DiT_configs)}")
    return DiT_configs[name](**overrides)
