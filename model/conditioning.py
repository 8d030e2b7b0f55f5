"""Prompting with frames: which tokens of a sample are given (clean, t = 0), for training and sampling.

A given token is a whole spacetime patch: its temporal patch of pt frames (in the DiT's
units: pixel frames, or latent frames of the causal VAE) is entirely known. The DiT then
sees t = 0 for it (model/dit.py), the loss skips it (model/flow.py) and the sampler writes
it back after every Euler step (model/sampler.py). Which tokens are given is decided per
temporal patch and gathered to tokens by their t coordinate, so token dropping and any
grid work the same.

Training (`ConditioningConfig`, `condition_batch`) draws one strategy per sample:

    strategy         given temporal patches (T' of them; k >= 1, one patch always generated)
    none             -
    first_frame      patch 0, holding frame 0 across it          image-to-video
    first_frames     patches 0 .. k-1                              extend forward
    last_frames      patches T'-k .. T'-1                          extend backward
    first_and_last   patches 0 .. a-1 and T'-b .. T'-1             connect two clips
    random_frames    k patches anywhere

A sample with one temporal patch (an image, or a clip no longer than pt) is never
conditioned: it would be given itself. "Holding frame 0" is the image rule of
packer/patchify.py: an image with pt > 1 is one frame copied pt times, so the patch that
carries a given first frame repeats it, in training as at sampling (`hold_first_frame`).
With the causal VAE, latent frame 0 encodes pixel frame 0 alone, so latent patch 0
(pt = 1) is exactly a given image and nothing is held.

Precedents: Open-Sora sets the timestep of given frames to 0 (per bucket); Wan2.2 TI2V
gives tokens their own timesteps (one sample at a time); here inside a packed row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from patchpack.packer import PackedBatch

__all__ = [
    "STRATEGIES",
    "Condition",
    "ConditioningConfig",
    "condition_batch",
    "given_patches",
    "hold_first_frame",
]

STRATEGIES = ("none", "first_frame", "first_frames", "last_frames", "first_and_last", "random_frames")
_MIN_PATCHES = {"none": 1, "first_frame": 2, "first_frames": 2, "last_frames": 2, "first_and_last": 3,
                "random_frames": 2}


@dataclass(frozen=True)
class ConditioningConfig:
    """Per-sample conditioning strategies while training, as relative weights (normalised over the
    strategies a sample's length allows). The default trains unconditioned only, and then draws
    nothing: a run without conditioning is bitwise the same as before it existed."""

    none: float = 1.0  # no frame given
    first_frame: float = 0.0  # frame 0 given (held across its temporal patch): image-to-video
    first_frames: float = 0.0  # the first k temporal patches given: extend forward
    last_frames: float = 0.0  # the last k: extend backward
    first_and_last: float = 0.0  # the first a and the last b: connect two clips
    random_frames: float = 0.0  # k temporal patches anywhere
    # k is uniform in 1 .. max(1, floor(max_given * T')) temporal patches (a + b for
    # first_and_last), capped so that at least one patch is generated
    max_given: float = 0.5

    def __post_init__(self) -> None:
        w = self.weights
        if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise ValueError(f"conditioning weights must be >= 0 with a positive sum, got {w}")
        if not 0 < self.max_given < 1:
            raise ValueError(f"conditioning.max_given={self.max_given} must be in (0, 1)")

    @property
    def weights(self) -> dict[str, float]:
        return {s: float(getattr(self, s)) for s in STRATEGIES}

    @property
    def enabled(self) -> bool:
        return any(v > 0 for s, v in self.weights.items() if s != "none")


# --------------------------------------------------------------------------- training


def draw_patches(t_patches: int, config: ConditioningConfig, *, generator: torch.Generator) -> tuple[str, Tensor]:
    """(strategy, [T'] bool given temporal patches) for one sample of T' temporal patches."""
    allowed = {s: w for s, w in config.weights.items() if w > 0 and t_patches >= _MIN_PATCHES[s]}
    given = torch.zeros(t_patches, dtype=torch.bool)
    if not allowed or set(allowed) == {"none"}:
        return "none", given
    names = list(allowed)
    pick = int(torch.multinomial(torch.tensor([allowed[s] for s in names]), 1, generator=generator))
    strategy = names[pick]
    k_max = max(1, min(t_patches - 1, int(config.max_given * t_patches)))
    k = 1 + int(torch.randint(k_max, (), generator=generator))
    if strategy == "first_frame":
        given[0] = True
    elif strategy == "first_frames":
        given[:k] = True
    elif strategy == "last_frames":
        given[t_patches - k:] = True
    elif strategy == "first_and_last":
        k = max(2, k)  # one patch each side at least, and one generated between
        a = 1 + int(torch.randint(k - 1, (), generator=generator))
        given[:a] = True
        given[t_patches - (k - a):] = True
    elif strategy == "random_frames":
        given[torch.randperm(t_patches, generator=generator)[:k]] = True
    return strategy, given


def hold_first_frame(tokens_ND: Tensor, *, patch: tuple[int, int, int], channels: int) -> Tensor:
    """Tokens whose temporal patch repeats its first frame: features (c, pt, ph, pw), every
    pt slice set to slice 0. The token an image becomes when patchified with pt > 1."""
    pt = patch[0]
    if pt == 1:
        return tokens_ND
    x = tokens_ND.reshape(tokens_ND.shape[0], channels, pt, -1)  # (N, C, pt, ph*pw)
    return x[:, :, :1].expand_as(x).reshape(tokens_ND.shape)


def condition_batch(batch: PackedBatch, config: ConditioningConfig, *, patch: tuple[int, int, int], channels: int,
                    generator: torch.Generator) -> tuple[PackedBatch, list[str]]:
    """Draw a strategy per sample and return (the batch with `given` set, the strategies).

    Samples drawn "first_frame" get their first temporal patch held (`hold_first_frame`).
    Draws use `generator` only (CPU), a fixed number of calls per sample and strategy.
    Cost: a loop over the S samples and one [B, L] merge; tokens are copied only when a
    patch is held.
    """
    drawn = [draw_patches(int(g[0]), config, generator=generator) for g in batch.grid]
    strategies = [s for s, _ in drawn]
    if all(s == "none" for s in strategies):
        return batch, strategies
    t_coords = batch.split(batch.coords[..., 0].long().cpu())  # S x [N_s] temporal patch of each token
    given = batch.merge([mask[t] for (_, mask), t in zip(drawn, t_coords)])  # (B, L) bool
    held = [s == "first_frame" for s in strategies]
    if any(held) and patch[0] > 1:
        parts = batch.split(batch.tokens)
        parts = [torch.where((t == 0)[:, None], hold_first_frame(p, patch=patch, channels=channels), p) if h else p
                 for p, t, h in zip(parts, t_coords, held)]
        batch = batch.with_tokens(batch.merge([p.to(batch.tokens.device) for p in parts]))
    return batch.with_given(given.to(batch.tokens.device)), strategies


# --------------------------------------------------------------------------- sampling


@dataclass
class Condition:
    """What one generation request is prompted with, in the DiT's units (pixels, or latents).

    video: [C, T, H, W] on the request's own grid (T frames of H x W). Only the given frames
        are read, unless `strength` is set.
    given: [T] bool, the frames of `video` that are given (kept clean and written back at every
        Euler step); None: none. A temporal patch is given only whole: with pt > 1, hold a
        single given frame across its patch (repeat it) first.
    strength: SDEdit (Meng et al., arXiv:2108.01073): the generated tokens start from `video`
        noised to flow time t = strength and integrate from there; 0 returns `video`, 1 is
        pure generation. None: start from noise (t = 1).
    """

    video: Tensor
    given: Tensor | None = None
    strength: float | None = None


def given_patches(given_T: Tensor, *, frames: int, patch_t: int) -> Tensor:
    """[T] bool given frames -> [T'] bool given temporal patches; ValueError on a partly given patch."""
    if tuple(given_T.shape) != (frames,) or given_T.dtype != torch.bool:
        raise ValueError(f"given must be bool [T] = [{frames}], got {given_T.dtype} {tuple(given_T.shape)}")
    if frames == 1:
        return given_T.clone()
    per_patch = given_T.reshape(-1, patch_t)  # (T', pt)
    partial = (per_patch.any(1) & ~per_patch.all(1)).nonzero().flatten().tolist()
    if partial:
        p = partial[0]
        raise ValueError(f"temporal patch {p} (frames {p * patch_t}..{p * patch_t + patch_t - 1}) is only partly "
                         f"given: give whole patches of {patch_t} frames (hold a single frame across its patch)")
    return per_patch.all(1)
