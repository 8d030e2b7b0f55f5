"""Do generated frames continue the given ones? Measured from pixels on synthetic shape captions.

For a clip whose frames are partly given (image-to-video, extension), against the frame
given next to the generated ones (the anchor):
  background  the background read on the generated frames is the one read on the given frames;
  colour      so is the object's colour (both read by evaluate.read_attributes);
  direction   the motion read over the anchor and the generated frames is the captioned direction;
  jump        where the object is in the first generated frame against where the anchor and the
              caption put it: the circular centroid of the object mask (pixels over 60 from the
              anchor's background, as evaluate.py separates them) is compared to the anchor's
              moved by the caption's speed (synth: a fraction of the side per frame) for the
              frames between them, as a fraction of the frame's side; `continues` when under
              JUMP_OK. A held first patch (image-to-video, pt > 1) shows frame 0 throughout,
              so its anchor's time is 0.
The same measures on a clip whose given frames were pasted into a text-only sample of the
same prompt give the baseline: what agreement costs nothing to get.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from patchpack.train.data.synth import DIRECTIONS, SPEEDS

from .evaluate import parse_caption, read_attributes

__all__ = ["JUMP_OK", "continuation", "summarise_continuation"]

JUMP_OK = 0.1  # of the side: a fast object moves 1/12 of the side per frame
MEASURES = ("background", "colour", "direction", "continues")


def continuation(frames_THWC: np.ndarray, given_T: np.ndarray, caption: str, *, hold: bool = False) -> dict:
    """uint8 [T, H, W, 3] with bool [T] given frames -> {"background", "colour", "direction",
    "continues": bool or None (None: not measurable), "jump": float or None, "anchor", "first"}."""
    want = parse_caption(caption)
    given_T = np.asarray(given_T, bool)
    gen = np.flatnonzero(~given_T)
    out = dict.fromkeys(MEASURES) | {"jump": None}
    if not want or want.get("kind") == "photo" or not given_T.any() or not gen.size:
        return out
    # the anchor: the given frame just before the first generated one, or, when generated
    # frames open the clip (backward extension), the first given frame, just after them
    if gen[0] > 0:
        anchor, first = int(gen[0]) - 1, int(gen[0])
    else:
        anchor = int(np.flatnonzero(given_T)[0])
        first = anchor - 1
    out |= {"anchor": anchor, "first": first}
    given_read = read_attributes(frames_THWC[given_T])
    gen_read = read_attributes(frames_THWC[gen])
    for key in ("background", "colour"):
        out[key] = given_read[key] is not None and gen_read[key] == given_read[key]
    if "direction" in want:
        span = sorted({anchor, *gen.tolist()})
        out["direction"] = read_attributes(frames_THWC[span])["direction"] == want["direction"]
        anchor_time = 0 if hold else anchor
        out["jump"] = _jump(frames_THWC, anchor, anchor_time, first, want)
        out["continues"] = out["jump"] is not None and out["jump"] < JUMP_OK
    return out


def _jump(frames_THWC: np.ndarray, anchor: int, anchor_time: int, first: int, want: dict) -> float | None:
    _, h, w, _ = frames_THWC.shape
    x = frames_THWC.astype(np.float32)
    bg = np.median(x[anchor].reshape(-1, 3), axis=0)
    masks = np.linalg.norm(x[[anchor, first]] - bg, axis=-1) > 60
    if not masks[0].any() or not masks[1].any():
        return None
    dy, dx = DIRECTIONS[want["direction"]]
    step = SPEEDS[want["speed"]] * (h if dy else w) * (first - anchor_time)  # pixels moved in between
    (ay, ax), (fy, fx) = _centroid(masks[0]), _centroid(masks[1])
    ey, ex = _wrap(fy - ay - dy * step, h), _wrap(fx - ax - dx * step, w)
    return float(np.hypot(ey / h, ex / w))


def _centroid(mask_HW: np.ndarray) -> tuple[float, float]:
    """Circular centroid (rows, columns): objects wrap around the edges (synth rolls them)."""
    h, w = mask_HW.shape
    ang_y = np.angle(np.exp(2j * np.pi * np.arange(h) / h) @ mask_HW.sum(1))
    ang_x = np.angle(np.exp(2j * np.pi * np.arange(w) / w) @ mask_HW.sum(0))
    return float(ang_y * h / (2 * np.pi)), float(ang_x * w / (2 * np.pi))


def _wrap(d: float, n: int) -> float:
    return (d + n / 2) % n - n / 2


def summarise_continuation(results: Iterable[tuple[str, dict]]) -> dict:
    """(group, continuation result) pairs -> per group: items, per measure correct/total/rate, median jump."""
    groups: dict[str, dict] = {}
    for group, res in results:
        g = groups.setdefault(group, {"items": 0, "jumps": [], **{m: [0, 0] for m in MEASURES}})
        g["items"] += 1
        for m in MEASURES:
            if res.get(m) is not None:
                g[m][0] += int(res[m])
                g[m][1] += 1
        if res.get("jump") is not None:
            g["jumps"].append(res["jump"])
    out = {}
    for name, g in groups.items():
        out[name] = {"items": g["items"], "median_jump": float(np.median(g["jumps"])) if g["jumps"] else None}
        for m in MEASURES:
            c, t = g[m]
            out[name][m] = {"correct": c, "total": t, "rate": c / t if t else None}
    return out
