"""StreamPacker: invariants 2, 3 and 7 (nothing lost, cu_seqlens layout, determinism, resume)."""

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from patchpack.packer import (
    PackerConfig,
    PatchedSample,
    SampleError,
    StreamPacker,
    pack,
    plan_packs,
    prepare_sample,
)

D = 5


def make_sample(i, n, *, seed=0, frames=None):
    g = torch.Generator().manual_seed(seed * 100003 + i)
    frames = frames or max(1, n // 4)
    coords = torch.stack([torch.arange(n) * frames // n, torch.arange(n) % 7, torch.arange(n) % 3], 1).int()
    return PatchedSample(torch.randn(n, D, generator=g), coords, (frames, 7, 3), key=f"s{i}", meta={"i": i})


def check_layout(batch, rows, max_len):
    cu = batch.cu_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == rows * max_len
    assert all(a <= b for a, b in zip(cu, cu[1:]))
    assert all(a // max_len == (b - 1) // max_len for a, b in zip(cu, cu[1:]) if b > a)  # no segment crosses a row
    assert batch.max_seqlen == max(b - a for a, b in zip(cu, cu[1:]))
    assert batch.tokens.shape == (rows, max_len, D) and batch.shape == (rows, max_len)
    assert (batch.tokens[~batch.valid] == 0).all() and (batch.coords[~batch.valid] == 0).all()


def run(samples, cfg, seed=0):
    sp = StreamPacker(cfg, seed=seed)
    return list(sp.pack(samples, flush=True)), sp


configs = st.builds(
    PackerConfig,
    max_len=st.sampled_from([16, 37, 64]),
    rows=st.integers(1, 3),
    policy=st.sampled_from(["next_fit", "ffd", "bfd"]),
    buffer=st.integers(1, 8),
    fill_to_exact=st.booleans(),
    max_shrink=st.sampled_from([0.1, 0.3]),
    oversize=st.sampled_from(["drop", "split_time"]),
)


@settings(max_examples=120, deadline=None)
@given(cfg=configs, lengths=st.lists(st.integers(1, 90), min_size=1, max_size=40), seed=st.integers(0, 3))
def test_nothing_lost_and_split_inverts_pack(cfg, lengths, seed):
    samples = [make_sample(i, n, seed=seed) for i, n in enumerate(lengths)]
    batches, sp = run(samples, cfg, seed=seed)
    by_key = {s.key: s for s in samples}
    seen = {}
    for b in batches:
        check_layout(b, cfg.rows, cfg.max_len)
        for key, tok, crd, grid in zip(b.keys, b.split(b.tokens), b.split(b.coords), b.grid.tolist()):
            seen.setdefault(key.split("@")[0], []).append((key, tok, crd, grid))
        event(f"multi-sample rows: {any(len(set(b.segment_ids[r].tolist()) - {-1}) > 1 for r in range(cfg.rows))}")
    st_ = sp.stats
    assert st_.samples_in == len(samples) and sp.pending == 0
    assert st_.samples_packed == sum(len(v) for v in seen.values())
    assert len(seen) + st_.dropped == len(samples)  # packed (maybe in chunks) or counted, never both
    assert set(st_.dropped_by_reason) <= {"oversize"}
    for key, parts in seen.items():
        src = by_key[key]
        if len(parts) == 1 and parts[0][0] == key:  # whole sample: bitwise, or a shrunk subset in order
            _, tok, crd, grid = parts[0]
            assert tuple(grid) == src.grid
            if len(tok) == len(src):
                assert torch.equal(tok, src.tokens) and torch.equal(crd, src.coords)
            else:
                assert cfg.fill_to_exact and len(tok) >= (1 - cfg.max_shrink) * len(src) - 1e-9
                idx = (src.tokens[None] == tok[:, None]).all(-1).float().argmax(1)
                assert (idx[1:] > idx[:-1]).all() and torch.equal(src.coords[idx], crd)
        else:  # split_time chunks: re-based t, concatenated they give the sample back
            assert cfg.oversize == "split_time" and len(src) > cfg.max_len
            parts.sort(key=lambda p: int(p[0].split("@t")[1]))
            if all(len(p[1]) == len(p[2]) for p in parts) and sum(len(p[1]) for p in parts) == len(src):
                assert torch.equal(torch.cat([p[1] for p in parts]), src.tokens)
                crd = torch.cat([p[2] + torch.tensor([int(p[0].split("@t")[1]), 0, 0], dtype=torch.int32) for p in parts])
                assert torch.equal(crd, src.coords)
    assert st_.tokens_packed == sum(int(b.num_tokens.sum()) for b in batches)
    assert st_.slots == len(batches) * cfg.rows * cfg.max_len


def test_multi_sample_rows_really_occur():
    # the deterministic guard against vacuous property runs
    cfg = PackerConfig(max_len=64, rows=2, buffer=4)
    batches, sp = run([make_sample(i, n) for i, n in enumerate([10, 20, 30, 5, 60, 33, 31, 4, 4, 12])], cfg)
    assert any(len(set(b.segment_ids[r].tolist()) - {-1}) > 1 for b in batches for r in range(2))
    assert sp.stats.samples_packed == 10 and all(b.shape == (2, 64) for b in batches)


def test_stream_rows_match_plan_packs():
    lengths = [int(x) for x in torch.randint(1, 100, (300,), generator=torch.Generator().manual_seed(0))]
    samples = [make_sample(i, n) for i, n in enumerate(lengths)]
    for policy in ("next_fit", "ffd", "bfd"):
        batches, _ = run(samples, PackerConfig(max_len=100, rows=1, buffer=8, policy=policy))
        rows = [[int(k[1:]) for k in b.keys] for b in batches]
        assert rows == plan_packs(lengths, 100, policy, buffer=8)


@settings(max_examples=40, deadline=None)
@given(cfg=configs, lengths=st.lists(st.integers(1, 90), min_size=1, max_size=40), stop=st.integers(0, 40))
def test_same_seed_same_batches_and_resume_is_bitwise(cfg, lengths, stop):
    samples = [make_sample(i, n) for i, n in enumerate(lengths)]
    ref, _ = run(samples, cfg, seed=7)
    again, _ = run(samples, cfg, seed=7)
    assert_same(ref, again)
    # consume part of the stream, checkpoint (through torch.save), resume on the rest
    sp = StreamPacker(cfg, seed=7)
    head = []
    gen = sp.pack(iter(samples))
    for b in gen:
        head.append(b)
        if len(head) > stop % (len(ref) + 1):
            break
    sd = sp.state_dict()
    import io

    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    resumed = StreamPacker(cfg, seed=123)  # the seed comes from the checkpoint
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    tail = list(resumed.pack(samples[sd["stats"]["samples_in"] :], flush=True))
    assert_same(ref, head + tail)
    assert resumed.stats.samples_in == len(samples)


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys == y.keys
        for f in ("tokens", "coords", "segment_ids", "cu_seqlens", "grid", "num_tokens", "row", "offset"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f


def test_bad_samples_are_counted_by_reason():
    good = [make_sample(i, 8) for i in range(4)]
    nan = make_sample(9, 8)
    nan.tokens[3, 1] = float("nan")
    bad = [
        PatchedSample(torch.zeros(0, D), torch.zeros(0, 3, dtype=torch.int32), (0, 0, 0)),
        PatchedSample(torch.zeros(4, D, 2), torch.zeros(4, 3, dtype=torch.int32), (1, 2, 2)),
        PatchedSample(torch.zeros(4, D, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.int32), (1, 2, 2)),
        PatchedSample(torch.zeros(4, D + 1), torch.zeros(4, 3, dtype=torch.int32), (1, 2, 2)),
        PatchedSample(torch.zeros(4, D), torch.zeros(4, 2, dtype=torch.int32), (1, 2, 2)),
        nan,
        "not a sample",
    ]
    cfg = PackerConfig(max_len=16, rows=2, oversize="drop")
    batches, sp = run(good[:1] + bad + good[1:] + [make_sample(20, 17)], cfg)
    assert sp.stats.dropped_by_reason == {"empty": 1, "bad_rank": 1, "bad_dtype": 1, "bad_dim": 1, "bad_coords": 1, "nonfinite": 1, "bad_type": 1, "oversize": 1}
    assert sp.stats.samples_packed == 4 and sp.stats.samples_in == 4 + len(bad) + 1
    assert sorted(k for b in batches for k in b.keys) == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize("policy", ["error", "downscale"])
def test_oversize_raises_under_error_and_downscale(policy):
    sp = StreamPacker(PackerConfig(max_len=16, oversize=policy))
    with pytest.raises(SampleError, match=r"'s0': 17 tokens > max_len=16") as info:
        list(sp.pack([make_sample(0, 17)]))
    assert info.value.reason == "oversize"


def test_split_time_cuts_at_frames_and_drops_a_too_big_frame():
    s = make_sample(0, 40, frames=10)  # 4 tokens per frame
    batches, sp = run([s, make_sample(1, 40, frames=1)], PackerConfig(max_len=12, rows=1, oversize="split_time"))
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(["s0@t0", "s0@t3", "s0@t6", "s0@t9"])
    assert sp.stats.split_samples == 1 and sp.stats.split_chunks == 4 and sp.stats.dropped_by_reason == {"oversize": 1}
    grids = {k: g for b in batches for k, g in zip(b.keys, b.grid.tolist())}
    assert grids["s0@t0"] == [3, 7, 3] and grids["s0@t9"] == [1, 7, 3]


def test_fill_to_exact_stream_records_shrinks_and_fills_rows():
    lengths = [int(x) for x in torch.randint(32, 64, (200,), generator=torch.Generator().manual_seed(1))]
    samples = [make_sample(i, n) for i, n in enumerate(lengths)]
    plain, a = run(samples, PackerConfig(max_len=64, rows=4, buffer=16))
    exact, b = run(samples, PackerConfig(max_len=64, rows=4, buffer=16, fill_to_exact=True, max_shrink=0.1))
    assert b.stats.shrunk_samples > 0 and b.stats.shrunk_tokens > 0 and a.stats.shrunk_samples == 0
    assert b.stats.fill > a.stats.fill
    assert b.stats.tokens_packed + b.stats.shrunk_tokens == sum(lengths) == a.stats.tokens_packed


def test_pack_without_flush_keeps_the_tail_and_stats_are_dict_like():
    cfg = PackerConfig(max_len=64, rows=2, buffer=4)
    sp = StreamPacker(cfg)
    got = list(sp.pack([make_sample(i, 30) for i in range(5)]))
    assert sp.pending + sp.stats.samples_packed == 5 and sp.pending > 0
    rest = sp.flush()
    assert sp.pending == 0 and sp.stats["samples_packed"] == 5 and 0 < sp.stats["fill"] <= 1
    assert all(b.shape == (2, 64) for b in got + rest)
    assert sp.flush() == []


def test_load_state_dict_rejects_other_config():
    sd = StreamPacker(PackerConfig(max_len=64)).state_dict()
    with pytest.raises(ValueError, match="max_len"):
        StreamPacker(PackerConfig(max_len=32)).load_state_dict(sd)


def test_end_to_end_prepare_pack_split_unpatchify():
    from patchpack.packer import unpatchify

    cfg = PackerConfig(patch=(1, 2, 2), max_len=128, rows=2)
    g = torch.Generator().manual_seed(0)
    videos = [torch.randn(3, t, h, w, generator=g) for t, h, w in [(1, 8, 8), (2, 6, 10), (3, 4, 4), (1, 16, 12)]]
    samples = [prepare_sample(v, config=cfg, generator=g, key=str(i)) for i, v in enumerate(videos)]
    batches, _ = run(samples, cfg)
    out = {}
    for b in batches:
        for k, tok, grid in zip(b.keys, b.split(b.tokens), b.grid.tolist()):
            out[int(k)] = unpatchify(tok, tuple(grid), cfg.patch, 3)
    assert all(torch.equal(out[i], v) for i, v in enumerate(videos))
    assert pack(samples, [[0, 1], [2, 3]], 128).num_samples == 4
