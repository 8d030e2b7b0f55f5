"""plan_sized: a valid partition, every size rule, fuller rows than whole-sample packing, clear errors."""

import math
import random

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from patchpack.packer import fit_budget, plan_packs, plan_sized


def in_band(h, w, ph, pw, gh, gw):
    """Aspect within one patch per side: one scale s with |gh - s*h/ph| < 1 and |gw - s*w/pw| < 1."""
    return (gh - 1) * ph * w < (gw + 1) * pw * h and (gw - 1) * pw * h < (gh + 1) * ph * w


def max_open(rows):
    """Rows provably open at once: they hold samples both <= j and > j, for some j."""
    delta = [0] * (max((max(r) for r in rows), default=-1) + 2)
    for r in rows:
        delta[min(r)] += 1
        delta[max(r)] -= 1
    best = run = 0
    for d in delta:
        run += d
        best = max(best, run)
    return best


def grid_tokens(size, patch):
    t, h, w = size
    pt, ph, pw = patch
    return (1 if t == 1 else t // pt) * (h // ph) * (w // pw)


def check_plan(plan, sizes, max_len, *, patch, max_tokens, max_frames=None, min_scale=0.9, buffer=None, budgets=None):
    """Every rule of plan_sized's docstring; returns (multi-sample rows, resized samples)."""
    rows, targets = plan
    n = len(sizes)
    assert sorted(i for r in rows for i in r) == list(range(n))  # every index exactly once
    assert all(rows) and len(targets) == len(plan.drops) == len(plan.kept) == n
    assert all(sum(plan.kept[i] for i in r) <= max_len for r in rows)  # no row over L
    if buffer is not None:
        assert max_open(rows) <= buffer
    pt, ph, pw = patch
    cap = np.broadcast_to(max_tokens, (n,))
    budget = cap if budgets is None else np.broadcast_to(budgets, (n,))
    mf = np.broadcast_to(np.asarray(max_frames if max_frames is not None else 10**9), (n,))
    for i, ((t, h, w), (T, H, W)) in enumerate(zip(sizes, targets)):
        ft, fh, fw = fit_budget(t, h, w, patch=patch, max_tokens=int(budget[i]), max_frames=int(mf[i]))
        fit = grid_tokens((ft, fh, fw), patch)
        assert plan.fit_tokens[i] == fit
        assert (T == 1 or T % pt == 0) and H % ph == 0 and W % pw == 0  # multiples of the patch
        assert (ft != 1 or T == 1) and T <= min(t, int(mf[i])) and H <= h and W <= w  # images stay images; never upsampled
        tokens = grid_tokens((T, H, W), patch)
        assert tokens <= cap[i] and in_band(h, w, ph, pw, H // ph, W // pw)
        for side, fside, p in ((T, ft, pt), (H, fh, ph), (W, fw, pw)):
            g, fg = (1 if side == 1 else side // p), (1 if fside == 1 else fside // p)
            assert g >= min_scale * fg - 1e-9, (i, (T, H, W), (ft, fh, fw))
        kept = plan.kept[i]
        assert kept == tokens - plan.drops[i] and 0 <= plan.drops[i] < tokens
        floor = math.prod(max(1, math.ceil(min_scale * g - 1e-9)) for g in ((1 if ft == 1 else ft // pt), fh // ph, fw // pw))
        assert floor <= kept and (budgets is not None or kept <= fit)
    resized = sum(k != f for k, f in zip(plan.kept, plan.fit_tokens))
    return sum(len(r) > 1 for r in rows), resized


sizes_st = st.lists(st.tuples(st.integers(1, 40), st.integers(4, 300), st.integers(4, 300)), min_size=1, max_size=60)


@settings(max_examples=120, deadline=None)
@given(
    sizes=sizes_st,
    patch=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    max_len=st.integers(64, 1500),
    frac=st.sampled_from([1.0, 0.5, 0.25, 0.1]),
    max_frames=st.none() | st.integers(4, 16),
    buffer=st.none() | st.integers(1, 8),
    min_scale=st.sampled_from([0.5, 0.8, 0.9, 1.0]),
)
def test_plan_sized_properties(sizes, patch, max_len, frac, max_frames, buffer, min_scale):
    max_tokens = max(16, int(frac * max_len))
    mf = max_frames if max_frames is not None else 40
    sizes = [(t, h, w) for t, h, w in sizes if min(t, mf) // patch[0] <= max_tokens]  # no "too_long" here
    if not sizes:
        return
    plan = plan_sized(sizes, max_len, patch=patch, max_tokens=max_tokens, max_frames=max_frames, buffer=buffer, min_scale=min_scale)
    multi, resized = check_plan(plan, sizes, max_len, patch=patch, max_tokens=max_tokens, max_frames=max_frames, min_scale=min_scale, buffer=buffer)
    event(f"multi-sample rows: {multi > 0}")
    event(f"resized samples: {resized > 0}")


def mix(n, *, seed):
    """Latent-grid sizes of a video/image mix: 30% images, aspect 9:21..21:9, 144p..1080p (/8)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = rng.choice([18, 30, 45, 60, 90, 135])
        a = math.exp(rng.uniform(math.log(9 / 21), math.log(21 / 9)))
        h, w = max(2, round(p * 1.33 / math.sqrt(a))), max(2, round(p * 1.33 * math.sqrt(a)))
        out.append((1 if rng.random() < 0.3 else rng.randint(2, 60), h, w))
    return out


@pytest.mark.parametrize("buffer", [None, 16])
@pytest.mark.parametrize("budget_frac", [1.0, 0.25])
def test_rows_fill_and_samples_really_resize(buffer, budget_frac):
    # the deterministic guard against vacuous property runs: multi-sample rows and resized
    # samples occur, and rows are fuller than whole-sample best fit on the same fits
    max_len = 2048
    budget = int(budget_frac * max_len)
    sizes = mix(600, seed=1)
    plan = plan_sized(sizes, max_len, patch=(1, 2, 2), max_tokens=budget, max_frames=max(1, budget // 64), buffer=buffer)
    multi, resized = check_plan(plan, sizes, max_len, patch=(1, 2, 2), max_tokens=budget, max_frames=max(1, budget // 64), buffer=buffer)
    assert multi > 20 and resized > 0
    rows = plan_packs(plan.fit_tokens, max_len, "bfd", buffer=buffer)
    fill_sized = sum(plan.kept) / (len(plan.rows) * max_len)
    fill_whole = sum(plan.fit_tokens) / (len(rows) * max_len)
    assert fill_sized >= fill_whole and plan.given_up <= 0.05 * sum(plan.fit_tokens)


def test_budgets_below_the_cap_let_samples_grow():
    sizes = mix(300, seed=2)
    rng = np.random.default_rng(0)
    budgets = rng.integers(300, 1024, size=len(sizes))
    plan = plan_sized(sizes, 1024, patch=(1, 2, 2), max_tokens=1024, budgets=budgets, max_frames=8, buffer=8, min_scale=0.8)
    check_plan(plan, sizes, 1024, patch=(1, 2, 2), max_tokens=1024, budgets=budgets, max_frames=8, min_scale=0.8, buffer=8)
    assert any(k > f for k, f in zip(plan.kept, plan.fit_tokens))  # some grew to close a row
    assert sum(plan.kept) / (len(plan.rows) * 1024) > 0.97


def test_result_unpacks_as_rows_and_targets():
    plan = plan_sized([(8, 64, 64), (1, 32, 48)], 256, patch=(1, 8, 8), max_tokens=256)
    rows, targets = plan
    assert plan[0] is rows and plan[1] is targets and len(plan) == 2
    assert targets == [fit_budget(8, 64, 64, patch=(1, 8, 8), max_tokens=256), (1, 32, 48)] == [(7, 48, 48), (1, 32, 48)]
    assert plan.drops == [0, 0] and plan.kept == plan.fit_tokens == [252, 24]
    assert plan_sized([], 64, patch=(1, 2, 2), max_tokens=64) == plan_sized(np.zeros((0, 3), int), 64, patch=(1, 2, 2), max_tokens=64)


def test_numpy_ints_are_accepted():
    sizes = np.array([[8, 64, 64], [1, 32, 48], [3, 40, 40]], dtype=np.int32)
    a = plan_sized(sizes, np.int64(256), patch=(np.int64(1), 8, 8), max_tokens=np.int32(200), buffer=np.int64(2), min_scale=np.float32(0.9))
    b = plan_sized(sizes.tolist(), 256, patch=(1, 8, 8), max_tokens=200, buffer=2, min_scale=0.9)
    assert a.rows == b.rows and a.targets == b.targets
    c = plan_sized(sizes, 256, patch=(1, 8, 8), max_tokens=np.array([200, 100, 50]), max_frames=np.array([4, 1, 2]))
    assert c.targets[0][0] <= 4 and c.targets[2][0] <= 2 and all(isinstance(v, int) for t in c.targets for v in t)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sizes=[(4, 32, -8)]), r"sizes\[0\] = \(4, 32, -8\).*>= 1"),
        (dict(sizes=[(4, 32, 32), (0, 32, 32)]), r"sizes\[1\] = \(0, 32, 32\)"),
        (dict(sizes=[(4, 32.5, 32)]), r"sizes\[0\].*must be ints, got float 32.5"),
        (dict(sizes=np.array([[4.0, 32.0, 32.0]])), r"sizes\[0\].*must be ints, got float"),
        (dict(sizes=[(4, 32)]), r"\(T, H, W\) per sample"),
        (dict(sizes=[(4, 32, 32), (4, 32)]), r"\(T, H, W\) per sample"),
        (dict(sizes=[(4, 1, 32)]), r"sample 0.*\(4, 1, 32\).*too_small"),
        (dict(sizes=[(4, 32, 32), (400, 32, 32)], max_tokens=64), r"sample 1.*too_long"),
        (dict(max_len=0), r"max_len must be an int >= 1, got 0"),
        (dict(max_len=64.0), r"max_len must be an int >= 1, got 64.0"),
        (dict(max_tokens=0), r"max_tokens must be an int >= 1, got 0"),
        (dict(max_tokens=65), r"max_tokens = 65 > max_len=64"),
        (dict(max_tokens=np.array([32.5])), r"max_tokens must hold ints, got dtype float64"),
        (dict(max_tokens=[32, 16]), r"one int per sample \(1\), got shape \(2,\)"),
        (dict(buffer=0), r"buffer must be an int >= 1, got 0"),
        (dict(buffer=np.float64(4)), r"buffer must be an int >= 1, got np.float64\(4.0\)"),
        (dict(min_scale=0.0), r"min_scale must be in \(0, 1\], got 0.0"),
        (dict(min_scale=1.5), r"min_scale must be in \(0, 1\], got 1.5"),
        (dict(min_scale=float("nan")), r"min_scale must be in \(0, 1\], got nan"),
        (dict(min_scale="big"), r"min_scale must be a float"),
        (dict(max_frames=0), r"max_frames must be an int >= 1, got 0"),
        (dict(patch=(1, 2)), r"patch must be 3 ints"),
        (dict(patch=(1, 0, 2)), r"patch entry must be an int >= 1, got 0"),
        (dict(budgets=[128]), r"budgets\[0\] = 128 > max_tokens = 64"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(kwargs, match):
    args = dict(sizes=[(4, 32, 32)], max_len=64, patch=(1, 2, 2), max_tokens=64)
    args.update(kwargs)
    sizes, max_len = args.pop("sizes"), args.pop("max_len")
    with pytest.raises(ValueError, match=match) as info:
        plan_sized(sizes, max_len, **args)
    assert "\n" not in str(info.value)
