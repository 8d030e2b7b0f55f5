"""Fuzzing the data path (issue 15): random and mutated bytes never crash a decoder (a DecodeError
with a reason or a valid frame array), any single flipped byte in a shard leaves every sample
accounted for (yielded or skipped), and make-shards accounts for every captions entry."""

from __future__ import annotations

import io
import json
import string

import numpy as np
import pytest

from patchpack.train.data import DataConfig, VideoStream
from patchpack.train.data.media_decode import (
    DecodeError,
    decode_image,
    decode_latent,
    decode_video,
    probe_image,
    probe_video,
    verify_video,
)
from patchpack.train.data.media_encode import encode_image, encode_mp4
from patchpack.train.data.shards import ShardWriter, make_shards

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

RNG = np.random.default_rng(0)
VIDEO = encode_mp4(RNG.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), fps=4)
PNG = encode_image(RNG.integers(0, 255, (12, 10, 3), dtype=np.uint8))
JPG = encode_image(RNG.integers(0, 255, (12, 10, 3), dtype=np.uint8), fmt="jpg")
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None, derandomize=True)


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, value in edits:
        if not b:
            break
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= value or 1
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b[i:i] = bytes([value]) * 7
        else:  # "zero" a run
            b[i : i + value] = bytes(len(b[i : i + value]))
    return bytes(b)


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "zero"]), st.integers(0, 10**6),
                           st.integers(0, 255)), min_size=1, max_size=4)


def _check_video(data):
    for fn in (lambda: probe_video(data), lambda: verify_video(data, max_pixels=1 << 20),
               lambda: decode_video(data, fps=4.0, max_seconds=2.0, max_frames=8, max_pixels=1 << 20,
                                    max_source_frames=1000).frames_THWC):
        try:
            out = fn()
        except DecodeError as e:
            assert e.reason and e.message is not None
            continue
        if isinstance(out, np.ndarray):
            assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[-1] == 3 and out.shape[0] >= 1


def _check_image(data):
    for fn in (lambda: probe_image(data), lambda: decode_image(data, max_pixels=1 << 20).frames_THWC):
        try:
            out = fn()
        except DecodeError as e:
            assert e.reason
            continue
        if isinstance(out, np.ndarray):
            assert out.dtype == np.uint8 and out.shape[0] == 1 and out.shape[-1] == 3


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_a_decoder(data):
    _check_video(data)
    _check_image(data)
    try:
        decode_latent(data)
    except DecodeError as e:
        assert e.reason == "corrupt_latent"


@FUZZ
@given(EDITS)
def test_mutated_mp4_never_crashes(edits):
    _check_video(_mutate(VIDEO, edits))


@FUZZ
@given(st.sampled_from([PNG, JPG]), EDITS)
def test_mutated_images_never_crash(data, edits):
    _check_image(_mutate(data, edits))


# --------------------------------------------------------------------------- shards

N = 6


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    out = tmp_path_factory.mktemp("shard")
    with ShardWriter(out, max_count=N) as w:
        for i in range(N):
            media = {"mp4": VIDEO} if i % 3 == 0 else {"png": PNG}
            w.write(f"s{i}", media | {"json": json.dumps({"caption": f"c{i}"}).encode()})
    return out / "shard-000000.tar"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture], database=None, derandomize=True)
@given(st.integers(0, 10**7), st.integers(1, 255))
def test_any_flipped_byte_in_a_shard_leaves_every_sample_accounted_for(shard, tmp_path_factory, pos, xor):
    """Usable + skipped == the samples the shard index lists, wherever the byte is (a header, a
    member, the padding): a bad header the tar reader takes for the end is caught by the count."""
    folder = tmp_path_factory.mktemp("flip")
    data = bytearray(shard.read_bytes())
    data[pos % len(data)] ^= xor
    (folder / shard.name).write_bytes(bytes(data))
    (folder / "shardindex.json").write_bytes((shard.parent / "shardindex.json").read_bytes())
    stream = VideoStream(DataConfig(shards=[str(folder)], epochs=1, shuffle_buffer=0, max_frames=8))
    usable = len(list(stream))
    assert usable + sum(stream.skips.values()) == N, stream.skips


# --------------------------------------------------------------------------- make_shards

NAMES = ["a.png", "v.mp4", "j.jpg", "missing.png", "../a.png", "/etc/hostname", "sub", "sub/../a.png", "a.PNG",
         "bad.png", "", "x.txt", "é.png", "a.png\x00.png", 5, None, ["a.png"], {"f": 1}]
CAPTIONS = st.one_of(st.text(alphabet=string.printable, max_size=12), st.lists(st.text(max_size=5), max_size=3),
                     st.none(), st.integers(), st.just(["", "  "]), st.just({"x": "y"}))


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    (d / "sub").mkdir()
    (d / "a.png").write_bytes(PNG)
    (d / "a.PNG").write_bytes(PNG)
    (d / "é.png").write_bytes(PNG)
    (d / "v.mp4").write_bytes(VIDEO)
    (d / "j.jpg").write_bytes(JPG)
    (d / "bad.png").write_bytes(PNG[: len(PNG) // 2])
    (d / "x.txt").write_text("hello")
    return d


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture], database=None, derandomize=True)
@given(st.lists(st.fixed_dictionaries({"file": st.sampled_from(NAMES), "captions": CAPTIONS}), max_size=8),
       st.booleans())
def test_make_shards_accounts_for_every_entry(src, tmp_path_factory, entries, header_only):
    out = tmp_path_factory.mktemp("out")
    caps = out.parent / f"{out.name}.json"
    caps.write_text(json.dumps(entries))
    summary = make_shards(src, caps, out, check="header" if header_only else "decode", progress=False)
    assert summary["written"] + sum(summary["skipped"].values()) == len(entries)
    assert summary["uncaptioned"] >= 0 and not list(out.glob("*.tmp"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          database=None, derandomize=True)
@given(st.binary(max_size=300))
def test_a_garbage_captions_file_is_a_value_error_or_accounted(src, tmp_path_factory, data):
    out = tmp_path_factory.mktemp("g")
    caps = out.parent / f"{out.name}.bin"
    caps.write_bytes(data)
    try:
        summary = make_shards(src, caps, out, progress=False)
    except ValueError:
        return
    assert summary["written"] + sum(summary["skipped"].values()) >= 0


def test_the_shard_fuzz_is_not_vacuous(shard):
    """The unflipped shard yields every sample (so the flips above have something to break)."""
    stream = VideoStream(DataConfig(shards=[str(shard.parent)], epochs=1, shuffle_buffer=0, max_frames=8))
    assert len(list(stream)) == N and stream.skips == {}
    assert io.BytesIO(shard.read_bytes()).getbuffer().nbytes > 0
