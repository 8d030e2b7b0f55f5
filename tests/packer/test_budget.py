"""fit_budget / resize / prepare_sample, and bad inputs as SampleError with a reason."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpack.packer import PackerConfig, SampleError, fit_budget, prepare_sample, resize_video


@settings(max_examples=300, deadline=None)
@given(
    t=st.integers(1, 40),
    h=st.integers(1, 2000),
    w=st.integers(1, 2000),
    patch=st.tuples(st.integers(1, 4), st.integers(1, 16), st.integers(1, 16)),
    max_tokens=st.integers(1, 20000),
    max_frames=st.none() | st.integers(1, 20),
)
def test_fit_budget_properties(t, h, w, patch, max_tokens, max_frames):
    pt, ph, pw = patch
    try:
        T, H, W = fit_budget(t, h, w, patch=patch, max_tokens=max_tokens, max_frames=max_frames)
    except SampleError as e:
        assert e.reason in ("too_small", "too_long")
        tt = min(t, max_frames or t)
        assert h < ph or w < pw or max(1, tt // pt) > max_tokens
        return
    assert (T == 1 or T % pt == 0) and H % ph == 0 and W % pw == 0
    assert 1 <= T <= min(t, max_frames or t) and H <= h and W <= w  # never upsample
    gt = 1 if T == 1 else T // pt
    assert gt * (H // ph) * (W // pw) <= max_tokens
    if (H // ph) > 2 and (W // pw) > 2:  # aspect kept to within one patch per side
        r = (h / w) / (H / W)
        assert 1 / ((1 + 1 / (H // ph)) * (1 + 1 / (W // pw))) <= r <= (1 + 1 / (H // ph)) * (1 + 1 / (W // pw))


def test_fit_budget_uses_the_budget():
    T, H, W = fit_budget(16, 720, 1280, patch=(1, 16, 16), max_tokens=4096, max_frames=16)
    tokens = T * (H // 16) * (W // 16)
    assert T == 16 and 0.85 * 4096 <= tokens <= 4096
    assert abs(H / W - 720 / 1280) < 0.05
    assert fit_budget(5, 37, 21, patch=(2, 2, 2), max_tokens=10**6) == (4, 36, 20)  # crop remainder only


def test_resize_crop_is_exact_and_downscale_keeps_aspect():
    x = torch.randn(3, 5, 37, 21)
    y = resize_video(x, (4, 36, 20), patch=(2, 2, 2))
    assert torch.equal(y, x[:, :4, 0:36, 0:20])
    z = resize_video(x, (2, 18, 10), patch=(2, 2, 2))
    assert z.shape == (3, 2, 18, 10) and z.dtype == x.dtype
    b = resize_video(x.bfloat16(), (2, 18, 10), patch=(2, 2, 2))
    assert b.dtype == torch.bfloat16


def _gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize(
    "video,reason",
    [
        (torch.zeros(3, 0, 8, 8), "empty"),  # 0 frames
        (torch.zeros(0, 2, 8, 8), "empty"),  # no channels
        (torch.zeros(3, 2, 0, 8), "empty"),
        (torch.zeros(3, 2, 1, 1), "too_small"),  # 1x1 with a 2x2 patch
        (torch.full((3, 2, 8, 8), float("nan")), "nonfinite"),
        (torch.tensor([[[[0.0, float("inf")]]]]).expand(1, 1, 2, 2), "nonfinite"),
        (torch.zeros(3, 8, 8), "bad_rank"),
        (torch.zeros(1, 3, 2, 8, 8), "bad_rank"),
        (torch.zeros(3, 2, 8, 8, dtype=torch.uint8), "bad_dtype"),
        (torch.zeros(3, 2, 8, 8, dtype=torch.int64), "bad_dtype"),
        ([[1.0]], "bad_type"),
    ],
)
def test_bad_inputs_raise_sample_error(video, reason):
    with pytest.raises(SampleError) as info:
        prepare_sample(video, config=PackerConfig(), generator=_gen())
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError) and str(info.value)


def test_too_long_needs_max_frames():
    cfg = PackerConfig(max_len=16, patch=(1, 2, 2))
    with pytest.raises(SampleError) as info:
        prepare_sample(torch.zeros(1, 20, 4, 4), config=cfg, generator=_gen())
    assert info.value.reason == "too_long" and "max_frames" in str(info.value)
    s = prepare_sample(torch.zeros(1, 20, 4, 4), config=PackerConfig(max_len=16, max_frames=4), generator=_gen())
    assert len(s) <= 16 and s.grid[0] == 4


def test_prepare_sample_budget_drop_and_image():
    cfg = PackerConfig(patch=(2, 2, 2), max_len=256, drop_rate=0.25)
    s = prepare_sample(torch.randn(3, 9, 100, 60), config=cfg, generator=_gen(), key="k", meta={"caption": "c"})
    gt, gh, gw = s.grid
    assert gt == 4 and gt * gh * gw <= 256 and len(s) == gt * gh * gw - math.floor(0.25 * gt * gh * gw)
    assert s.key == "k" and s.meta == {"caption": "c"} and s.tokens.shape[1] == 3 * 8
    img = prepare_sample(torch.randn(3, 1, 20, 30), config=PackerConfig(patch=(2, 2, 2)), generator=_gen())
    assert img.grid == (1, 10, 15) and len(img) == 150


def test_drop_rate_function_of_grid_and_range():
    seen = []
    cfg = PackerConfig(drop_rate=lambda g: seen.append(g) or 0.5)
    s = prepare_sample(torch.randn(1, 2, 8, 8), config=cfg, generator=_gen())
    assert seen == [(2, 4, 4)] and len(s) == 16
    cfg = PackerConfig(drop_rate=(0.0, 0.9))
    lens = {len(prepare_sample(torch.randn(1, 2, 16, 16), config=cfg, generator=torch.Generator().manual_seed(i))) for i in range(10)}
    assert len(lens) > 3 and max(lens) <= 128 and min(lens) >= 128 - math.floor(0.9 * 128)


def test_resolution_sampling_and_downscale_budget():
    cfg = PackerConfig(max_len=100, max_tokens_per_sample=1000, oversize="downscale", resolution_sampling=(0.5, 1.0))
    g = _gen()
    lens = [len(prepare_sample(torch.randn(1, 1, 64, 64), config=cfg, generator=g)) for _ in range(20)]
    assert max(lens) <= 100 and min(lens) >= 0.25 * 100 - 10 and len(set(lens)) > 3


def test_config_rejects_bad_values():
    for kw in [dict(policy="worst"), dict(oversize="shrug"), dict(drop_rate=1.0), dict(drop_rate=(0.5, 0.2)), dict(max_shrink=1.0), dict(patch=(0, 2, 2))]:
        with pytest.raises(ValueError):
            PackerConfig(**kw)
