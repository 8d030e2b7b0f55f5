"""Generation for any list of grid sizes: noise on each grid, packed, Euler (or Heun) with CFG.

Every request (prompt, grid) becomes two packed samples, conditional and unconditional
(the null caption ""), sharing one noise state. All samples, of whatever size and
duration, are bin-packed once (patchpack.packer.plan_packs) and each Euler step runs one
packed forward per batch of `rows` rows, so a 1-frame image and a 16-frame clip share
the forward pass. Classifier-free guidance (Ho & Salimans, arXiv:2207.12598):
    v = v_uncond + cfg_scale * (v_cond - v_uncond)       (cfg_scale = 1: no uncond pass)
Each request follows its own schedule: t_k = shift_time(1 - k / steps, shift(grid)) from
model/flow.py, the same resolution shift the model was trained with, and
    x_{k+1} = x_k + (t_{k+1} - t_k) * v(x_k, t_k)       (t goes 1 -> 0)
or, with solver="heun", the mean of v(x_k, t_k) and v at that Euler point and t_{k+1}
(Karras et al. arXiv:2206.00364, Alg. 1; the last step, onto t = 0, stays Euler).
Request i draws its noise from a generator seeded `seed + i`, so its video does not depend
on which other requests were packed with it (the DiT is pack-invariant).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from patchpack.packer import PatchedSample, grid_coords, pack, plan_packs, unpatchify

from .autoencoder import Autoencoder, IdentityAutoencoder
from .flow import FlowConfig, resolution_shift, shift_time, to_velocity

__all__ = ["check_grid", "generate"]

TextEncoder = Callable[[list[str]], tuple[Tensor, Tensor]]
SOLVERS = ("euler", "heun")


def check_grid(
    index: int, grid: Sequence[int], *, patch: tuple[int, int, int], max_tokens: int
) -> tuple[int, int, int]:
    """Validate a requested (T, H, W) and return its patch grid (T', H', W')."""
    if len(grid) != 3 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in grid):
        raise ValueError(f"grid {index}: expected 3 ints (T, H, W), got {grid!r}")
    t, h, w = grid
    pt, ph, pw = patch
    for name, size, p in (("T", t, pt), ("H", h, ph), ("W", w, pw)):
        if size < 1:
            raise ValueError(f"grid {index} {tuple(grid)}: {name}={size} must be >= 1")
        if size % p and not (name == "T" and size == 1):
            raise ValueError(f"grid {index} {tuple(grid)}: {name}={size} is not a multiple of the patch {p} (patch={patch})")
    g = (1 if t == 1 else t // pt, h // ph, w // pw)
    n = math.prod(g)
    if n > max_tokens:
        raise ValueError(f"grid {index} {tuple(grid)}: {n} tokens > max_tokens={max_tokens}")
    return g


@torch.no_grad()
def generate(
    model: nn.Module,
    text_encoder: TextEncoder,
    prompts: Sequence[str],
    grids: Sequence[Sequence[int]],
    *,
    steps: int = 30,
    cfg_scale: float = 4.0,
    seed: int = 0,
    patch: tuple[int, int, int] | None = None,
    channels: int | None = None,
    autoencoder: Autoencoder | None = None,
    flow: FlowConfig | None = None,
    max_tokens: int = 16384,
    max_len: int | None = None,
    rows: int | None = None,
    on_step: Callable[[int], None] | None = None,
    solver: str = "euler",
) -> list[Tensor]:
    """Sample one video per (prompt, grid); returns [C, T, H, W] tensors (images: T = 1).

    grids: (T, H, W) in the units the DiT sees (pixels with the identity autoencoder,
        latent frames/rows/columns otherwise); multiples of the patch, T = 1 for images.
    patch, channels: default to the model's config; must match its patch_dim.
    max_tokens: the largest grid accepted, in tokens (T'H'W'); larger raises ValueError.
    max_len: packed row length L (default: the largest request, so everything fits).
    rows: rows per packed forward (default: all rows, one forward per step).
    on_step: called with k + 1 after step k (e.g. a progress bar's update).
    solver: "euler", or "heun" (Karras et al. arXiv:2206.00364, Alg. 1: an Euler step, then
        the mean of the velocities at both ends; two model calls per step but the last).
    """
    cfg = model.config
    patch = tuple(cfg.patch if patch is None else patch)
    channels = cfg.in_channels if channels is None else channels
    if channels * math.prod(patch) != cfg.patch_dim:
        raise ValueError(f"channels={channels} x patch={patch} != model patch_dim={cfg.patch_dim}")
    prompts = list(prompts)
    if len(prompts) != len(grids) or not prompts:
        raise ValueError(f"need one grid per prompt and at least one: {len(prompts)} prompts, {len(grids)} grids")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} not in {SOLVERS}")
    if rows is not None and rows < 1:
        raise ValueError(f"rows={rows} must be >= 1")
    pgrids = [check_grid(i, g, patch=patch, max_tokens=max_tokens) for i, g in enumerate(grids)]
    sizes = [math.prod(g) for g in pgrids]
    max_len = max(sizes) if max_len is None else max_len
    too_long = [(i, n) for i, n in enumerate(sizes) if n > max_len]
    if too_long:
        raise ValueError(f"grid {too_long[0][0]} {tuple(grids[too_long[0][0]])}: {too_long[0][1]} tokens > max_len={max_len}")
    device = next(model.parameters()).device
    flow = flow or FlowConfig()
    r = len(prompts)

    # Noise per request, drawn as tokens rather than patchified from a noise video: an image
    # with pt > 1 is pt copies of one frame, and its noise must still be iid per feature.
    # Then each request's shifted schedule [R, steps+1].
    x = [
        torch.randn(n, cfg.patch_dim, generator=torch.Generator().manual_seed(seed + i)).to(device)
        for i, n in enumerate(sizes)
    ]
    shift_R = resolution_shift(torch.tensor(pgrids), config=flow)
    sched = shift_time(torch.linspace(1.0, 0.0, steps + 1)[None], shift_R[:, None])  # (R, steps+1)

    # Entries: (request, caption) pairs; caption r is the null caption.
    guided = cfg_scale != 1.0
    entries = [(i, i) for i in range(r)] + ([(i, r) for i in range(r)] if guided else [])
    was_training = model.training
    model.eval()
    try:
        text_tokens, text_lengths = text_encoder(prompts + [""])
        captions = list(text_tokens.to(device).split(text_lengths.tolist()))
        batches = _plan_batches(entries, sizes, pgrids, captions, max_len=max_len, rows=rows, device=device)

        def velocity(states: list[Tensor], k: int) -> list[Tensor]:
            """CFG-combined velocity of every request at its own schedule time sched[i, k]."""
            v_cond, v_uncond = [None] * r, [None] * r
            for batch, order, text, lengths in batches:
                tokens = torch.cat([states[entries[e][0]] for e in order])  # valid tokens in batch order
                b, l = batch.shape
                flat = tokens.new_zeros(b * l, cfg.patch_dim)
                flat[batch.valid.reshape(-1)] = tokens
                t_S = sched[[entries[e][0] for e in order], k].to(device)
                v = model(replace(batch, tokens=flat.view(b, l, -1)), t_S, text, lengths)
                for e, v_s in zip(order, batch.split(v)):
                    i, cap = entries[e]
                    v_s = to_velocity(v_s, states[i], sched[i, k].to(device), prediction=cfg.prediction, t_min=0.0)
                    (v_cond if cap == i else v_uncond)[i] = v_s
            return [v_uncond[i] + cfg_scale * (v_cond[i] - v_uncond[i]) if guided else v_cond[i] for i in range(r)]

        for k in range(steps):
            v = velocity(x, k)
            dt = [float(sched[i, k + 1] - sched[i, k]) for i in range(r)]
            euler = [x[i] + dt[i] * v[i] for i in range(r)]
            if solver == "heun" and k + 1 < steps:  # the last step lands on t = 0: Euler there
                v_next = velocity(euler, k + 1)
                x = [x[i] + dt[i] * 0.5 * (v[i] + v_next[i]) for i in range(r)]
            else:
                x = euler
            if on_step is not None:
                on_step(k + 1)
    finally:
        model.train(was_training)

    autoencoder = autoencoder or IdentityAutoencoder()
    videos = []
    for i, (g, req) in enumerate(zip(pgrids, grids)):
        frames = 1 if req[0] == 1 else None  # an image patchified with pt > 1 keeps one frame
        video = unpatchify(x[i].float().cpu(), g, patch, channels, frames=frames)
        videos.append(autoencoder.decode(video))
    return videos


def _plan_batches(entries, sizes, pgrids, captions, *, max_len, rows, device):
    """Pack all entries once: [(PackedBatch, entry order, text_tokens, text_lengths)] per forward."""
    lengths = [sizes[i] for i, _ in entries]
    plan = plan_packs(lengths, max_len, "bfd")
    per = len(plan) if rows is None else rows
    batches = []
    for start in range(0, len(plan), per):
        group = plan[start : start + per]
        order = [e for row in group for e in row]  # entries in batch sample order
        local = iter(range(len(order)))
        local_plan = [[next(local) for _ in row] for row in group]
        samples = [  # 1-feature placeholders: pack gives the layout, tokens are set per step
            PatchedSample(torch.zeros(lengths[e], 1), grid_coords(pgrids[entries[e][0]]), pgrids[entries[e][0]])
            for e in order
        ]
        batch = pack(samples, local_plan, max_len, rows=rows).to(device)
        text = torch.cat([captions[entries[e][1]] for e in order])
        text_lengths = torch.tensor([captions[entries[e][1]].shape[0] for e in order], dtype=torch.int64)
        batches.append((batch, order, text, text_lengths))
    return batches
