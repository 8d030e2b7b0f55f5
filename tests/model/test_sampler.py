"""Sampler: exact output shapes for mixed grids, one packed forward per step, bad grids named."""

from __future__ import annotations

import math

import pytest
import torch
from dit_testing import StubTextEncoder, random_dit

from patchpack.model import FlowConfig, IdentityAutoencoder, check_grid, generate
from patchpack.packer import plan_packs

GRIDS = [(1, 8, 8), (4, 4, 6), (1, 6, 10), (2, 8, 4)]  # images and clips, patch (1, 2, 2)
PROMPTS = ["red square left", "blue disc", "green digit three up", "zoom"]


def _count_forwards(model):
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    return calls


def test_shapes_and_one_packed_forward_per_step():
    model = random_dit("reference", depth=1)
    calls = _count_forwards(model)
    videos = generate(model, StubTextEncoder(), PROMPTS, GRIDS, steps=3, cfg_scale=3.0, seed=1)
    assert [tuple(v.shape) for v in videos] == [(3, *g) for g in GRIDS]
    assert all(torch.isfinite(v).all() for v in videos)
    assert len(calls) == 3  # rows=None: every request, cond and uncond, in one forward
    batch = calls[0]
    assert batch.num_samples == 2 * len(GRIDS)
    assert len({tuple(g) for g in batch.grid.tolist()}) == len(GRIDS)  # several sizes together


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_forward_count_is_steps_times_batches(rows):
    model = random_dit("cpu", depth=1)
    calls = _count_forwards(model)
    steps, max_len = 2, 48
    generate(model, StubTextEncoder(), PROMPTS, GRIDS, steps=steps, rows=rows, max_len=max_len)
    sizes = [math.prod(check_grid(i, g, patch=(1, 2, 2), max_tokens=max_len)) for i, g in enumerate(GRIDS)]
    plan = plan_packs(sizes * 2, max_len, "bfd")  # cond + uncond of every request
    assert len(plan) > 1  # guard: the packing really needs several rows
    assert len(calls) == steps * math.ceil(len(plan) / rows)
    assert all(b.shape == (rows, max_len) for b in calls)  # static shapes, last batch padded
    per_step = len(calls) // steps
    assert sum(b.num_samples for b in calls[:per_step]) == 2 * len(GRIDS)  # each sample once per step


def test_image_with_temporal_patch_comes_back_as_one_frame():
    model = random_dit("reference", depth=1, patch=(2, 2, 2))
    videos = generate(
        model, StubTextEncoder(), ["a", "b"], [(1, 4, 6), (4, 4, 4)], steps=2, autoencoder=IdentityAutoencoder()
    )
    assert [tuple(v.shape) for v in videos] == [(3, 1, 4, 6), (3, 4, 4, 4)]


def test_a_request_does_not_depend_on_its_company():
    model = random_dit("reference", depth=1)
    alone = generate(model, StubTextEncoder(), PROMPTS[:1], GRIDS[:1], steps=2, seed=4)[0]
    together = generate(model, StubTextEncoder(), PROMPTS, GRIDS, steps=2, seed=4)[0]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-4)


def test_cfg_scale_one_skips_the_unconditional_pass():
    model = random_dit("reference", depth=1)
    calls = _count_forwards(model)
    generate(model, StubTextEncoder(), PROMPTS[:2], GRIDS[:2], steps=1, cfg_scale=1.0)
    assert calls[0].num_samples == 2


@pytest.mark.parametrize(
    "grid, match",
    [
        ((3, 8, 8), None),  # T=3 is fine with pt = 1
        ((1, 7, 8), "H=7"),
        ((1, 8, 0), "W=0"),
        ((0, 8, 8), "T=0"),
        ((1, 8), r"\(1, 8\)"),
        ((1, 64, 66), "1056 tokens > max_tokens=1024"),
        ((1.0, 8, 8), "3 ints"),
    ],
)
def test_invalid_grids_raise_naming_the_value(grid, match):
    model = random_dit("reference", depth=1)
    run = lambda: generate(model, StubTextEncoder(), ["x"], [grid], steps=1, max_tokens=1024)  # noqa: E731
    if match is None:
        assert run()[0].shape == (3, *grid)
    else:
        with pytest.raises(ValueError, match=match):
            run()


def test_temporal_patch_rejects_odd_frame_counts():
    with pytest.raises(ValueError, match=r"T=3 is not a multiple of the patch 2"):
        check_grid(0, (3, 4, 4), patch=(2, 2, 2), max_tokens=100)
    assert check_grid(0, (1, 4, 4), patch=(2, 2, 2), max_tokens=100) == (1, 2, 2)


def test_mismatched_requests_raise():
    model = random_dit("reference", depth=1)
    with pytest.raises(ValueError, match="2 prompts, 1 grids"):
        generate(model, StubTextEncoder(), ["a", "b"], [(1, 4, 4)], steps=1)
    with pytest.raises(ValueError, match="channels=4"):
        generate(model, StubTextEncoder(), ["a"], [(1, 4, 4)], steps=1, channels=4)
    with pytest.raises(ValueError, match="max_len=8"):
        generate(model, StubTextEncoder(), ["a"], [(1, 8, 8)], steps=1, max_len=8)


def test_x_prediction_with_an_oracle_lands_exactly_on_its_target():
    """Euler on a straight path is exact: an x-model that always answers c ends at c."""
    model = random_dit("reference", depth=1, prediction="x")
    c = 0.37
    model.forward = lambda batch, t_S, text, lengths: torch.full_like(batch.tokens, c)
    videos = generate(model, StubTextEncoder(), PROMPTS[:2], GRIDS[:2], steps=40, cfg_scale=2.0, seed=0)  # t < T_MIN at the end
    for v in videos:
        torch.testing.assert_close(v, torch.full_like(v, c), atol=1e-5, rtol=0)


def test_on_step_reports_every_euler_step():
    seen = []
    generate(random_dit("reference", depth=1), StubTextEncoder(), PROMPTS[:1], GRIDS[:1], steps=3, on_step=seen.append)
    assert seen == [1, 2, 3]


class _LinearField(torch.nn.Module):
    """v(x, t) = x: the ODE dx/dt = x, so integrating t from 1 to 0 gives x(0) = x(1) / e."""

    def __init__(self, rate: float = 1.0):
        super().__init__()
        self.config = random_dit("reference", depth=1).config
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to put the noise on
        self.rate = rate

    def forward(self, batch, t_S, text, lengths):
        return self.rate * batch.tokens


def test_heun_is_second_order_and_calls_the_model_twice_per_step_but_the_last():
    model = _LinearField()
    calls = _count_forwards(model)
    kw = dict(cfg_scale=1.0, seed=3, flow=FlowConfig(resolution_shift=False))  # uniform steps of 1/8
    noise = generate(_LinearField(rate=0.0), StubTextEncoder(), PROMPTS[:1], GRIDS[:1], steps=1, **kw)[0]  # x(1)
    heun = generate(model, StubTextEncoder(), PROMPTS[:1], GRIDS[:1], steps=8, solver="heun", **kw)[0]
    assert len(calls) == 2 * 8 - 1
    euler = generate(model, StubTextEncoder(), PROMPTS[:1], GRIDS[:1], steps=8, **kw)[0]
    exact = noise / math.e
    torch.testing.assert_close(euler, noise * (1 - 1 / 8) ** 8)
    torch.testing.assert_close(heun, noise * (1 - 1 / 8 + 1 / 128) ** 7 * (1 - 1 / 8))  # Euler onto t = 0
    assert (heun - exact).abs().max() < 0.3 * (euler - exact).abs().max()
    with pytest.raises(ValueError, match="solver"):
        generate(model, StubTextEncoder(), PROMPTS[:1], GRIDS[:1], steps=2, solver="rk4")
