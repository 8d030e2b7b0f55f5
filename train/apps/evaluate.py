"""Read a clip's attributes back from its pixels and score them against its synthetic caption.

For the embedded dataset's captions only (train/data/synth.py). No learned model, so a score
measures the generator, not a second network:
  background  per-channel median of every pixel (the plain background covers > 75% of a
              shape clip), nearest BACKGROUNDS entry; none on a clip read as a photo;
  colour      median of the pixels far from the background (their farther half, so blurred
              edges do not pull it), nearest COLOURS entry;
  object      the object mask (nearer the object's colour than the background's; a 3x3
              majority vote on grainy clips), its widest empty gap of rows/columns rolled to
              the edge (synth wraps objects with np.roll), cropped to its box and matched to
              13 templates (3 shapes, the same sklearn 8x8 digits synth draws) by mean
              absolute difference on a 16x16 grid plus the box's aspect;
  kind        "photo" when the clip has no plain palette background with one flat object
              on it (see _is_photo), else the template's kind (shape or digit);
  direction   the mask's circular centroid per frame; frame-to-frame angle differences
              wrapped to (-pi, pi] unwrap np.roll's wrap-around (the circular mean is the
              standard estimator for periodic positions, e.g. Mardia & Jupp, "Directional
              Statistics", ch. 2);
  speed       that displacement as a fraction of the frame side, against the geometric mean
              of synth's two speeds;
  motion      photos: the camera's pan or zoom, as the candidate warp (zoom about the
              centre, or shift) of the first frame that best predicts the last.
docs/evaluation.md gives the accuracy of each reading on ground truth and on noise.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np

from patchpack.train.data.synth import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    MOTIONS,
    PHOTO_NAMES,
    SHAPES,
    SPEEDS,
    digit_mask,
    shape_mask,
)

ATTRIBUTES = ("kind", "object", "colour", "background", "direction", "speed", "motion")
MOTION_ATTRIBUTES = ("direction", "speed", "motion")  # need >= 2 frames
TEMPLATE_SIDE = 16  # masks are compared on this grid
ASPECT_WEIGHT = 0.15  # per unit of |log(h/w)| difference; a digit 1 is tall, a circle is not
# a generated clip's background may be off its palette colour by a brightness shift of ~45
# per channel before it counts as "no palette background"; rocket's sky (~50 away) then
# passes as a plain background, a price paid on photo captions only
BACKGROUND_SLACK = 80.0
NOISY = 25.0  # median background distance from the median colour; ~ sigma 15 per channel
FAST_THRESHOLD = math.sqrt(SPEEDS["slow"] * SPEEDS["fast"])  # fraction of the side per frame

# --------------------------------------------------------------------------- captions

_alt = lambda names: "|".join(re.escape(n) for n in names)  # noqa: E731
_SHAPE_RE = re.compile(
    rf"(?:the digit (?P<digit>[0-9])|a (?P<shape>{_alt(SHAPES)})) in (?P<colour>{_alt(COLOURS)})"
    rf"(?: moving (?P<direction>{_alt(DIRECTIONS)}) (?P<speed>slowly|fast))?"
    rf" on a (?P<background>{_alt(BACKGROUNDS)}) background")
_SUBJECTS = {subject: name for name, subject in PHOTO_NAMES.items()}
_PHOTO_RE = re.compile(
    rf"(?:a (?P<speed>slow|fast) camera (?P<motion>{_alt(MOTIONS)}) over )?"
    rf"a photo of (?P<subject>{_alt(_SUBJECTS)})")


def parse_caption(caption: str) -> dict:
    """The attributes a synth caption asks for, named as in synth's `attrs`; {} if not a synth caption.

    Shapes/digits: kind, object (shape name or digit int), colour, background, and when moving
    direction and speed. Photos: kind, photo, motion and speed ("still" for a one-frame photo).
    """
    text = " ".join(caption.strip().lower().split())
    if m := _SHAPE_RE.fullmatch(text):
        digit = m["digit"] is not None
        out = {"kind": "digit" if digit else "shape", "object": int(m["digit"]) if digit else m["shape"],
               "colour": m["colour"], "background": m["background"]}
        if m["direction"]:
            out |= {"direction": m["direction"], "speed": "slow" if m["speed"] == "slowly" else "fast"}
        return out
    if m := _PHOTO_RE.fullmatch(text):
        return {"kind": "photo", "photo": _SUBJECTS[m["subject"]], "motion": m["motion"] or "still",
                "speed": m["speed"] or "still"}
    return {}


# --------------------------------------------------------------------------- reading pixels


def read_attributes(frames_THWC: np.ndarray) -> dict:
    """uint8 [T, H, W, 3] -> the attributes its pixels show (keys of ATTRIBUTES).

    A key is None when it cannot be read: no background, colour or object on a photo (or
    noise), no object found, no motion from one frame.
    """
    if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3 or frames_THWC.dtype != np.uint8:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames_THWC.dtype} {frames_THWC.shape}")
    t, h, w, _ = frames_THWC.shape
    if min(t, h, w) < 1:
        raise ValueError(f"empty clip: shape {frames_THWC.shape}")
    x = frames_THWC.astype(np.float32)
    bg_rgb = np.median(x.reshape(-1, 3), axis=0)
    out = dict.fromkeys(ATTRIBUTES)
    dist = np.linalg.norm(x - bg_rgb, axis=-1)  # T, H, W
    if t > 1:  # read whatever the clip is: a caption's kind must not decide what is looked for
        out["motion"] = _camera_motion(x)
    far = dist[dist > 60]  # 60: under half the closest colour/background gap (~127, green/gray)
    core = dist >= np.median(far) if far.size >= 4 else None  # the object's inner half, not its blurred edge
    obj_rgb = np.median(x[core], axis=0) if core is not None else bg_rgb
    if _is_photo(x, bg_rgb, obj_rgb):  # no plain background to name (noise lands here too)
        out["kind"] = "photo"
        return out
    out["background"] = _nearest(BACKGROUNDS, bg_rgb)
    if core is None:
        return out
    out["colour"] = _nearest(COLOURS, obj_rgb)
    # a pixel belongs to the object if nearer its colour than the background (along their line)
    axis = obj_rgb - bg_rgb
    mask = ((x - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6) > 0.5  # T, H, W
    if np.median(dist[dist < 60]) > NOISY:  # grainy: a 3x3 majority vote drops stray pixels
        from scipy.ndimage import uniform_filter

        mask = uniform_filter(mask.astype(np.float32), size=(1, 3, 3), mode="wrap") > 0.5
    out["object"] = _classify(mask)
    out["kind"] = "digit" if isinstance(out["object"], int) else "shape"
    if t > 1:
        vy, vx = _velocity(mask)
        if abs(vy) / h > abs(vx) / w:
            out["direction"], frac = ("down" if vy > 0 else "up"), abs(vy) / h
        else:
            out["direction"], frac = ("right" if vx > 0 else "left"), abs(vx) / w
        out["speed"] = "fast" if frac > FAST_THRESHOLD else "slow"
    return out


def _is_photo(x_THWC: np.ndarray, bg_rgb: np.ndarray, obj_rgb: np.ndarray) -> bool:
    """A plain palette background with one flat object, or not?

    Three signs of a photo, any one suffices: the median colour covers under half the
    pixels, it is far from every palette background (> BACKGROUND_SLACK), or over 10% of the
    pixels lie off the background-object colour line (a shape clip's blurred edges lie on
    it). hubble_deep_field (a dark field, small blobs) passes as black, and rocket (a plain
    sky ~50 from dark blue) as dark blue: the slack is kept wide for generated clips.
    """
    from scipy.ndimage import uniform_filter

    # on 3x3 means: pixel noise (sigma 25 -> 8) must not look like texture
    x_THWC = uniform_filter(x_THWC, size=(1, 3, 3, 1), mode="wrap")
    if (np.linalg.norm(x_THWC - bg_rgb, axis=-1) < 40).mean() < 0.5:
        return True
    if min(float(np.linalg.norm(bg_rgb - np.asarray(c, np.float32))) for c in BACKGROUNDS.values()) > BACKGROUND_SLACK:
        return True
    axis = obj_rgb - bg_rgb
    u = np.clip(((x_THWC - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6), 0, 1)
    off = np.linalg.norm(x_THWC - bg_rgb - u[..., None] * axis, axis=-1)
    return bool((off > 40).mean() > 0.1)


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    return min(palette, key=lambda k: float(np.sum((np.asarray(palette[k], np.float32) - rgb) ** 2)))


def _unwrap_crop(mask_HW: np.ndarray) -> np.ndarray | None:
    """Roll the widest empty gap to the edges (undoes np.roll's wrap), crop to the object's box."""
    rows, cols = mask_HW.sum(1), mask_HW.sum(0)
    if rows.sum() == 0:
        return None
    m = np.roll(mask_HW, (-_after_gap(rows), -_after_gap(cols)), axis=(0, 1))
    rows, cols = m.sum(1), m.sum(0)
    ys, xs = np.flatnonzero(rows > 0.1 * rows.max()), np.flatnonzero(cols > 0.1 * cols.max())
    return m[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]


def _after_gap(counts: np.ndarray) -> int:
    """Index of the first line after the longest cyclic run of (nearly) empty lines; 0 if none.

    A line is empty if it holds under 10% of the fullest line's pixels (stray noise). The
    longest run, not the emptiest line: a digit can have an empty line inside it.
    """
    empty = counts <= 0.1 * counts.max()
    if not empty.any() or empty.all():
        return 0
    start = int(np.flatnonzero(~empty)[0])  # rotate so the scan starts on a full line
    best_len, best_end, run = 0, 0, 0
    for i in range(len(counts)):
        j = (start + i) % len(counts)
        run = run + 1 if empty[j] else 0
        if run > best_len:
            best_len, best_end = run, j
    return (best_end + 1) % len(counts)


def _resample(mask_hw: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(mask_hw.astype(np.float32), mode="F")
    return np.asarray(im.resize((TEMPLATE_SIDE, TEMPLATE_SIDE), Image.BOX))  # area fractions


@cache
def _templates() -> dict[str | int, tuple[np.ndarray, float]]:
    """name -> (16x16 area-fraction mask of its box, log(h/w) of its box), drawn by synth's own masks."""
    n = 96
    masks: dict[str | int, np.ndarray] = {s: shape_mask(s, n) for s in SHAPES}
    masks.update({k: digit_mask(k, n) for k in range(10)})
    out = {}
    for name, m in masks.items():
        box = _unwrap_crop(m)
        out[name] = (_resample(box), math.log(box.shape[0] / box.shape[1]))
    return out


def _classify(mask_THW: np.ndarray) -> str | int | None:
    """The template nearest the object's box, summed over frames."""
    cost = dict.fromkeys(_templates(), 0.0)
    seen = False
    for mask_HW in mask_THW:
        box = _unwrap_crop(mask_HW)
        if box is None:
            continue
        seen = True
        grid, aspect = _resample(box), math.log(box.shape[0] / box.shape[1])
        for name, (tgrid, taspect) in _templates().items():
            cost[name] += float(np.abs(grid - tgrid).mean()) + ASPECT_WEIGHT * abs(aspect - taspect)
    return min(cost, key=cost.get) if seen else None


def _velocity(mask_THW: np.ndarray) -> tuple[float, float]:
    """Mean (dy, dx) pixels per frame of the mask's circular centroid, wrap-around unwrapped."""
    t, h, w = mask_THW.shape
    m = mask_THW.astype(np.float64)
    ey = np.exp(2j * np.pi * np.arange(h) / h)
    ex = np.exp(2j * np.pi * np.arange(w) / w)
    ang_y = np.angle(np.einsum("thw,h->t", m, ey))  # T; angle of an all-zero frame is 0
    ang_x = np.angle(np.einsum("thw,w->t", m, ex))
    wrap = lambda a: (np.diff(a) + np.pi) % (2 * np.pi) - np.pi  # noqa: E731
    return float(wrap(ang_y).mean() * h / (2 * np.pi)), float(wrap(ang_x).mean() * w / (2 * np.pi))


def _camera_motion(x_THWC: np.ndarray) -> str:
    """Pan or zoom between the first and last frames: the candidate warp of the first that best
    predicts the last, compared where the warp stays inside the first frame.

    Candidates cover synth's camera moves at both speeds: content magnified by 1/0.9 ... 1/0.7
    (zoom in), 0.6 ... 0.83 (zoom out), shifted by 4 ... 32% of the side (pans, whose content
    moves against the camera).
    """
    from PIL import Image

    a = Image.fromarray(x_THWC[0].mean(-1), mode="F")
    inside = Image.fromarray(np.ones(a.size[::-1], np.float32), mode="F")
    b = x_THWC[-1].mean(-1)
    h, w = b.shape
    cy, cx = h / 2, w / 2
    best, best_err = "still", math.inf
    candidates = [("zoom in" if g > 1 else "zoom out", g, 0.0, 0.0) for g in _ZOOMS]
    for f in _SHIFTS:  # content displacement as a fraction of the side
        candidates += [("pan left" if f > 0 else "pan right", 1.0, 0.0, f * w),
                       ("pan up" if f > 0 else "pan down", 1.0, f * h, 0.0)]
    for name, g, dy, dx in candidates:
        # output pixel p shows input pixel c + (p - c) / g - d
        coeffs = (1 / g, 0.0, cx - cx / g - dx, 0.0, 1 / g, cy - cy / g - dy)
        warped = np.asarray(a.transform((w, h), Image.AFFINE, coeffs, Image.BILINEAR))
        # compared only where the warp sampled inside the first frame
        valid = np.asarray(inside.transform((w, h), Image.AFFINE, coeffs, Image.BILINEAR)) > 0.999
        if valid.sum() < 4:
            continue
        err = float(np.mean((warped[valid] - b[valid]) ** 2))
        if err < best_err:
            best, best_err = name, err
    return best


_ZOOMS = (1 / 0.9, 1 / 0.8, 1 / 0.7, 0.6, 0.7, 0.83, 0.9)
_SHIFTS = tuple(s * f for s in (1, -1) for f in (0.04, 0.08, 0.12, 0.18, 0.25, 0.32))


# --------------------------------------------------------------------------- scoring


def score(frames_THWC: np.ndarray, caption: str) -> dict[str, bool]:
    """Per attribute the caption asks for and the clip can show: does the clip show it?

    Motion attributes need >= 2 frames; a photo's subject and speed are not read. An
    attribute that cannot be read from the pixels (no object found) counts as wrong.
    """
    return _score(frames_THWC, caption)[0]


def _score(frames_THWC: np.ndarray, caption: str) -> tuple[dict[str, bool], dict]:
    want = parse_caption(caption)
    if not want:
        return {}, {}
    got = read_attributes(frames_THWC)
    t = frames_THWC.shape[0]
    out = {}
    for attr in ATTRIBUTES:
        if attr not in want or (attr in MOTION_ATTRIBUTES and t < 2):
            continue
        if want["kind"] == "photo" and attr == "speed":
            continue
        out[attr] = got[attr] == want[attr]
    return out, got


def evaluate(items: Iterable[tuple[np.ndarray, str, str]]) -> dict:
    """items: (uint8 [T, H, W, 3], caption, group) -> accuracy per attribute per group.

    {"groups": {group: {"items", "unscored", "attributes": {attr: {"correct", "total",
    "accuracy"}}, "accuracy"}}, "results": [{"group", "caption", "frames", "scores", "read"}]};
    a group's "accuracy" pools every checked attribute of its items; "read" is what
    `read_attributes` saw, for finding out why an item failed.
    """
    groups: dict[str, dict] = {}
    results = []
    for frames_THWC, caption, group in items:
        s, got = _score(frames_THWC, caption)
        results.append({"group": group, "caption": caption, "frames": int(frames_THWC.shape[0]), "scores": s,
                        "read": {k: v for k, v in got.items() if v is not None}})
        g = groups.setdefault(group, {"items": 0, "unscored": 0, "attributes": {}})
        g["items"] += 1
        g["unscored"] += not s
        for attr, ok in s.items():
            a = g["attributes"].setdefault(attr, {"correct": 0, "total": 0})
            a["correct"] += int(ok)
            a["total"] += 1
    for g in groups.values():
        g["attributes"] = {k: g["attributes"][k] for k in ATTRIBUTES if k in g["attributes"]}
        for a in g["attributes"].values():
            a["accuracy"] = a["correct"] / a["total"]
        correct = sum(a["correct"] for a in g["attributes"].values())
        total = sum(a["total"] for a in g["attributes"].values())
        g["accuracy"] = correct / total if total else None
    return {"groups": groups, "results": results}


def format_report(report: dict) -> str:
    """A fixed-width table: one row per group, one column per attribute (correct/total and %)."""
    attrs = [a for a in ATTRIBUTES if any(a in g["attributes"] for g in report["groups"].values())]
    cell = lambda c, t: f"{c}/{t} {100 * c / t:.0f}%" if t else "-"  # noqa: E731
    head = ["group", "items"] + attrs + ["all"]
    rows = []
    for name, g in report["groups"].items():
        cols = [cell(g["attributes"][a]["correct"], g["attributes"][a]["total"]) if a in g["attributes"]
                else "-" for a in attrs]
        c = sum(v["correct"] for v in g["attributes"].values())
        t = sum(v["total"] for v in g["attributes"].values())
        rows.append([name, str(g["items"])] + cols + [cell(c, t)])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(v.ljust(wd) if i == 0 else v.rjust(wd) for i, (v, wd) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(r) for r in rows])


# --------------------------------------------------------------------------- a generator's output folder


def evaluate_dir(path: str | Path, *, write: bool = True) -> dict:
    """Score every item of `path/manifest.json`; writes `path/eval.json` unless write=False.

    Manifest: {"items": [{"prompt", "frames", "height", "width", "seen", "files": {"mp4", "png", ...}}]}
    with file names relative to `path`. T > 1 reads the mp4, T == 1 the png. Groups are
    "trained" and "unseen", from "seen" or else a "tag" starting with either word; "generated"
    when an item has neither.
    """
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no manifest: {manifest_path}")
    try:
        items = json.loads(manifest_path.read_text())["items"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{manifest_path}: not a generator manifest ({type(e).__name__}: {e})") from None
    loaded = []
    for i, item in enumerate(items):
        try:
            prompt, t, files = item["prompt"], int(item["frames"]), item["files"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{manifest_path}: item {i} lacks prompt/frames/files ({e})") from None
        frames = _load_item(root, files, t, where=f"{manifest_path} item {i}")
        loaded.append((frames, prompt, _group(item)))
    report = evaluate(loaded)
    if write:
        (root / "eval.json").write_text(json.dumps(report, indent=1))
    return report


def _group(item: dict) -> str:
    """"trained"/"unseen" from the item's "seen" flag, else from a tag that starts with either
    word (as the demo writes them), else "generated" (a plain `patchpack generate` folder)."""
    if "seen" in item:
        return "trained" if item["seen"] else "unseen"
    tag = str(item.get("tag", "")).lower()
    return next((g for g in ("trained", "unseen") if tag.startswith(g)), "generated")


def _load_item(root: Path, files: dict, t: int, *, where: str) -> np.ndarray:
    from patchpack.train.data.media_decode import decode_image, decode_video

    key = "mp4" if t > 1 else "png"
    if key not in files:
        raise ValueError(f"{where}: {t} frame(s) but no {key!r} file listed")
    file = root / files[key]
    if not file.is_file():
        raise FileNotFoundError(f"{where}: missing {key} file {file}")
    data = file.read_bytes()
    big = 1 << 40
    if key == "png":
        return decode_image(data, max_pixels=big).frames_THWC
    return decode_video(data, fps=None, max_seconds=None, max_frames=None, max_pixels=big,
                        max_source_frames=big).frames_THWC
