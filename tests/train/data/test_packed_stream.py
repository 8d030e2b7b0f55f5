"""The shard stream: node x worker splitting, skip counting, resume, pipe refusal."""

import io
import json
from collections import Counter

import av
import numpy as np
import pytest
import torch

from patchpack.packer import PackerConfig
from patchpack.train.data.config import DataConfig
from patchpack.train.data.media_encode import encode_image, encode_mp4
from patchpack.train.data.packed_stream import PackedStream, expand_shards, split_shards
from patchpack.train.data.shards import ShardWriter
from patchpack.train.loops.state_io import flatten, unflatten

PACKER = dict(patch=(1, 2, 2), max_len=192, rows=2, max_tokens_per_sample=96, buffer=4)


def _write_dataset(out, *, shards: int, per_shard: int, videos: bool = True, captions=("a", "b")):
    """Tiny images (and every third a 3-frame mp4) with two captions each; returns all keys."""
    rng = np.random.default_rng(0)
    keys = []
    with ShardWriter(out, max_count=per_shard) as w:
        for i in range(shards * per_shard):
            h, w_ = [(8, 12), (12, 8), (10, 10), (16, 6)][i % 4]
            if videos and i % 3 == 0:
                media = {"mp4": encode_mp4(rng.integers(0, 255, (3, h, w_, 3), dtype=np.uint8), fps=4)}
            else:
                media = {"png": encode_image(rng.integers(0, 255, (h, w_, 3), dtype=np.uint8))}
            caps = [f"{c} {i}" for c in captions]
            w.write(f"s{i:04d}", media | {"json": json.dumps({"caption": caps}).encode()})
            keys.append(f"s{i:04d}")
    return keys


def _stream(path, **kw):
    shards = [str(p) for p in path] if isinstance(path, list) else [str(path)]
    data = DataConfig(shards=shards, epochs=kw.pop("epochs", 1), shuffle_buffer=kw.pop("shuffle_buffer", 4),
                      seed=kw.pop("seed", 0), **kw.pop("data", {}))
    return PackedStream(data, PackerConfig(**(PACKER | kw.pop("packer", {}))), **kw)


def _keys(batches):
    return [k.split("/")[1] for b in batches for k in b.keys]


def test_two_ranks_two_workers_cover_every_sample_once(tmp_path):
    keys = _write_dataset(tmp_path, shards=8, per_shard=3, videos=False)
    seen = []
    for rank in range(2):
        for worker in range(2):
            ds = _stream(tmp_path, rank=rank, world_size=2, worker=worker, num_workers=2)
            seen += _keys(ds)
    assert Counter(seen) == Counter(keys)  # every sample exactly once per epoch, none twice


def test_split_shards_partitions_each_epoch():
    urls = [f"s{i}.tar" for i in range(10)]
    for epoch in range(3):
        parts = [split_shards(urls, epoch=epoch, seed=1, shuffle=True, rank=r, world_size=2, worker=w, num_workers=2)
                 for r in range(2) for w in range(2)]
        assert sorted(sum(parts, [])) == sorted(urls)
    orders = {tuple(split_shards(urls, epoch=e, seed=1, shuffle=True, rank=0, world_size=1, worker=0, num_workers=1))
              for e in range(3)}
    assert len(orders) == 3  # reshuffled per epoch


def test_dataloader_workers_cover_every_sample_and_merge_skips(tmp_path):
    keys = _write_dataset(tmp_path, shards=4, per_shard=3, videos=False)
    with ShardWriter(tmp_path / "more", max_count=1, pattern="bad-{:02d}.tar") as w:
        w.write("broken", {"png": b"garbage", "json": b'{"caption": "x"}'})
    ds = _stream([tmp_path, tmp_path / "more"])
    pairs = list(ds.loader(num_workers=2, with_info=True))
    batches = [b for b, _ in pairs]
    assert Counter(_keys(batches)) == Counter(keys)
    assert ds.skips == {"corrupt_image": 1}  # counted in a worker, merged in the main process
    assert {info["worker"] for _, info in pairs} == {0, 1}
    assert ds.state_dict()["mode"] == "workers"


def _bad_inputs(tmp_path):
    good = _write_dataset(tmp_path / "good", shards=1, per_shard=4, videos=True)
    mp4 = encode_mp4(np.zeros((4, 8, 8, 3), np.uint8), fps=4)
    buf = io.BytesIO()  # a 0-frame mp4: a header and an index, no samples
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 8, 8, "yuv420p"
        c.start_encoding()
    cap = json.dumps({"caption": "fine"}).encode()
    with ShardWriter(tmp_path / "bad", max_count=100) as w:
        w.write("truncated", {"mp4": mp4[: len(mp4) // 2], "json": cap})
        w.write("garbage", {"jpg": b"\xff\xd8 definitely not a jpeg", "json": cap})
        w.write("nocaption", {"png": encode_image(np.zeros((8, 8, 3), np.uint8)), "json": b'{"source": {}}'})
        w.write("emptycaption", {"png": encode_image(np.zeros((8, 8, 3), np.uint8)), "json": b'{"caption": ["", " "]}'})
        w.write("zeroframes", {"mp4": buf.getvalue(), "json": cap})
        w.write("huge", {"png": encode_image(np.zeros((64, 64, 3), np.uint8)), "json": cap})
        w.write("nojson", {"png": encode_image(np.zeros((8, 8, 3), np.uint8))})
        w.write("badjson", {"png": encode_image(np.zeros((8, 8, 3), np.uint8)), "json": b"{nope"})
        w.write("nomedia", {"txt": b"hello", "json": cap})
        w.write("tiny", {"png": encode_image(np.zeros((1, 1, 3), np.uint8)), "json": cap})
    (tmp_path / "bad" / "cut-000.tar").write_bytes((tmp_path / "bad" / "shard-000000.tar").read_bytes()[:700])
    return good


def test_every_bad_input_is_counted_not_raised(tmp_path):
    good = _bad_inputs(tmp_path)
    ds = _stream([tmp_path / "good", tmp_path / "bad"], shuffle_buffer=0, data={"max_pixels": 32 * 32})
    got = _keys(ds.loader())
    assert sorted(got) == sorted(good)
    skips = ds.skips
    # the cut copy of the bad shard ends inside its first member: one bad_shard, no sample.
    # Sizes are planned from headers, so the packer is what finds a sample too small to patch.
    assert skips == {"corrupt_video": 1, "corrupt_image": 1, "no_caption": 1, "empty_caption": 1, "no_frames": 1,
                     "too_large": 1, "no_json": 1, "bad_json": 1, "no_media": 1, "packer:too_small": 1,
                     "bad_shard": 1}


def _same_batches(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.coords, y.coords)
        assert torch.equal(x.cu_seqlens, y.cu_seqlens) and x.keys == y.keys
        assert [m["caption"] for m in x.meta] == [m["caption"] for m in y.meta]


def test_resume_yields_identical_batches(tmp_path):
    _write_dataset(tmp_path, shards=3, per_shard=5, videos=True)
    small = {"rows": 1, "max_len": 128}
    full = list(_stream(tmp_path, epochs=2, data={"max_frames": 2}, packer=small).loader())
    assert len(full) >= 6
    ds = _stream(tmp_path, epochs=2, data={"max_frames": 2}, packer=small)
    it = ds.loader()
    head = [next(it) for _ in range(4)]
    skeleton, tensors = flatten(ds.state_dict())  # what a checkpoint stores, no pickle
    state = unflatten(json.loads(json.dumps(skeleton)), tensors)
    rest_original = list(it)
    resumed = _stream(tmp_path, epochs=2, data={"max_frames": 2}, packer=small)
    resumed.load_state_dict(state)
    rest = list(resumed.loader())
    _same_batches(head + rest, full)
    _same_batches(rest, rest_original)
    assert {m["caption"].split()[0] for b in full for m in b.meta} == {"a", "b"}  # both captions get picked


def test_pipe_urls_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pipe:"):
        expand_shards("pipe:cat data/shard-{000..003}.tar")
    with pytest.raises(ValueError, match="allow_pipe"):
        PackedStream(DataConfig(shards=["pipe:curl -s http://x/a.tar"]), PackerConfig(**PACKER))
    assert expand_shards("pipe:cat a.tar", allow_pipe=True) == ["pipe:cat a.tar"]


def test_shard_specs_expand(tmp_path):
    _write_dataset(tmp_path, shards=3, per_shard=1, videos=False)
    names = [f"{tmp_path}/shard-00000{i}.tar" for i in range(3)]
    assert expand_shards(str(tmp_path)) == names
    assert expand_shards(f"{tmp_path}/shard-{{000000..000002}}.tar") == names
    assert len(list(_stream(f"file:{tmp_path}/shard-000001.tar"))) == 1
    with pytest.raises(ValueError, match="cannot feed"):
        list(_stream(tmp_path, rank=0, world_size=2, worker=0, num_workers=2))


def test_resume_with_workers_reads_nothing_twice(tmp_path):
    keys = _write_dataset(tmp_path, shards=4, per_shard=12, videos=False)
    small = {"rows": 1, "max_len": 128, "buffer": 2}
    ds = _stream(tmp_path, shuffle_buffer=2, packer=small)
    it = ds.loader(num_workers=2)
    head = [next(it) for _ in range(3)]
    state = ds.state_dict()
    del it
    assert state["mode"] == "workers" and state["batches"] == 3
    resumed = _stream(tmp_path, shuffle_buffer=2, packer=small)
    resumed.load_state_dict(state)
    pairs = list(resumed.loader(num_workers=2, with_info=True))
    rest = [b for b, _ in pairs]
    assert pairs[0][1]["worker"] == 1  # the round robin goes on where it stopped
    seen = Counter(_keys(head) + _keys(rest))
    assert max(seen.values()) == 1 and set(seen) <= set(keys)
    # the resumed workers go on reading; what sat in a worker's shuffle buffer or packer
    # at save time is lost for this epoch (documented), so coverage is not asserted
    assert len(_keys(rest)) > 0 and len(seen) == len(_keys(head)) + len(_keys(rest))
