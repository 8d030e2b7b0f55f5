"""make_shards and synth: media bytes, sizes, frames and captions survive a real encode/decode."""

import json
import random
import tarfile

import numpy as np
import pytest
import torch

from patchpack.train.data.media_decode import (
    DecodeError,
    decode_image,
    decode_video,
    from_video_CTHW,
    to_video_CTHW,
)
from patchpack.train.data.media_encode import encode_image, encode_mp4
from patchpack.train.data.shards import make_shards, read_captions
from patchpack.train.data.synth import make_sample, synth

BIG = 1 << 40


def _pattern_video(t: int, h: int, w: int) -> np.ndarray:
    """Flat frames of distinct grey levels with a coloured bar: survives x264 nearly exactly."""
    v = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        v[i] = 20 + 14 * i
        v[i, : h // 2, : w // 4] = (200, 40, 40)
    return v


def _members(tar_path):
    out = {}
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


@pytest.mark.parametrize("per_caption", [False, True])
def test_make_shards_round_trip(tmp_path, per_caption):
    src = tmp_path / "src"
    src.mkdir()
    video = _pattern_video(6, 24, 40)
    (src / "clip.mp4").write_bytes(encode_mp4(video, fps=4))
    image = np.random.default_rng(0).integers(0, 255, (20, 14, 3), dtype=np.uint8)
    (src / "pic.png").write_bytes(encode_image(image))
    entries = [{"file": "clip.mp4", "captions": ["a clip", "the same clip"]}, {"file": "pic.png", "captions": ["a pic"]},
               {"file": "gone.mp4", "captions": ["x"]}, {"file": "clip.mp4", "captions": ["", "  "]},
               {"file": "notes.txt", "captions": ["x"]}]
    (src / "bad.jpg").write_bytes(b"not a jpeg")
    entries.append({"file": "bad.jpg", "captions": ["x"]})
    caps = tmp_path / "captions.jsonl"
    caps.write_text("\n".join(json.dumps(e) for e in entries))

    summary = make_shards(src, caps, tmp_path / "out", shard_size_mb=1, per_caption=per_caption, progress=False)
    assert summary["skipped"] == {"empty_caption": 1, "missing_file": 1, "unsupported_type": 1,
                                  "unreadable:corrupt_image": 1}
    assert summary["written"] == (3 if per_caption else 2)
    samples = _members(summary["shards"][0])
    by_file = {}
    for m in samples.values():
        meta = json.loads(m["json"])
        by_file.setdefault(meta["source"]["file"], []).append((m, meta))

    (m, meta), *rest = by_file["clip.mp4"]
    assert m["mp4"] == (src / "clip.mp4").read_bytes()  # bytes as-is, no re-encode
    assert meta["source"] == {"fps": 4.0, "frames": 6, "width": 40, "height": 24, "file": "clip.mp4"}
    got = [meta["caption"]] + [x[1]["caption"] for x in rest]
    assert got == (["a clip", "the same clip"] if per_caption else [["a clip", "the same clip"]])
    dec = decode_video(m["mp4"], fps=None, max_seconds=None, max_frames=None, max_pixels=BIG, max_source_frames=BIG)
    assert dec.frames_THWC.shape == (6, 24, 40, 3)
    assert np.abs(dec.frames_THWC.astype(int) - video).mean() < 3  # lossy, but close

    (m, meta), = by_file["pic.png"]
    assert np.array_equal(decode_image(m["png"], max_pixels=BIG).frames_THWC[0], image)  # png is lossless
    assert meta["caption"] == (["a pic"] if not per_caption else "a pic")


def test_read_captions_accepts_json_list(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps([{"file": "a.mp4", "captions": ["x"]}]))
    assert read_captions(p) == [{"file": "a.mp4", "captions": ["x"]}]
    p.write_text(json.dumps([{"captions": ["x"]}]))
    with pytest.raises(ValueError, match="no 'file'"):
        read_captions(p)


def test_decode_resamples_fps_and_caps_duration():
    video = _pattern_video(16, 16, 16)  # 16 frames at 8 fps = 2 s
    data = encode_mp4(video, fps=8)
    kw = dict(max_pixels=BIG, max_source_frames=BIG, max_frames=None)
    half = decode_video(data, fps=4, max_seconds=None, **kw)
    assert half.frames_THWC.shape[0] == 8 and half.fps == 4
    # every other source frame: levels 20, 48, 76, ...
    assert np.allclose(half.frames_THWC[:, -1, -1, 0], 20 + 28 * np.arange(8), atol=3)
    clip = decode_video(data, fps=None, stride=1, max_seconds=1.0, **kw)
    assert clip.frames_THWC.shape[0] == 8
    with pytest.raises(DecodeError) as e:
        decode_video(data, fps=None, max_seconds=None, max_pixels=100, max_source_frames=BIG, max_frames=None)
    assert e.value.reason == "too_large"


def _decode_member(m: dict) -> np.ndarray:
    ext = next(e for e in ("mp4", "png", "jpg") if e in m)
    if ext == "mp4":
        return decode_video(m[ext], fps=None, max_seconds=None, max_frames=None, max_pixels=BIG,
                            max_source_frames=BIG).frames_THWC
    return decode_image(m[ext], max_pixels=BIG).frames_THWC


def test_synth_same_seed_same_samples(tmp_path):
    """The promise of a seed (synth's docstring): the same frames before encoding, the same
    captions, attributes, keys and order. Not the same codec bytes: x264 does not promise them."""
    a = synth(tmp_path / "a", num_samples=10, seed=3, shard_size=4, progress=False)
    b = synth(tmp_path / "b", num_samples=10, seed=3, shard_size=4, progress=False)
    c = synth(tmp_path / "c", num_samples=10, seed=4, shard_size=4, progress=False)
    assert len(a["shards"]) == 3 and a["written"] == 10
    for pa, pb in zip(a["shards"], b["shards"], strict=True):
        ma, mb = _members(pa), _members(pb)
        assert list(ma) == list(mb)  # same keys, same order
        for key in ma:
            assert sorted(ma[key]) == sorted(mb[key])  # same media type
            assert ma[key]["json"] == mb[key]["json"]  # captions, attrs, source sizes: byte for byte
    other = [m["json"] for p in c["shards"] for m in _members(p).values()]
    assert other != [m["json"] for p in a["shards"] for m in _members(p).values()]  # the seed matters

    # The frames that went into the encoder are a function of the seed alone ...
    rng1, rng2 = random.Random(3), random.Random(3)
    made = [make_sample(rng1) for _ in range(10)]
    again = [make_sample(rng2) for _ in range(10)]
    for (fa, ca, aa), (fb, cb, ab) in zip(made, again):
        assert np.array_equal(fa, fb) and ca == cb and aa == ab
    # ... and each shard holds those frames, to within the codec's loss (png exactly).
    stored = [m for p in a["shards"] for m in _members(p).values()]
    for (frames, caption, attrs), m in zip(made, stored, strict=True):
        meta = json.loads(m["json"])
        assert meta["caption"] == caption and meta["attrs"] == attrs
        got = _decode_member(m)
        assert got.shape == frames.shape
        err = np.abs(got.astype(int) - frames.astype(int)).mean()
        if "png" in m:
            assert err == 0
        else:
            assert err < 8, f"{meta['source']['file']}: mean abs error {err:.2f} after encode/decode"


def test_synth_stores_attrs(tmp_path):
    a = synth(tmp_path / "a", num_samples=10, seed=3, shard_size=4, progress=False)
    samples = {k: v for p in a["shards"] for k, v in _members(p).items()}
    for m in samples.values():
        meta = json.loads(m["json"])
        attrs, src = meta["attrs"], meta["source"]
        assert _decode_member(m).shape[:3] == (attrs["frames"], attrs["height"], attrs["width"])
        assert (src["frames"], src["height"], src["width"]) == (attrs["frames"], attrs["height"], attrs["width"])
        assert attrs["height"] % 2 == 0 and attrs["width"] % 2 == 0
        said = attrs.get("colour") or attrs.get("photo")
        if attrs["kind"] == "photo":
            assert attrs["motion"] in meta["caption"] or attrs["frames"] == 1
        else:
            assert said in meta["caption"]
            if attrs["frames"] > 1:
                assert attrs["direction"] in meta["caption"]


def test_from_video_maps_the_range_clips_and_inverts_to_video():
    v = torch.tensor([-1.0, 0.0, 1.0, 5.0], requires_grad=True).view(1, 1, 1, 4).expand(3, 1, 1, 4)
    f = from_video_CTHW(v)
    assert f.shape == (1, 1, 4, 3) and f.dtype == np.uint8
    assert f[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 5, 3), dtype=np.uint8)
    assert np.array_equal(from_video_CTHW(to_video_CTHW(frames)), frames)
    with pytest.raises(ValueError, match="C, T, H, W"):
        from_video_CTHW(torch.zeros(2, 4, 4))


def test_synth_demo_knobs_shapes_only_large_objects_and_excluded_captions(tmp_path):
    """The demo's knobs: no photos or digits, objects 50-60% of the short side, and excluded
    captions never written (yet still seeded: the same call writes the same samples)."""
    rng = random.Random(0)
    common = [make_sample(rng, photo_fraction=0.0, digit_fraction=0.0)[1] for _ in range(40)]
    exclude = set(common[:6])  # captions that would surely come up again in 40 samples
    kw = dict(num_samples=40, seed=0, shard_size=16, photo_fraction=0.0, digit_fraction=0.0,
              object_scale=(0.5, 0.6), exclude=exclude, progress=False)
    a = synth(tmp_path / "a", **kw)
    b = synth(tmp_path / "b", **kw)
    metas = [json.loads(m["json"]) for p in a["shards"] for m in _members(p).values()]
    assert a["written"] == 40 and a["kinds"] == {"shape": 40}
    assert not {m["caption"] for m in metas} & exclude
    assert [m["caption"] for m in metas] == [json.loads(m["json"])["caption"]
                                             for p in b["shards"] for m in _members(p).values()]
    assert all(m["attrs"]["object"] in ("circle", "square", "triangle") for m in metas)
    # the object's side: 50-60% of the short side, read from a square's mask
    rng, squares = random.Random(1), 0
    for _ in range(30):
        frames, _, attrs = make_sample(rng, photo_fraction=0.0, digit_fraction=0.0, object_scale=(0.5, 0.6))
        if attrs["object"] != "square":
            continue
        frame = frames[0].astype(int)
        bg = np.median(frame.reshape(-1, 3), axis=0)
        side = int(np.sqrt((np.abs(frame - bg).sum(-1) > 30).sum()))
        short = min(attrs["height"], attrs["width"])
        assert 0.5 * short - 1 <= side <= 0.6 * short + 1, (side, short)
        squares += 1
    assert squares >= 3  # not vacuous
