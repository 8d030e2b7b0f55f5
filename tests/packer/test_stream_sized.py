"""StreamPacker with unsized samples: planned sizes are the decoded sizes, nothing is lost,
rows follow plan_sized, resume is bitwise, skips and give-ups add up, random resolution stays close."""

import io
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpack.packer import (
    PackerConfig,
    PatchedSample,
    SampleError,
    StreamPacker,
    UnsizedSample,
    fit_budget,
    patch_grid,
    patchify,
    plan_sized,
    resize_video,
)

PATCH = (1, 4, 4)


def native_video(sample):
    """The 'decoded' clip at native size: a function of the payload bytes alone."""
    g = torch.Generator().manual_seed(int.from_bytes(sample.payload[:8], "little"))
    return torch.randn(3, *sample.size, generator=g)


class Decoder:
    """decode(sample, size) at the planned size; records every call."""

    def __init__(self, patch=PATCH):
        self.patch, self.calls = patch, []

    def __call__(self, sample, size):
        self.calls.append((sample.key, size))
        return resize_video(native_video(sample), size, patch=self.patch)


def unsized(sizes, *, seed=0):
    return [UnsizedSample(tuple(s), payload=(seed * 100003 + i).to_bytes(8, "little") + b"mp4", key=f"u{i}", meta={"i": i}) for i, s in enumerate(sizes)]


def random_sizes(n, *, seed, t_max=12, hw=(8, 72)):
    rng = random.Random(seed)
    return [(1 if rng.random() < 0.3 else rng.randint(2, t_max), rng.randint(*hw), rng.randint(*hw)) for _ in range(n)]


def run(samples, cfg, *, seed=0, decode=None):
    sp = StreamPacker(cfg, seed=seed, decode=decode or Decoder(cfg.patch))
    return list(sp.pack(samples, flush=True)), sp


def packed(batches):
    """key -> (tokens, coords, grid, meta) of every packed sample."""
    out = {}
    for b in batches:
        for k, tok, crd, grid, meta in zip(b.keys, b.split(b.tokens), b.split(b.coords), b.grid.tolist(), b.meta):
            out[k] = (tok, crd, tuple(grid), meta)
    return out


def test_decoded_sizes_are_the_planned_sizes_and_split_inverts_pack():
    cfg = PackerConfig(patch=PATCH, max_len=256, rows=2, buffer=8, max_tokens_per_sample=128, max_frames=8)
    samples = unsized(random_sizes(80, seed=1))
    dec = Decoder()
    batches, sp = run(samples, cfg, decode=dec)
    got = packed(batches)
    assert sorted(got) == sorted(s.key for s in samples) and sp.pending == 0
    asked = dict(dec.calls)
    assert len(dec.calls) == len(samples)  # each sample decoded exactly once
    for s in samples:
        tok, crd, grid, meta = got[s.key]
        sz = meta["sizing"]
        assert asked[s.key] == sz["target"] and grid == patch_grid(*sz["target"], PATCH)  # decoded at the planned size
        assert sz["native"] == s.size and len(tok) == sz["tokens"] and meta["i"] == s.meta["i"]
        full_tok, full_crd = patchify(resize_video(native_video(s), sz["target"], patch=PATCH), PATCH)
        idx = (crd[:, 0] * grid[1] + crd[:, 1]) * grid[2] + crd[:, 2]
        assert torch.equal(tok, full_tok[idx.long()]) and torch.equal(crd, full_crd[idx.long()])  # bitwise, in order
        assert (idx[1:] > idx[:-1]).all()
    assert sp.stats.tokens_packed == sum(len(v[0]) for v in got.values())
    assert any(len(set(b.segment_ids[r].tolist()) - {-1}) > 1 for b in batches for r in range(2))  # multi-sample rows


def test_rows_and_targets_follow_plan_sized():
    cfg = PackerConfig(patch=PATCH, max_len=192, rows=1, buffer=6, max_frames=8)
    sizes = random_sizes(120, seed=2)
    batches, sp = run(unsized(sizes), cfg)
    plan = plan_sized(sizes, 192, patch=PATCH, max_tokens=192, max_frames=8, buffer=6, min_scale=0.9)
    rows = [[int(k[1:]) for k in b.keys] for b in batches]
    assert rows == plan.rows
    meta = {k: m["sizing"] for b in batches for k, m in zip(b.keys, b.meta)}
    assert [meta[f"u{i}"]["target"] for i in range(len(sizes))] == plan.targets
    assert [meta[f"u{i}"]["tokens"] for i in range(len(sizes))] == plan.kept
    assert sp.stats.resized_samples == sum(k != f for k, f in zip(plan.kept, plan.fit_tokens)) > 0


def test_sized_rows_are_fuller_than_plain_fits():
    sizes = random_sizes(300, seed=3, t_max=16, hw=(16, 96))
    base = dict(patch=PATCH, max_len=256, rows=2, buffer=16, max_frames=16)
    plan, a = run(unsized(sizes), PackerConfig(**base))
    fit, b = run(unsized(sizes), PackerConfig(**base, sizing="fit"))
    assert a.stats.fill > b.stats.fill and a.stats.given_up < 0.05
    assert b.stats.resized_samples == 0 and b.stats.tokens_given_up == 0
    for key, (*_, meta) in packed(fit).items():  # "fit": the plain budget fit, untouched
        t, h, w = sizes[int(key[1:])]
        assert meta["sizing"]["target"] == fit_budget(t, h, w, patch=PATCH, max_tokens=256, max_frames=16)


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys == y.keys and x.meta == y.meta
        for f in ("tokens", "coords", "segment_ids", "cu_seqlens", "grid", "num_tokens", "row", "offset"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f


@settings(max_examples=15, deadline=None)
@given(
    stop=st.integers(0, 30),
    drop=st.sampled_from([0.0, 0.25, (0.0, 0.5)]),
    sampling=st.none() | st.just((0.5, 1.0)),
    buffer=st.integers(1, 8),
    seed=st.integers(0, 3),
)
def test_resume_from_state_dict_gives_identical_next_batches(stop, drop, sampling, buffer, seed):
    cfg = PackerConfig(patch=PATCH, max_len=160, rows=2, buffer=buffer, max_frames=6, drop_rate=drop, resolution_sampling=sampling)
    samples = unsized(random_sizes(40, seed=seed), seed=seed)
    ref, _ = run(samples, cfg, seed=5)
    sp = StreamPacker(cfg, seed=5, decode=Decoder())
    head = []
    for b in sp.pack(iter(samples)):
        head.append(b)
        if len(head) > stop % (len(ref) + 1):
            break
    sd = sp.state_dict()
    assert all(not callable(v) for d in sd["held"].values() for v in d.get("unsized", {}).values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    resumed = StreamPacker(cfg, seed=99, decode=Decoder())
    resumed.load_state_dict(torch.load(buf, weights_only=True))  # plain data: no pickle needed
    tail = list(resumed.pack(samples[sd["stats"]["samples_in"] :], flush=True))
    assert_same(ref, head + tail)


def test_resume_needs_a_decode_function():
    cfg = PackerConfig(patch=PATCH, max_len=160, buffer=8)
    sp = StreamPacker(cfg, decode=Decoder())
    list(sp.pack(unsized(random_sizes(5, seed=0))))
    assert sp.pending > 0
    with pytest.raises(ValueError, match=r"holds \d+ unsized samples: construct the StreamPacker with decode="):
        StreamPacker(cfg).load_state_dict(sp.state_dict())
    with pytest.raises(ValueError, match="min_scale"):
        StreamPacker(PackerConfig(patch=PATCH, max_len=160, buffer=8, min_scale=0.5), decode=Decoder()).load_state_dict(sp.state_dict())


def test_skips_and_give_ups_add_up():
    def decode(sample, size):
        if sample.key == "boom":
            raise SampleError("corrupt", "bad mp4 payload")
        if sample.key == "short":
            return torch.zeros(3, size[0], size[1] - 4, size[2])
        if sample.key == "nan":
            return torch.full((3, *size), float("nan"))
        if sample.key == "int":
            return torch.zeros(3, *size, dtype=torch.int64)
        return resize_video(native_video(sample), size, patch=PATCH)

    good = unsized(random_sizes(60, seed=4, hw=(16, 64)))
    bad = [
        UnsizedSample((4, 2, 40), b"\0" * 8, key="tiny"),  # smaller than one 4x4 patch
        UnsizedSample((0, 32, 32), b"\0" * 8, key="empty"),
        UnsizedSample((4, -1, 32), b"\0" * 8, key="negative"),
        UnsizedSample((4, 32.0, 32), b"\0" * 8, key="float"),
        UnsizedSample((4, 32), b"\0" * 8, key="two"),
        UnsizedSample((4, 32, 32), b"\1" * 8, key="boom"),
        UnsizedSample((4, 32, 32), b"\2" * 8, key="short"),
        UnsizedSample((4, 32, 32), b"\3" * 8, key="nan"),
        UnsizedSample((4, 32, 32), b"\4" * 8, key="int"),
        "not a sample",
    ]
    cfg = PackerConfig(patch=PATCH, max_len=256, rows=2, buffer=8, max_frames=8)
    samples = good[:30] + bad + good[30:]
    batches, sp = run(samples, cfg, decode=decode)
    st_ = sp.stats
    assert st_.dropped_by_reason == {"too_small": 1, "empty": 1, "bad_size": 4, "corrupt": 1, "nonfinite": 1, "bad_dtype": 1, "bad_type": 1}
    assert st_.samples_in == len(samples) and st_.sized_samples == len(good) == st_.samples_packed
    assert st_.sized_samples + st_.dropped == len(samples)
    got = packed(batches)
    assert sorted(got) == sorted(s.key for s in good)
    kept = sum(m["sizing"]["tokens"] for _, _, _, m in got.values())
    fit = sum(m["sizing"]["fit_tokens"] for _, _, _, m in got.values())
    assert kept == st_.tokens_packed and fit == st_.fit_tokens
    assert fit - st_.tokens_given_up + st_.tokens_gained == kept
    assert st_.resized_samples == sum(m["sizing"]["tokens"] != m["sizing"]["fit_tokens"] for *_, m in got.values())
    assert st_.sizing_drop_tokens == sum(m["sizing"]["sizing_drop"] for *_, m in got.values())


def test_policy_other_than_bfd_needs_sizing_fit():
    with pytest.raises(ValueError, match=r"sizing='plan' plans with best fit: use policy='bfd' \(got 'ffd'\)"):
        run(unsized(random_sizes(3, seed=0)), PackerConfig(patch=PATCH, max_len=160, policy="ffd"))
    batches, sp = run(unsized(random_sizes(30, seed=0)), PackerConfig(patch=PATCH, max_len=160, policy="ffd", sizing="fit"))
    assert sp.stats.sized_samples == 30 and sp.stats.resized_samples == 0


def test_patched_and_unsized_samples_mix():
    cfg = PackerConfig(patch=PATCH, max_len=200, rows=1, buffer=4)
    g = torch.Generator().manual_seed(0)
    patched = [PatchedSample(torch.randn(n, 48, generator=g), torch.zeros(n, 3, dtype=torch.int32), (1, 1, n), key=f"p{i}") for i, n in enumerate([30, 70, 120])]
    mixed = [x for pair in zip(unsized(random_sizes(3, seed=6)), patched) for x in pair]
    batches, sp = run(mixed, cfg)
    assert sorted(packed(batches)) == ["p0", "p1", "p2", "u0", "u1", "u2"] and sp.stats.sized_samples == 3


def ks_uniform(values, lo, hi):
    """Kolmogorov-Smirnov distance between the empirical distribution of values and U(lo, hi)."""
    xs = sorted(values)
    n = len(xs)
    return max(max((i + 1) / n - (x - lo) / (hi - lo), (x - lo) / (hi - lo) - i / n) for i, x in enumerate(xs))


def test_random_resolution_fills_rows_and_stays_close_to_the_requested_scales():
    sizes = random_sizes(400, seed=7, t_max=8, hw=(48, 96))
    base = dict(patch=PATCH, max_len=256, rows=2, buffer=32, max_frames=8, resolution_sampling=(0.5, 1.0))
    batches, sp = run(unsized(sizes), PackerConfig(**base))
    _, plain = run(unsized(sizes), PackerConfig(**base, sizing="fit"))
    chosen = [m["sizing"]["chosen_scale"] for b in batches for m in b.meta]
    drawn = [m["sizing"]["scale"] for b in batches for m in b.meta]
    assert all(0.5 - 1e-9 <= c <= 1.0 + 1e-9 for c in chosen) and len(chosen) == 400
    assert sp.stats.tokens_gained > 0 and sp.stats.tokens_given_up > 0  # both directions used
    assert sp.stats.fill > plain.stats.fill
    assert ks_uniform(chosen, 0.5, 1.0) < ks_uniform(drawn, 0.5, 1.0) + 0.08
    assert math.isfinite(sp.stats.given_up)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(sizing="magic"), r"sizing must be one of \('plan', 'fit'\), got 'magic'"),
        (dict(min_scale=0.0), r"min_scale must be in \(0, 1\], got 0.0"),
        (dict(min_scale=1.5), r"min_scale must be in \(0, 1\], got 1.5"),
        (dict(time_trim=-1), r"time_trim must be an int >= 0, got -1"),
        (dict(time_trim=1.5), r"time_trim must be an int >= 0, got 1.5"),
    ],
)
def test_config_rejects_bad_sizing_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        PackerConfig(**kw)
