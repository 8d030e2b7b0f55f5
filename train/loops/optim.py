"""Optimizer pieces of the training loop: AdamW groups, warmup + cosine LR, EMA weights."""

from __future__ import annotations

import math

import torch
from torch import nn


def adamw(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and embeddings' 1-D params (the usual DiT/GPT split)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup over `warmup` steps, then cosine down to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Kept as plain fp32 tensors beside the model (not a module copy), so it costs one
    extra copy of the weights and nothing in forward.

    Warmup: given the step, the decay is min(decay, (1 + step) / (10 + step)), as
    diffusers' EMAModel and timm's ModelEmaV3 warm up. Without it the average starts at the
    random init and keeps decay**steps of it: 30% after 600 steps at 0.998, which is what a
    short run's EMA samples showed (noise where the raw weights drew the captioned colour).
    """

    def __init__(self, model: nn.Module, *, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def decay_at(self, step: int | None) -> float:
        """The decay of the update after `step` optimizer steps (None: no warmup)."""
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, *, step: int | None = None) -> None:
        """Average in the current weights; `step` (optimizer steps so far) warms the decay up."""
        weight = 1.0 - self.decay_at(step)
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = self.shadow.keys() - state.keys()
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {k: state[k].float().clone() for k in self.shadow}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (e.g. for sampling)."""
        sd = model.state_dict()
        for k, v in self.shadow.items():
            sd[k].copy_(v.to(sd[k].dtype))
