"""Rectified flow: the time shift, timestep sampling, per-token loss weighting, and a real overfit."""

from __future__ import annotations

import time

import pytest
import torch
from dit_testing import TEXT_DIM, make_sample, make_text

from patchpack.model import (
    DiT,
    FlowConfig,
    dit_config,
    flow_loss,
    interpolate,
    resolution_shift,
    sample_timesteps,
    shift_time,
    to_velocity,
)
from patchpack.packer import pack, patchify


def test_shift_fixes_endpoints_is_monotone_and_grows_with_tokens():
    t = torch.linspace(0, 1, 101)
    for s in (0.5, 1.0, 3.0):
        u = shift_time(t, s)
        assert u[0] == 0 and u[-1] == 1 and (u.diff() > 0).all()
    assert torch.equal(shift_time(t, 1.0), t)
    cfg = FlowConfig(shift_base_tokens=64)
    shifts = resolution_shift(torch.tensor([[1, 8, 8], [4, 8, 8], [1, 4, 4]]), config=cfg)
    torch.testing.assert_close(shifts, torch.tensor([1.0, 2.0, 0.5]))
    off = resolution_shift(torch.tensor([[4, 8, 8]]), config=FlowConfig(resolution_shift=False))
    assert torch.equal(off, torch.ones(1))


def test_sampled_timesteps_are_noisier_for_bigger_grids():
    grids = torch.tensor([[1, 4, 4]] * 2000 + [[8, 16, 16]] * 2000)
    t = sample_timesteps(grids, config=FlowConfig(), generator=torch.Generator().manual_seed(0))
    assert ((t > 0) & (t < 1)).all()
    assert t[2000:].mean() > t[:2000].mean() + 0.2


class _Zero(torch.nn.Module):
    def forward(self, batch, t_S, text, lengths):
        return torch.zeros_like(batch.tokens)


def test_loss_is_the_mean_over_valid_tokens():
    samples = [make_sample((1, 2, 2), seed=0), make_sample((3, 2, 2), seed=1)]  # 4 and 12 tokens
    batch = pack(samples, [[0, 1]], 20, rows=2)  # 4 + 20 padding tokens
    text, lengths = torch.cat(make_text([1, 2])), torch.tensor([1, 2])
    t_S = torch.tensor([0.3, 0.8])
    out = flow_loss(_Zero(), batch, text, lengths, t_S=t_S, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(batch.tokens.shape, generator=torch.Generator().manual_seed(5))
    per_token = [((n - s.tokens) ** 2).mean(-1) for n, s in zip(batch.split(noise), samples)]
    torch.testing.assert_close(out.loss, torch.cat(per_token).mean())  # per token, not per sample
    torch.testing.assert_close(out.loss_S, torch.stack([p.mean() for p in per_token]))
    assert not torch.allclose(out.loss, out.loss_S.mean())  # guard: the two weightings differ here


def test_interpolate_convention():
    x0, noise = torch.zeros(3), torch.ones(3)
    assert torch.equal(interpolate(x0, noise, torch.tensor(0.0)), x0)  # t = 0 data
    assert torch.equal(interpolate(x0, noise, torch.tensor(1.0)), noise)  # t = 1 noise


def _tiny_videos():
    """Four small structured videos (gradients and bars), T=1 images among them."""
    g = torch.Generator().manual_seed(0)
    vids = []
    for i, (t, h, w) in enumerate([(1, 8, 8), (4, 8, 12), (1, 12, 8), (2, 8, 8)]):
        ramp = torch.linspace(-1, 1, w)[None, None, None, :] * (1 if i % 2 else -1)
        bars = torch.sign(torch.sin(torch.arange(h) * (i + 1.0)))[None, None, :, None]
        v = 0.6 * ramp + 0.3 * bars + 0.1 * torch.randn(3, t, h, w, generator=g)
        vids.append(v.expand(3, t, h, w).clamp(-1, 1))
    return vids


def _train(steps: int):
    from patchpack.packer import PatchedSample

    torch.manual_seed(0)
    model = DiT(dit_config("tiny", text_dim=TEXT_DIM))
    samples = []
    for i, v in enumerate(_tiny_videos()):
        tok, crd = patchify(v, (1, 2, 2))
        samples.append(PatchedSample(tok, crd, (v.shape[1], v.shape[2] // 2, v.shape[3] // 2), key=str(i)))
    batch = pack(samples, [[1], [0, 2, 3]], 100)  # 96 and 72 tokens + padding
    texts = make_text([3, 4, 2, 5])  # any fixed caption per batch sample will do here
    text, lengths = torch.cat(texts), torch.tensor([3, 4, 2, 5])
    flow = FlowConfig(shift_base_tokens=32)

    def eval_loss():  # fixed t and noise so the numbers compare across steps
        with torch.no_grad():
            return sum(
                flow_loss(model, batch, text, lengths, config=flow, t_S=torch.full((4,), t),
                          generator=torch.Generator().manual_seed(7)).loss.item()
                for t in (0.25, 0.5, 0.75)
            ) / 3

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    before = eval_loss()
    start = time.perf_counter()
    for _ in range(steps):
        loss = flow_loss(model, batch, text, lengths, config=flow, generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return before, eval_loss(), seconds, int(batch.num_tokens.sum())


def test_overfitting_a_few_tiny_videos_drops_the_loss():
    before, after, seconds, tokens = _train(40)
    print(f"eval loss {before:.3f} -> {after:.3f}; {40 * tokens / seconds:.0f} tokens/s")
    assert after < 0.5 * before


@pytest.mark.slow
def test_overfit_longer_keeps_going_down():
    before, after, _, _ = _train(200)
    assert after < 0.2 * before


def test_x_prediction_turns_the_clean_estimate_into_the_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    t = torch.tensor([0.05, 0.2, 0.5, 0.9, 1.0])[:, None]
    x_t = interpolate(x0, noise, t)
    torch.testing.assert_close(to_velocity(x0, x_t, t, prediction="x"), noise - x0)  # exact x0 -> exact v
    assert torch.equal(to_velocity(x0, x_t, t, prediction="v"), x0)  # v passes through
    tiny = to_velocity(x0, x_t, torch.full_like(t, 1e-6), prediction="x")
    assert torch.isfinite(tiny).all() and tiny.abs().max() < 1e3  # t clamped at T_MIN
    with pytest.raises(ValueError, match="prediction"):
        to_velocity(x0, x_t, t, prediction="eps")
    with pytest.raises(ValueError, match="prediction"):
        dit_config("tiny", prediction="eps")


class _Oracle(torch.nn.Module):
    """An x-predicting 'model' that knows x0: the loss must be exactly 0."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.config = dit_config("tiny", prediction="x")

    def forward(self, batch, t_S, text, lengths):
        return self.x0


def _loss_at(model_for, t_S: list[float]) -> float:
    """flow_loss of model_for(batch.tokens) on two packed samples at timesteps t_S, fixed noise."""
    samples = [make_sample((1, 2, 2), seed=0), make_sample((3, 2, 2), seed=1)]
    batch = pack(samples, [[0, 1]], 20, rows=2)
    text, lengths = torch.cat(make_text([1, 2])), torch.tensor([1, 2])
    return flow_loss(model_for(batch.tokens), batch, text, lengths, t_S=torch.tensor(t_S),
                     generator=torch.Generator().manual_seed(5)).loss.item()


def test_flow_loss_reads_the_models_prediction_type():
    assert _loss_at(_Oracle, [0.3, 0.8]) < 1e-10
    # guard: the same batch with a v-model of zeros is far off
    assert _loss_at(lambda tokens: _Zero(), [0.3, 0.8]) > 0.1


def test_x_prediction_oracle_has_zero_loss_below_t_min():
    """The division by t is clamped at T_MIN in the target as in the prediction (JiT clamps
    both): a model that outputs x0 exactly must score 0 at every t, also t < T_MIN, where an
    unclamped target would ask it to output x0 - (T_MIN - t) * v instead."""
    assert _loss_at(_Oracle, [0.01, 0.03]) < 1e-10
