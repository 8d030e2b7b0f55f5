"""The embedded synthetic dataset: captioned clips whose attributes are known.

Two families, at varied durations (1-frame images up to 48 frames), sizes (64-256 px
sides) and aspect ratios (9:16 ... 21:9):
  shapes  a coloured circle/square/triangle or an sklearn digit (load_digits, 8x8
          upscaled) moving left/right/up/down, slow or fast, on a plain background;
          the object wraps around the frame edges (np.roll), so the direction stays
          unambiguous for any clip length;
  photos  a camera pan or zoom over an image bundled with scikit-image (astronaut,
          coffee, chelsea, rocket, ...).
Every sample's json carries the attributes (`"attrs"`) beside the caption, so an
evaluator can check a generated video against what its caption asked for.

What a seed promises: the same seed gives the same samples in the same order, under the
same keys: the same frames before encoding, the same captions and attributes (json bytes
included). It does not promise the same mp4 bytes. Those are whatever the video encoder
writes, and x264 does not promise identical bytes (or, after its rate control, identical
decoded pixels) for identical frames from one run to the next. PNG images are lossless;
JPEG and mp4 decode to within a few grey levels of the frames that went in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection
from functools import cache
from pathlib import Path

import numpy as np

from .media_encode import encode_image, encode_mp4
from .shards import ShardWriter, prepare_out_dir, print_summary

FPS = 8
FRAMES = (1, 1, 8, 16, 24, 32, 48)  # images are one-frame videos
ASPECTS = {"9:16": 9 / 16, "3:4": 3 / 4, "1:1": 1.0, "4:3": 4 / 3, "16:9": 16 / 9, "21:9": 21 / 9}
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230),
           "yellow": (235, 210, 40), "white": (245, 245, 245), "purple": (150, 60, 200)}
BACKGROUNDS = {"black": (15, 15, 15), "gray": (128, 128, 128), "dark blue": (20, 30, 70)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SPEEDS = {"slow": 1 / 48, "fast": 1 / 12}  # fraction of the frame per frame
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel")
PHOTO_NAMES = {"chelsea": "a cat", "astronaut": "an astronaut", "coffee": "a cup of coffee", "rocket": "a rocket",
               "immunohistochemistry": "a microscope slide", "hubble_deep_field": "a field of galaxies",
               "colorwheel": "a colour wheel"}
MOTIONS = ("pan left", "pan right", "pan up", "pan down", "zoom in", "zoom out")


def synth(out_dir: str | Path, *, num_samples: int = 200, seed: int = 0, shard_size: int = 64,
          photo_fraction: float = 0.35, max_side: int = 256, min_side: int = 64,
          digit_fraction: float = 0.3, object_scale: tuple[float, float] = (0.3, 0.45),
          exclude: Collection[str] = (), overwrite: bool = False, progress: bool = True) -> dict:
    """Write `num_samples` synthetic samples as webdataset shards of `shard_size` samples.

    digit_fraction: share of digits among the shape clips; object_scale: (lo, hi) object side
    as a fraction of the frame's short side. exclude: captions never written (a sample drawn
    with one is drawn again), e.g. held-out evaluation prompts. The defaults write the same
    samples as before these knobs existed.
    overwrite: replace the shards already in out_dir (refused otherwise, shards.prepare_out_dir).
    Returns {"written", "shards", "bytes", "skipped", "kinds"} and prints it.
    """
    import PIL  # noqa: F401 - the [data] extra; when it is missing, fail here, before writing anything
    import skimage.data  # noqa: F401
    import sklearn.datasets  # noqa: F401
    from tqdm import tqdm

    if num_samples < 1 or shard_size < 1:
        raise ValueError(f"num_samples and shard_size must be >= 1, got {num_samples}, {shard_size}")
    if not 16 <= min_side <= max_side:
        raise ValueError(f"need 16 <= min_side <= max_side, got {min_side}, {max_side}")
    if not 0.0 <= photo_fraction <= 1.0:
        raise ValueError(f"photo_fraction must be in [0, 1], got {photo_fraction}")
    if not 0 <= digit_fraction <= 1 or not 0 < object_scale[0] <= object_scale[1] <= 1:
        raise ValueError(f"need digit_fraction in [0, 1] and 0 < object_scale lo <= hi <= 1, "
                         f"got {digit_fraction}, {tuple(object_scale)}")
    rng = random.Random(seed)
    exclude = set(exclude)
    kinds: dict[str, int] = {}
    with ShardWriter(prepare_out_dir(out_dir, overwrite=overwrite), max_count=shard_size) as writer:
        for i in tqdm(range(num_samples), desc="synth", unit="sample", disable=not progress):
            for _ in range(1001):  # a held-out caption: draw again (same rng, so still seeded)
                frames_THWC, caption, attrs = make_sample(rng, photo_fraction=photo_fraction, min_side=min_side,
                                                          max_side=max_side, digit_fraction=digit_fraction,
                                                          object_scale=object_scale)
                if caption not in exclude:
                    break
            else:
                raise ValueError(f"1001 draws in a row gave excluded captions, last {caption!r}")
            t, h, w = frames_THWC.shape[:3]
            if t == 1:
                ext = "jpg" if attrs["kind"] == "photo" else "png"
                media = encode_image(frames_THWC[0], fmt=ext)
            else:
                ext, media = "mp4", encode_mp4(frames_THWC, fps=FPS)
            meta = {"caption": caption, "attrs": attrs,
                    "source": {"fps": float(FPS if t > 1 else 0), "frames": t, "width": w, "height": h,
                               "file": f"synth/{i:06d}.{ext}"}}
            writer.write(f"{i:06d}", {ext: media, "json": json.dumps(meta).encode()})
            kinds[attrs["kind"]] = kinds.get(attrs["kind"], 0) + 1
    summary = {"written": writer.samples, "shards": [str(p) for p in writer.paths],
               "bytes": writer.bytes, "skipped": {}, "kinds": kinds}
    print_summary("synth", summary)
    return summary


def make_sample(rng: random.Random, *, photo_fraction: float = 0.35, min_side: int = 64,
                max_side: int = 256, digit_fraction: float = 0.3,
                object_scale: tuple[float, float] = (0.3, 0.45)) -> tuple[np.ndarray, str, dict]:
    """One sample: (uint8 [T, H, W, 3], caption, attrs)."""
    frames = rng.choice(FRAMES)
    aspect_name = rng.choice(list(ASPECTS))
    h, w = _size(ASPECTS[aspect_name], rng.randrange(min_side, max_side + 1), min_side)
    base = {"frames": frames, "height": h, "width": w, "aspect": aspect_name, "fps": FPS if frames > 1 else 0}
    if rng.random() < photo_fraction:
        video, caption, attrs = photo_clip(rng, frames, h, w)
    else:
        video, caption, attrs = shape_clip(rng, frames, h, w, digit_fraction=digit_fraction, object_scale=object_scale)
    return video, caption, base | attrs


def _size(aspect: float, long_side: int, min_side: int) -> tuple[int, int]:
    """(h, w) with the given w/h, long side ~long_side, both even and >= min_side (rounded to 8)."""
    r8 = lambda x: max(8 * round(x / 8), 8 * -(-min_side // 8))  # noqa: E731
    return (r8(long_side / aspect), r8(long_side)) if aspect >= 1 else (r8(long_side), r8(long_side * aspect))


# --------------------------------------------------------------------------- shapes and digits


def shape_clip(rng: random.Random, frames: int, h: int, w: int, *, digit_fraction: float = 0.3,
               object_scale: tuple[float, float] = (0.3, 0.45)) -> tuple[np.ndarray, str, dict]:
    """A coloured shape or digit moving on a plain background: (uint8 [T, H, W, 3], caption, attrs)."""
    colour, bg = rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
    digit = rng.random() < digit_fraction
    obj = rng.randrange(10) if digit else rng.choice(SHAPES)
    size = max(8, int(min(h, w) * rng.uniform(*object_scale)))
    y0, x0 = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
    attrs = {"kind": "digit" if digit else "shape", "object": obj, "colour": colour, "background": bg,
             "start_yx": [y0 + size // 2, x0 + size // 2]}
    if frames == 1:
        return render_shape(obj, colour, bg, frames=1, height=h, width=w, size=size, top_left=(y0, x0)), \
            shape_caption(obj, colour, bg), attrs
    direction, speed = rng.choice(list(DIRECTIONS)), rng.choice(list(SPEEDS))
    video = render_shape(obj, colour, bg, frames=frames, height=h, width=w, size=size, top_left=(y0, x0),
                         direction=direction, speed=speed)
    caption = shape_caption(obj, colour, bg, direction=direction, speed=speed)
    step = SPEEDS[speed] * (h if DIRECTIONS[direction][0] else w)
    return video, caption, attrs | {"direction": direction, "speed": speed, "pixels_per_frame": step}


def render_shape(obj: str | int, colour: str, background: str, *, frames: int, height: int, width: int,
                 size: int, top_left: tuple[int, int], direction: str | None = None,
                 speed: str | None = None) -> np.ndarray:
    """uint8 [T, H, W, 3]: a `size`-pixel shape or digit at `top_left` on a plain background,
    moving `direction` at `speed` (a fraction of the frame per frame) and wrapping around
    the edges; frames == 1 (or no direction) draws a still."""
    mask = digit_mask(obj, size) if isinstance(obj, int) else shape_mask(obj, size)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUNDS[background]
    y0, x0 = top_left
    canvas[y0:y0 + size, x0:x0 + size][mask] = COLOURS[colour]
    if frames == 1 or direction is None:
        return np.repeat(canvas[None], frames, axis=0)
    dy, dx = DIRECTIONS[direction]
    step = SPEEDS[speed] * (height if dy else width)  # pixels per frame
    return np.stack([np.roll(canvas, (round(dy * step * t), round(dx * step * t)), axis=(0, 1))
                     for t in range(frames)])


def shape_caption(obj: str | int, colour: str, background: str, *, direction: str | None = None,
                  speed: str | None = None) -> str:
    """The caption of a shape (circle/square/triangle) or digit (0-9) clip; no motion for an image."""
    name = f"the digit {obj}" if isinstance(obj, int) else f"a {obj}"
    if direction is None:
        return f"{name} in {colour} on a {background} background"
    return f"{name} in {colour} moving {direction} {'slowly' if speed == 'slow' else 'fast'} on a {background} background"


def shape_mask(shape: str, n: int) -> np.ndarray:
    """bool [n, n]: a circle, square or triangle (apex up) filling the box, as synth draws it."""
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    if shape == "circle":
        return (yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= (n / 2) ** 2
    if shape == "square":
        return np.ones((n, n), bool)
    return (yy >= 0) & (np.abs(xx - n / 2) <= yy / 2)  # apex up, base at the bottom


def digit_mask(digit: int, n: int) -> np.ndarray:
    """bool [n, n]: the first sklearn 8x8 image of `digit`, bilinear to n x n, thresholded."""
    from PIL import Image

    img = _digit_images()[digit]  # 8x8 in [0, 16]
    up = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((n, n), Image.BILINEAR)
    return np.asarray(up) >= 96


@cache
def _digit_images() -> dict[int, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    return {k: d.images[int(np.flatnonzero(d.target == k)[0])] for k in range(10)}


# --------------------------------------------------------------------------- photo pans and zooms


@cache
def _photo_array(name: str) -> np.ndarray:
    import skimage.data  # the images ship in the wheel; these names need no download

    img = getattr(skimage.data, name)()
    return img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)


def photo_clip(rng: random.Random, frames: int, h: int, w: int) -> tuple[np.ndarray, str, dict]:
    """A camera pan or zoom over a bundled photo: (uint8 [T, H, W, 3], caption, attrs)."""
    from PIL import Image

    name = rng.choice(PHOTOS)
    img = _photo_array(name)
    ih, iw = img.shape[:2]
    # the largest crop of the output's aspect, then the camera moves inside it
    ch, cw = (ih, ih * w / h) if ih * w / h <= iw else (iw * h / w, iw)
    motion = rng.choice(MOTIONS) if frames > 1 else "still"
    speed = rng.choice(list(SPEEDS)) if frames > 1 else "still"
    travel = min(1.0, (0.6 if speed == "fast" else 0.2))  # of the free margin / zoom range
    pil = Image.fromarray(img)
    out = []
    for t in range(frames):
        a = travel * t / max(frames - 1, 1)
        scale = {"zoom in": 1 - 0.5 * a, "zoom out": 0.5 + 0.5 * a}.get(motion, 0.7)
        bh, bw = ch * scale, cw * scale
        fy, fx = 0.5, 0.5
        if motion.startswith("pan"):
            s = 0.5 - travel / 2 + a  # moves the window across the margin
            fy, fx = {"pan left": (0.5, 1 - s), "pan right": (0.5, s), "pan up": (1 - s, 0.5),
                      "pan down": (s, 0.5)}[motion]
        top, left = fy * (ih - bh), fx * (iw - bw)
        box = (left, top, left + bw, top + bh)
        out.append(np.asarray(pil.resize((w, h), Image.BILINEAR, box=box)))
    subject = PHOTO_NAMES[name]
    caption = (f"a photo of {subject}" if frames == 1
               else f"a {'slow' if speed == 'slow' else 'fast'} camera {motion} over a photo of {subject}")
    return np.stack(out), caption, {"kind": "photo", "photo": name, "motion": motion, "speed": speed}
