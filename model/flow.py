"""Rectified flow on packed batches: noising, timestep sampling with a resolution shift, loss.

Convention (SD3, Esser et al. arXiv:2403.03206; Liu et al. rectified flow arXiv:2209.03003):
    x_t = (1 - t) * x0 + t * noise,   t in [0, 1],  t = 0 data, t = 1 pure noise
    velocity v = dx_t/dt = noise - x0  (the regression target)
    sampling integrates dx/dt = v from t = 1 down to t = 0 (model/sampler.py).

Timesteps: logit-normal, t = sigmoid(m + s * z), z ~ N(0, 1) (SD3's best, m=0, s=1), then
shifted per sample by its token count. A large grid has more redundant pixels, so the same
t destroys less of its signal; the shift moves t towards noise (SD3 eq. 23; Open-Sora 1.2/2
use the same map with a resolution-dependent factor):
    shift  = sqrt(tokens / base_tokens)          tokens = T' * H' * W' of the full grid
    t'     = shift * t / (1 + (shift - 1) * t)
shift = 1 at `base_tokens` (no change), > 1 above it, < 1 below (small images get cleaner
t). Each sample of a pack gets its own t and its own shift.

Loss weighting inside a pack: per token. The loss is the mean squared velocity error over
every valid token of the batch (features averaged, padding excluded). Why per token and not
per sample: the gradient then does not depend on how the packer grouped samples into rows,
a 16-frame clip carries the 16x more supervision it holds, and it is what a dense DiT
batch computes when every sample has the same size. The price: a small image weighs
little next to a long video; rebalance with the data mix (or token budgets), not the loss.
Per-sample losses are returned too for logging.

Conditions (batch.given, model/conditioning.py): a given token enters clean (x_t = x0, its
t is 0 inside the DiT) and its error is not counted: the loss is the mean over generated
tokens only, so a clip with its first frame given teaches the rest of the clip.

Prediction (DiTConfig.prediction): the network outputs either v directly, or x̂0, the clean
tokens, turned into v = (x_t - x̂0) / t ("x-prediction, v-loss", JiT: Li & He, arXiv:2511.13720).
The loss stays the velocity MSE either way; only what the last layer has to produce changes.
With pixel patches wider than the model can carry (here 96 features into width 128), v
contains the full-rank noise and comes out speckled at high t; x0 lies near a low-dimensional
set and does not. t is clamped at T_MIN in the division, as JiT does, so t -> 0 stays finite,
in the target as in the prediction. The v-loss of an x-prediction is |x0 - x̂0|^2 / t^2: it
weights low-noise steps by 1/t^2 (400x at T_MIN against t = 1), as JiT's does; JiT pairs it
with timesteps drawn noisier (logit-normal mean 0.8, std 0.8 in this convention:
FlowConfig.logit_mean, logit_std).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from patchpack.packer import PackedBatch

__all__ = [
    "FlowConfig",
    "FlowLoss",
    "flow_loss",
    "interpolate",
    "resolution_shift",
    "sample_timesteps",
    "shift_time",
    "to_velocity",
    "velocity_target",
]


@dataclass(frozen=True)
class FlowConfig:
    logit_mean: float = 0.0  # m of logit-normal t; > 0 trains noisier timesteps
    logit_std: float = 1.0  # s of logit-normal t; SD3's default
    shift_base_tokens: int = 256  # T'*H'*W' at which the shift is 1 (e.g. 32x32 px, patch 2)
    resolution_shift: bool = True  # False: t is the same distribution for every size

    def __post_init__(self) -> None:
        if not (0 < self.logit_std < math.inf and math.isfinite(self.logit_mean)) or self.shift_base_tokens < 1:
            raise ValueError(f"need logit_std > 0 and shift_base_tokens >= 1: {self}")


def resolution_shift(grid_S3: Tensor, *, config: FlowConfig) -> Tensor:
    """[S, 3] full patch grids -> [S] shift = sqrt(T'H'W' / base_tokens) (1 when disabled)."""
    tokens = grid_S3.to(torch.float64).prod(dim=-1)
    if not config.resolution_shift:
        return torch.ones_like(tokens, dtype=torch.float32)
    return (tokens / config.shift_base_tokens).sqrt().to(torch.float32)


def shift_time(t: Tensor, shift: Tensor | float) -> Tensor:
    """SD3's t' = shift * t / (1 + (shift - 1) * t); fixes 0 and 1, monotone in t."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(grid_S3: Tensor, *, config: FlowConfig, generator: torch.Generator | None = None) -> Tensor:
    """[S] shifted logit-normal t, one per sample (CPU float32)."""
    z = torch.randn(grid_S3.shape[0], generator=generator)
    t = torch.sigmoid(config.logit_mean + config.logit_std * z)
    return shift_time(t, resolution_shift(grid_S3, config=config))


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t noise; t broadcasts (per token: [..., 1])."""
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    return noise - x0


T_MIN = 0.05  # smallest t in x-prediction's division (JiT)


def to_velocity(out: Tensor, x_t: Tensor, t: Tensor, *, prediction: str, t_min: float = T_MIN) -> Tensor:
    """The network's output as a velocity: "v" as is, "x" (a clean-data estimate) as (x_t - x̂0) / t.

    t broadcasts against x_t (per token: [..., 1]). t_min bounds the division in training;
    the sampler passes 0, since its t never reaches 0 and the last step must land on x̂0.
    """
    if prediction == "v":
        return out
    if prediction == "x":
        return (x_t - out) / (t.clamp(min=t_min) if t_min > 0 else t)
    raise ValueError(f"prediction={prediction!r}, expected 'v' or 'x'")


class FlowLoss(NamedTuple):
    loss: Tensor  # scalar: mean over valid tokens (per-token weighting)
    loss_S: Tensor  # [S] per-sample mean over generated tokens, detached, for logging
    t_S: Tensor  # [S] the timesteps used


def flow_loss(
    model: nn.Module,
    batch: PackedBatch,
    text_tokens: Tensor,
    text_lengths: Tensor,
    *,
    config: FlowConfig | None = None,
    generator: torch.Generator | None = None,
    t_S: Tensor | None = None,
) -> FlowLoss:
    """Rectified-flow loss of `model` (a DiT) on a clean packed batch (batch.tokens = x0).

    generator: draws t (if t_S is None) and the noise; keep it on the batch's device.
    t_S: fix the timesteps (tests, evaluation at chosen t) instead of sampling them.
    batch.given (optional [B, L] bool): given tokens stay clean and are left out of the loss.
    """
    config = config or FlowConfig()
    x0 = batch.tokens  # (B, L, D)
    device = x0.device
    if t_S is None:
        t_S = sample_timesteps(batch.grid, config=config, generator=generator)
    t_S = t_S.to(device, torch.float32)
    valid = batch.valid.to(device)  # (B, L)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype) * valid[..., None]
    t_tok = batch.per_token(t_S).reshape(*valid.shape, 1)  # (B, L, 1)
    if batch.given is not None:  # given tokens: t = 0, so x_t = x0 and they count for nothing
        given = batch.given.to(device)
        t_tok = torch.where(given[..., None], torch.zeros_like(t_tok), t_tok)
        valid = valid & ~given
    x_t = interpolate(x0, noise, t_tok.to(x0.dtype))  # (B, L, D); padding stays 0
    out = model(batch.with_tokens(x_t), t_S, text_tokens, text_lengths)  # (B, L, D)
    prediction = _prediction(model)
    v_pred = to_velocity(out, x_t, t_tok.to(x_t.dtype), prediction=prediction)  # (B, L, D)
    # x-prediction's target goes through the same clamped division as its output (JiT does the
    # same): the error is then (x0 - x̂0) / max(t, T_MIN), and an exact x̂0 scores 0 at every t
    target = velocity_target(x0, noise) if prediction == "v" else to_velocity(x0, x_t, t_tok.to(x_t.dtype),
                                                                                  prediction="x")
    err = (v_pred.float() - target.float()).pow(2).mean(-1)  # (B, L)
    err = torch.where(valid, err, torch.zeros_like(err))  # where, not *: padding can't leak NaN
    loss = err.sum() / valid.sum().clamp(min=1)
    with torch.no_grad():
        loss_S = batch.segment_mean(err.detach())
        if batch.given is not None:  # the mean over each sample's generated tokens
            loss_S = loss_S / batch.segment_mean(valid.float()).clamp(min=1e-12)
    return FlowLoss(loss, loss_S, t_S)


def _prediction(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "prediction", "v")  # modules without a DiTConfig predict v
