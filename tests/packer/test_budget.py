"""fit_budget / resize / prepare_sample, and bad inputs as SampleError with a reason."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpack.packer import PackerConfig, SampleError, fit_budget, prepare_sample, resize_video


def in_band(h, w, ph, pw, gh, gw):
    """Aspect within one patch per side: one scale s with |gh - s*h/ph| < 1 and |gw - s*w/pw| < 1."""
    return (gh - 1) * ph * w < (gw + 1) * pw * h and (gw - 1) * pw * h < (gh + 1) * ph * w


def brute_fit(t, h, w, patch, max_tokens, max_frames, time_trim=3):
    """The most tokens over every (T', H', W') the policy allows, by exhaustive search."""
    pt, ph, pw = patch
    tt = min(t, max_frames or t)
    gt_max = 1 if tt < pt or tt == 1 else tt // pt
    best = 0
    for gt in range(gt_max, 0, -1):
        if gt < gt_max - time_trim or 4 * gt < 3 * gt_max:
            break
        for gh in range(1, h // ph + 1):
            for gw in range(1, w // pw + 1):
                if gt * gh * gw <= max_tokens and in_band(h, w, ph, pw, gh, gw):
                    best = max(best, gt * gh * gw)
    return best


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
    tt = min(t, max_frames or t)
    gt, gt_max = (1 if T == 1 else T // pt), (1 if tt < pt or tt == 1 else tt // pt)
    assert gt >= gt_max - 3 and 4 * gt >= 3 * gt_max  # at most 3 temporal patches trimmed, a quarter at most
    assert gt * (H // ph) * (W // pw) <= max_tokens
    assert in_band(h, w, ph, pw, H // ph, W // pw)  # aspect kept to within one patch per side


@settings(max_examples=150, deadline=None)
@given(
    t=st.integers(1, 24),
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    patch=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
    max_tokens=st.integers(1, 3000),
    time_trim=st.integers(0, 4),
)
def test_fit_budget_is_the_most_tokens_the_policy_allows(t, h, w, patch, max_tokens, time_trim):
    pt, ph, pw = patch
    try:
        T, H, W = fit_budget(t, h, w, patch=patch, max_tokens=max_tokens, time_trim=time_trim)
    except SampleError:
        return
    gt = 1 if T == 1 else T // pt
    assert gt * (H // ph) * (W // pw) == brute_fit(t, h, w, patch, max_tokens, None, time_trim)


def test_fit_budget_uses_the_budget():
    # the fit is joint: one frame fewer (15 of 16) lets the grid grow to 13x21, 4095 of 4096 tokens
    T, H, W = fit_budget(16, 720, 1280, patch=(1, 16, 16), max_tokens=4096, max_frames=16)
    assert T * (H // 16) * (W // 16) == 4095 and T == 15
    T, H, W = fit_budget(16, 720, 1280, patch=(1, 16, 16), max_tokens=4096, max_frames=16, time_trim=0)
    assert T == 16 and 0.98 * 4096 <= T * (H // 16) * (W // 16) <= 4096
    assert abs(H / W - 720 / 1280) < 0.05
    assert fit_budget(5, 37, 21, patch=(2, 2, 2), max_tokens=10**6) == (4, 36, 20)  # crop remainder only


def test_fit_budget_reaches_99_percent_on_average():
    # frames of every aspect from 9:21 to 21:9 and 144p..1080p (latent /8), clips of 1..64 frames,
    # max_frames at 128 tokens a frame; only samples larger than their budget count
    rng = torch.Generator().manual_seed(0)
    ratios = []
    for budget in (512, 4096, 16384):
        for _ in range(300):
            aspect = math.exp((torch.rand((), generator=rng).item() - 0.5) * 2 * math.log(21 / 9))
            p = 18 + int(torch.randint(0, 118, (), generator=rng))
            h, w = max(2, round(p / math.sqrt(aspect))), max(2, round(p * math.sqrt(aspect)))
            t = int(torch.randint(1, 65, (), generator=rng))
            if min(t, budget // 128) * (h // 2) * (w // 2) <= budget:
                continue  # fits whole: its fit is its native size
            T, H, W = fit_budget(t, h, w, patch=(1, 2, 2), max_tokens=budget, max_frames=budget // 128)
            ratios.append(T * (H // 2) * (W // 2) / budget)
    assert len(ratios) > 300 and sum(ratios) / len(ratios) >= 0.99, sum(ratios) / len(ratios)


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
    T, H, W = fit_budget(9, 100, 60, patch=(2, 2, 2), max_tokens=256)  # 6 frames of 24x14 hold 252 tokens, 8 frames only 240
    assert (gt, gh, gw) == (T // 2, H // 2, W // 2) == (3, 12, 7) and len(s) == 252 - math.floor(0.25 * 252)
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
