"""The attribute evaluator, validated on ground truth: synth clips shrunk to demo sizes, through
mp4, noise and blur, score near 100%; pure noise and swapped captions score near chance.

`pytest -m slow tests/train/apps/test_evaluate.py -s` prints the full table of docs/evaluation.md.
"""

import json
import random
from collections import Counter
from functools import cache

import numpy as np
import pytest
from PIL import Image, ImageFilter

from patchpack.train.apps.evaluate import (
    evaluate,
    evaluate_dir,
    format_report,
    parse_caption,
    read_attributes,
    score,
)
from patchpack.train.data.media_decode import decode_video
from patchpack.train.data.media_encode import encode_image, encode_mp4
from patchpack.train.data.synth import BACKGROUNDS, COLOURS, MOTIONS, make_sample

CLIP_LENGTHS = (2, 4, 8)  # demo durations; synth's one-frame samples stay images


# --------------------------------------------------------------------------- ground truth and degradations


@cache
def _ground_truth(n: int, seed: int, photo_fraction: float) -> tuple:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        v, caption, attrs = make_sample(rng, photo_fraction=photo_fraction, min_side=64, max_side=160)
        out.append((v[: rng.choice(CLIP_LENGTHS)] if len(v) > 1 else v, caption, attrs))
    return tuple(out)


def _resize(v: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in v])


def _short_side(v: np.ndarray, side: int) -> np.ndarray:
    """Scale so the short side is `side` (even sizes, as the mp4 encoder needs)."""
    h, w = v.shape[1:3]
    s = side / min(h, w)
    return _resize(v, 2 * round(h * s / 2), 2 * round(w * s / 2))


def _long_side(v: np.ndarray, side: int) -> np.ndarray:
    h, w = v.shape[1:3]
    s = side / max(h, w)
    return _resize(v, max(2, 2 * round(h * s / 2)), max(2, 2 * round(w * s / 2)))


def _mp4(v: np.ndarray) -> np.ndarray:
    if len(v) < 2:
        return v
    big = 1 << 40
    return decode_video(encode_mp4(v, fps=8), fps=None, max_seconds=None, max_frames=None,
                        max_pixels=big, max_source_frames=big).frames_THWC


def _noise(v: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(v + rng.normal(0, sigma, v.shape), 0, 255).astype(np.uint8)


def _blur(v: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in v])


def _contrast(v: np.ndarray, c: float) -> np.ndarray:
    """Pull every pixel toward the clip's mean colour: a washed-out generated clip."""
    m = v.reshape(-1, 3).mean(0)
    return np.clip(m + (v - m) * c, 0, 255).astype(np.uint8)


DEGRADATIONS = {  # name -> (clip, rng) -> clip
    "native (64-160 px)": lambda v, r: v,
    "short side 64": lambda v, r: _short_side(v, 64),
    "short side 32": lambda v, r: _short_side(v, 32),
    "short side 24": lambda v, r: _short_side(v, 24),
    "short side 16": lambda v, r: _short_side(v, 16),
    "32x32 (aspect squashed)": lambda v, r: _resize(v, 32, 32),
    "long side 32": lambda v, r: _long_side(v, 32),
    "long side 24": lambda v, r: _long_side(v, 24),
    "short 32 + mp4": lambda v, r: _mp4(_short_side(v, 32)),
    "short 32 + noise 10": lambda v, r: _noise(_short_side(v, 32), 10, r),
    "short 32 + noise 25": lambda v, r: _noise(_short_side(v, 32), 25, r),
    "short 32 + blur 1px": lambda v, r: _blur(_short_side(v, 32), 1.0),
    "short 48 + blur + noise 15 + mp4": lambda v, r: _mp4(_noise(_blur(_short_side(v, 48), 1.0), 15, r)),
    "short 32 + brightness +25": lambda v, r: np.clip(_short_side(v, 32).astype(int) + 25, 0, 255).astype(np.uint8),
    "short 32 + contrast 0.7": lambda v, r: _contrast(_short_side(v, 32), 0.7),
}


def _report(samples, names) -> dict:
    rng = np.random.default_rng(0)
    return evaluate((DEGRADATIONS[name](v, rng), caption, name) for name in names for v, caption, _ in samples)


def _noise_report(samples) -> dict:
    """Pure-noise clips of each sample's shape, scored against its caption; and the real
    clips (short side 32) scored against the next sample's caption."""
    rng = np.random.default_rng(1)
    items = []
    for i, (v, caption, _) in enumerate(samples):
        shape = _short_side(v, 32).shape
        items.append((rng.integers(0, 256, shape, dtype=np.uint8), caption, "uniform noise"))
        items.append((np.clip(rng.normal(128, 40, shape), 0, 255).astype(np.uint8), caption, "gaussian noise"))
        items.append((_short_side(v, 32), samples[(i + 1) % len(samples)][1], "swapped caption"))
    return evaluate(items)


def _majority_rate(samples, attr: str) -> float:
    """The accuracy of always answering the most common value: the chance level to beat."""
    values = [parse_caption(c).get(attr) for v, c, _ in samples]
    values = [x for x, (v, _, _) in zip(values, samples) if x is not None
              and (attr not in ("direction", "speed", "motion") or len(v) > 1)]
    return Counter(values).most_common(1)[0][1] / len(values)


# --------------------------------------------------------------------------- captions


def test_parse_caption_inverts_every_synth_template():
    rng = random.Random(0)
    seen_kinds = Counter()
    for _ in range(200):
        v, caption, attrs = make_sample(rng, photo_fraction=0.35, min_side=16, max_side=24)
        got = parse_caption(caption)
        keys = {"shape": ["kind", "object", "colour", "background"], "digit": ["kind", "object", "colour", "background"],
                "photo": ["kind", "photo", "motion", "speed"]}[attrs["kind"]]
        if attrs["kind"] != "photo" and len(v) > 1:
            keys += ["direction", "speed"]
        assert got == {k: attrs[k] for k in keys}, caption
        seen_kinds[(attrs["kind"], len(v) > 1)] += 1
    assert len(seen_kinds) == 6  # every template (3 kinds, still and moving) was exercised


@pytest.mark.parametrize("caption", ["", "a dog on a beach", "a red square", "the digit 12 in red on a black background",
                                     "a circle in pink on a black background", "a photo of a dog"])
def test_parse_caption_unknown_is_empty(caption):
    assert parse_caption(caption) == {}
    assert score(np.zeros((1, 8, 8, 3), np.uint8), caption) == {}


def test_parse_caption_tolerates_case_and_spacing():
    assert parse_caption("  The digit 7 in RED  moving left fast on a dark  blue background ") == {
        "kind": "digit", "object": 7, "colour": "red", "background": "dark blue", "direction": "left", "speed": "fast"}


# --------------------------------------------------------------------------- reading pixels


def _square_clip(t: int, h: int, w: int, *, y0: int, x0: int, dy: int, dx: int, size: int = 10) -> np.ndarray:
    canvas = np.empty((h, w, 3), np.uint8)
    canvas[:] = BACKGROUNDS["gray"]
    canvas[y0:y0 + size, x0:x0 + size] = COLOURS["yellow"]
    return np.stack([np.roll(canvas, (dy * i, dx * i), axis=(0, 1)) for i in range(t)])


@pytest.mark.parametrize("dy,dx,direction", [(0, 3, "right"), (0, -3, "left"), (3, 0, "down"), (-3, 0, "up")])
def test_direction_unwraps_across_the_frame_edge(dy, dx, direction):
    # the square starts on the edge it moves toward, so it wraps within the first steps;
    # 3 px/frame of 32 is 1/11 of the frame: "fast"
    y0 = {1: 28, -1: 0, 0: 11}[int(np.sign(dy))]
    x0 = {1: 28, -1: 0, 0: 11}[int(np.sign(dx))]
    clip = _square_clip(6, 32, 32, y0=y0, x0=x0, dy=dy, dx=dx)
    got = read_attributes(clip)
    assert (got["direction"], got["speed"], got["object"], got["colour"], got["background"]) == (
        direction, "fast", "square", "yellow", "gray")


def test_a_wrapped_object_is_classified_whole():
    clip = np.roll(_square_clip(1, 32, 32, y0=11, x0=11, dy=0, dx=0), (16, 16), axis=(1, 2))
    assert clip[0, 0, 0].tolist() == list(COLOURS["yellow"])  # split over all four corners
    assert read_attributes(clip)["object"] == "square"


def test_read_attributes_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        read_attributes(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        read_attributes(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        read_attributes(np.zeros((0, 8, 8, 3), np.uint8))


def test_score_checks_motion_only_with_two_frames():
    clip = _square_clip(4, 32, 32, y0=5, x0=5, dy=0, dx=3)
    caption = "a square in yellow moving right fast on a gray background"
    assert score(clip, caption) == dict.fromkeys(["kind", "object", "colour", "background", "direction", "speed"], True)
    assert set(score(clip[:1], caption)) == {"kind", "object", "colour", "background"}
    wrong = score(clip, "a circle in red moving left slowly on a black background")
    assert not any(v for k, v in wrong.items() if k != "kind")


# --------------------------------------------------------------------------- validation on ground truth


def test_clean_ground_truth_at_demo_sizes_reads_back():
    samples = _ground_truth(40, 0, 0.0)
    report = _report(samples, ["short side 64", "short side 32", "32x32 (aspect squashed)"])
    for name, group in report["groups"].items():
        assert group["items"] == 40 and group["unscored"] == 0
        assert set(group["attributes"]) == {"kind", "object", "colour", "background", "direction", "speed"}
        for attr, a in group["attributes"].items():
            assert a["accuracy"] >= 0.95, (name, attr, a)
        assert group["attributes"]["direction"]["total"] >= 20  # the motion checks did run


def test_ground_truth_survives_mp4_noise_and_blur():
    samples = _ground_truth(40, 0, 0.0)
    report = _report(samples, ["short 32 + mp4", "short 32 + noise 10", "short 32 + blur 1px",
                               "short 32 + noise 25", "short 32 + contrast 0.7"])
    for name, group in report["groups"].items():
        for attr, a in group["attributes"].items():
            assert a["accuracy"] >= (0.75 if attr == "object" else 0.9), (name, attr, a)


def test_photo_camera_motion_reads_back():
    samples = [s for s in _ground_truth(80, 2, 1.0) if len(s[0]) > 1]
    report = _report(samples, ["short side 32"])
    motion = report["groups"]["short side 32"]["attributes"]["motion"]
    assert motion["total"] >= 40 and motion["accuracy"] >= 0.75, motion
    # rocket (a plain sky) and hubble_deep_field (a dark field) read as shape clips by design
    kinds = [r["scores"]["kind"] for r, (_, _, attrs) in zip(report["results"], samples)
             if attrs["photo"] not in ("rocket", "hubble_deep_field")]
    assert len(kinds) >= 30 and np.mean(kinds) >= 0.9
    assert {parse_caption(c)["motion"] for _, c, _ in samples} == set(MOTIONS)


def test_pure_noise_and_swapped_captions_score_near_chance():
    """The evaluator reads pixels: noise and the wrong caption must not pass."""
    samples = _ground_truth(40, 0, 0.0)
    report = _noise_report(samples)
    for name in ("uniform noise", "gaussian noise"):
        for attr, a in report["groups"][name]["attributes"].items():
            assert a["accuracy"] <= _majority_rate(samples, attr) + 0.1, (name, attr, a)
    swapped = report["groups"]["swapped caption"]
    assert swapped["accuracy"] < 0.5
    for attr in ("object", "colour", "direction"):
        a = swapped["attributes"][attr]
        assert a["accuracy"] <= _majority_rate(samples, attr) + 0.15, (attr, a)


@pytest.mark.slow
def test_validation_table():
    """The table in docs/evaluation.md (150 samples, 35% photos)."""
    samples = _ground_truth(150, 1, 0.35)
    report = _report(samples, list(DEGRADATIONS))
    print("\n" + format_report(report))
    noise = _noise_report(samples)
    print(format_report(noise))
    chance = {a: round(_majority_rate(samples, a), 2) for a in ("kind", "object", "colour", "background",
                                                                "direction", "speed", "motion")}
    print("majority-answer rate:", chance)
    clean = report["groups"]["short side 32"]["attributes"]
    assert all(clean[a]["accuracy"] >= 0.95 for a in ("object", "colour", "background", "direction", "speed"))


# --------------------------------------------------------------------------- a generator's folder


def _write_manifest(root, items):
    (root / "manifest.json").write_text(json.dumps({"items": items}))


def test_evaluate_dir_reads_mp4_and_png_and_writes_eval_json(tmp_path):
    moving = _square_clip(4, 32, 48, y0=4, x0=4, dy=0, dx=4)
    still = _square_clip(1, 32, 32, y0=8, x0=8, dy=0, dx=0)
    (tmp_path / "a.mp4").write_bytes(encode_mp4(moving, fps=8))
    (tmp_path / "a.png").write_bytes(encode_image(moving[0]))  # a contact strip: must not be read
    (tmp_path / "b.png").write_bytes(encode_image(still[0]))
    _write_manifest(tmp_path, [
        {"prompt": "a square in yellow moving right fast on a gray background", "frames": 4, "height": 32,
         "width": 48, "seen": True, "files": {"mp4": "a.mp4", "gif": "a.gif", "png": "a.png"}},
        {"prompt": "a square in red on a gray background", "frames": 1, "height": 32, "width": 32,
         "seen": False, "files": {"png": "b.png"}},
    ])
    report = evaluate_dir(tmp_path)
    trained, unseen = report["groups"]["trained"], report["groups"]["unseen"]
    assert trained["accuracy"] == 1.0 and trained["attributes"]["direction"]["total"] == 1
    assert unseen["attributes"]["colour"] == {"correct": 0, "total": 1, "accuracy": 0.0}
    assert unseen["attributes"]["object"]["accuracy"] == 1.0
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["groups"] == report["groups"]
    assert saved["results"][0]["read"]["direction"] == "right" and saved["results"][1]["read"]["colour"] == "yellow"
    table = format_report(report)
    assert "trained" in table and "unseen" in table and "direction" in table


def test_evaluate_dir_groups_by_tag_without_seen(tmp_path):
    still = _square_clip(1, 32, 32, y0=8, x0=8, dy=0, dx=0)
    (tmp_path / "b.png").write_bytes(encode_image(still[0]))
    item = {"prompt": "a square in yellow on a gray background", "frames": 1, "height": 32, "width": 32,
            "files": {"png": "b.png", "gif": "b.gif"}}
    _write_manifest(tmp_path, [item | {"tag": "trained size"}, item | {"tag": "unseen aspect 3:1"}, item])
    report = evaluate_dir(tmp_path, write=False)
    assert {g: v["items"] for g, v in report["groups"].items()} == {"trained": 1, "unseen": 1, "generated": 1}
    assert all(v["accuracy"] == 1.0 for v in report["groups"].values())
    assert not (tmp_path / "eval.json").exists()


def test_evaluate_dir_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        evaluate_dir(tmp_path)
    _write_manifest(tmp_path, [{"prompt": "a photo of a cat", "frames": 3, "height": 32, "width": 32,
                                "seen": True, "files": {"mp4": "gone.mp4", "png": "gone.png"}}])
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        evaluate_dir(tmp_path)
    _write_manifest(tmp_path, [{"prompt": "a photo of a cat", "frames": 3, "files": {"png": "x.png"}}])
    with pytest.raises(ValueError, match="no 'mp4' file"):
        evaluate_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="not a generator manifest"):
        evaluate_dir(tmp_path)
