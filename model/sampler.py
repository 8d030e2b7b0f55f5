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

Conditions (model/conditioning.py `Condition`, one per request or None), in the same pass:
  * given frames: their tokens start clean, are marked given in the packed batch (the DiT
    sees t = 0 for them) and are written back after every Euler step, so they come out as
    they went in. Both halves of CFG see them: the unconditional half drops the caption,
    not the frames, so guidance pushes towards the caption while the frames hold both.
  * SDEdit (`strength` s): the request's schedule runs from t = s to 0, the same steps and
    the same resolution shift spread over [0, s] (u_k = u(s) (1 - k / steps), t_k = shift(u_k)),
    starting from its video noised to t = s. s = 1 is plain generation, s = 0 returns the input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from patchpack.packer import PatchedSample, grid_coords, pack, patchify, plan_packs, unpatchify

from .autoencoder import Autoencoder, IdentityAutoencoder
from .conditioning import Condition, given_patches
from .flow import FlowConfig, interpolate, resolution_shift, shift_time, to_velocity

__all__ = ["SOLVERS", "check_grid", "generate"]

SOLVERS = ("euler", "heun")

TextEncoder = Callable[[list[str]], tuple[Tensor, Tensor]]


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
    conditions: Sequence[Condition | None] | None = None,
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
    conditions: per request a Condition (given frames, SDEdit strength; in the grid's units)
        or None; requests with and without conditions pack together.
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
    if not math.isfinite(cfg_scale):  # NaN or inf guidance turns every video black
        raise ValueError(f"cfg_scale={cfg_scale} must be a finite number")
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
    conditions = [None] * r if conditions is None else list(conditions)
    if len(conditions) != r:
        raise ValueError(f"need one condition (or None) per prompt: {len(conditions)} for {r} prompts")
    clean, given = zip(*(_condition_tokens(i, c, g, pg, patch, channels, cfg.patch_dim)
                         for i, (c, g, pg) in enumerate(zip(conditions, grids, pgrids))))

    # Noise per request, drawn as tokens rather than patchified from a noise video: an image
    # with pt > 1 is pt copies of one frame, and its noise must still be iid per feature.
    # Then each request's shifted schedule [R, steps+1], from its SDEdit strength (1 without).
    x = [
        torch.randn(n, cfg.patch_dim, generator=torch.Generator().manual_seed(seed + i)).to(device)
        for i, n in enumerate(sizes)
    ]
    shift_R = resolution_shift(torch.tensor(pgrids), config=flow)
    start_R = torch.tensor([1.0 if c is None or c.strength is None else float(c.strength) for c in conditions])
    # u(s), the inverse of shift_time; exactly 1 (the plain schedule, bitwise) without a strength
    u_start = torch.where(start_R < 1, start_R / (shift_R - (shift_R - 1) * start_R), torch.ones_like(start_R))
    sched = shift_time(u_start[:, None] * torch.linspace(1.0, 0.0, steps + 1)[None], shift_R[:, None])  # (R, steps+1)
    sched[:, 0] = start_R  # exactly the strength (the inverse is exact only up to rounding)
    for i, (x0, g) in enumerate(zip(clean, given)):
        if x0 is None:
            continue
        x0 = x0.to(device)
        if start_R[i] < 1:
            x[i] = interpolate(x0, x[i], float(start_R[i]))
        if g is not None:
            x[i] = torch.where(g.to(device)[:, None], x0, x[i])

    # Entries: (request, caption) pairs; caption r is the null caption.
    guided = cfg_scale != 1.0
    entries = [(i, i) for i in range(r)] + ([(i, r) for i in range(r)] if guided else [])
    was_training = model.training
    model.eval()
    try:
        text_tokens, text_lengths = text_encoder(prompts + [""])
        captions = list(text_tokens.to(device).split(text_lengths.tolist()))
        batches = _plan_batches(entries, x, pgrids, given, captions, max_len=max_len, rows=rows, device=device)

        def velocity(states: list[Tensor], k: int) -> list[Tensor]:
            """CFG-combined velocity of every request at its own schedule time sched[i, k]."""
            v_cond, v_uncond = [None] * r, [None] * r
            for batch, order, text, lengths in batches:
                tokens = batch.merge([states[entries[e][0]] for e in order])  # (B, L, D): same layout, new x
                t_S = sched[[entries[e][0] for e in order], k].to(device)
                v = model(batch.with_tokens(tokens), t_S, text, lengths)
                for e, v_s in zip(order, batch.split(v)):
                    i, cap = entries[e]
                    v_s = to_velocity(v_s, states[i], sched[i, k].to(device), prediction=cfg.prediction, t_min=0.0)
                    (v_cond if cap == i else v_uncond)[i] = v_s
            return [v_uncond[i] + cfg_scale * (v_cond[i] - v_uncond[i]) if guided else v_cond[i] for i in range(r)]

        def written_back(i: int, state: Tensor) -> Tensor:
            """Given tokens are written back as given after every step."""
            if given[i] is None:
                return state
            return torch.where(given[i].to(device)[:, None], clean[i].to(device), state)

        for k in range(steps):
            dt = [float(sched[i, k + 1] - sched[i, k]) for i in range(r)]
            # strength 0: nothing to integrate (and x-prediction's v is 0/0 at t = 0)
            moving = [i for i in range(r) if dt[i] != 0.0]
            v = velocity(x, k)
            euler = list(x)
            for i in moving:
                euler[i] = written_back(i, x[i] + dt[i] * v[i])
            if solver == "heun" and k + 1 < steps:  # the last step lands on t = 0: Euler there
                v_next = velocity(euler, k + 1)
                for i in moving:
                    x[i] = written_back(i, x[i] + dt[i] * 0.5 * (v[i] + v_next[i]))
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


def _condition_tokens(index, condition, grid, pgrid, patch, channels, patch_dim):
    """(clean tokens [N, D] or None, given tokens [N] bool or None) of one request's Condition."""
    if condition is None:
        return None, None
    video = condition.video
    want = (channels, *grid)
    if tuple(video.shape) != want:
        raise ValueError(f"condition {index}: video must be [C, T, H, W] = {list(want)} (the request's grid), "
                         f"got {tuple(video.shape)}")
    s = condition.strength
    if s is not None and not 0.0 <= float(s) <= 1.0:
        raise ValueError(f"condition {index}: strength={s} must be in [0, 1]")
    tokens, coords = patchify(video.float().cpu(), patch)
    if tokens.shape[1] != patch_dim:
        raise ValueError(f"condition {index}: {tokens.shape[1]} features per token != patch_dim={patch_dim}")
    if condition.given is None:
        return tokens, None
    try:
        per_patch = given_patches(condition.given.cpu(), frames=grid[0], patch_t=patch[0])
    except ValueError as e:
        raise ValueError(f"condition {index}: {e}") from None
    return tokens, per_patch[coords[:, 0].long()]  # a token is given when its temporal patch is


def _plan_batches(entries, x, pgrids, given, captions, *, max_len, rows, device):
    """Pack all entries once, each with its request's starting tokens and given mask (cond and
    uncond share them): [(PackedBatch, entry order, text_tokens, text_lengths)] per forward.
    Each step then reuses the layout with the current tokens (`merge` + `with_tokens`)."""
    samples = [PatchedSample(x[i].cpu(), grid_coords(pgrids[i]), pgrids[i], given=given[i]) for i, _ in entries]
    plan = plan_packs([len(s) for s in samples], max_len, "bfd")
    per = len(plan) if rows is None else rows
    batches = []
    for start in range(0, len(plan), per):
        group = plan[start : start + per]
        order = [e for row in group for e in row]  # entries in batch sample order
        local = iter(range(len(order)))
        local_plan = [[next(local) for _ in row] for row in group]
        batch = pack([samples[e] for e in order], local_plan, max_len, rows=rows).to(device)
        text = torch.cat([captions[entries[e][1]] for e in order])
        text_lengths = torch.tensor([captions[entries[e][1]].shape[0] for e in order], dtype=torch.int64)
        batches.append((batch, order, text, text_lengths))
    return batches
