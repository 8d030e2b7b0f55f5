"""Prompting with images and videos: a request's given frames, in pixels, for each mode.

    image-to-video   image(run, req, first)                  frame 0 is the image
    extend forward   extend(run, req, clip, n)               the clip, then n new frames
    extend backward  extend(run, req, clip, n, backward=True) n new frames, then the clip
    connect          connect(run, req, a, b)                  a's last frames ... b's first frames
    SDEdit           edit(run, req, clip, strength)           the clip, re-noised to t = strength

Each returns the request with its `Given` (uint8 frames on the request's grid, which of
them are given, the SDEdit strength); `sample` (generate.py) turns it into the DiT's units.

Frames map to tokens by whole temporal patches (model/conditioning.py): a patch is given
when every output frame behind it is. With pixels and pt > 1, a given image fills its
patch (frame 0 held for pt frames, as an image is patchified); with the causal VAE,
latent frame 0 is pixel frame 0 alone and latent frame j >= 1 the ft frames
1 + (j-1) ft ... j ft. A clip that does not end on a patch boundary is trimmed at its far
end (the end away from the new frames) to the longest run that does.

Sizes: a condition is resized to the request's height x width keeping its aspect, as
the packer does: scaled to cover the request, then centre-cropped by less than one patch
per side (upscaling allowed). A condition whose aspect needs more cropping than that, or
that leaves nothing to generate, is a ValueError with one line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Given", "connect", "edit", "extend", "fit_frames", "image", "load_frames", "media_size", "patch_frames",
           "with_condition"]


@dataclass
class Given:
    """Pixel frames one request is prompted with."""

    frames: np.ndarray  # uint8 [T, H, W, 3] on the request's grid; frames not given are ignored (zeros)
    given: np.ndarray  # bool [T]: frames kept as given
    strength: float | None = None  # SDEdit: start from `frames` noised to t = strength (all frames read)
    mode: str = ""  # "image", "extend", "extend backward", "connect", "edit": for manifests and galleries

    def summary(self) -> dict:
        return {"mode": self.mode, "given": np.flatnonzero(self.given).tolist(), "strength": self.strength}


# --------------------------------------------------------------------------- frames and sizes


def load_frames(path: str, *, fps: float) -> np.ndarray:
    """uint8 [T, H, W, 3] from an image (png/jpg: T = 1) or a video resampled to `fps`;
    ValueError when the file is missing or unreadable."""
    from patchpack.train.data.media_decode import decode_image, decode_video

    data, is_image = _read_media(path)
    big = 1 << 40
    if is_image:
        return decode_image(data, max_pixels=big).frames_THWC
    return decode_video(data, fps=fps, max_seconds=None, max_frames=None, max_pixels=big,
                        max_source_frames=big).frames_THWC


def media_size(run, path: str) -> tuple[int, int]:
    """The output (height, width) in pixels for a prompt given without a size: the media's own
    aspect (within one patch per side), no larger than the media, nor than the largest frame the
    run trained on (its patch grid per frame). Read from the file's headers: nothing is decoded.
    ValueError when the file is missing or unreadable."""
    from patchpack.train.data.media_decode import probe_image, probe_video

    data, is_image = _read_media(path)
    info = (probe_image if is_image else probe_video)(data)
    ph, pw = _pixel_patch(run)
    _, gh, gw = run.model.config.rope_train_grid
    H, W = info.height, info.width
    # Both sides floored to whole patches at one scale s <= 1, which is what fit_frames accepts
    # (covering the result crops less than a patch). The scales worth trying are those where one
    # side lands exactly on a patch count; keep the most patches within the trained frame.
    best = None
    for s in [k * ph / H for k in range(1, H // ph + 1)] + [k * pw / W for k in range(1, W // pw + 1)]:
        a, b = int(s * H + 1e-9) // ph, int(s * W + 1e-9) // pw
        if a >= 1 and b >= 1 and a * b <= gh * gw and (best is None or a * b > best[0] * best[1]):
            best = (a, b)
    if best is None:
        raise ValueError(f"{path} is {H}x{W} px: it does not hold one {ph}x{pw} px patch of this run at its aspect "
                         f"within the trained frame; give --size")
    return best[0] * ph, best[1] * pw


def _read_media(path: str) -> tuple[bytes, bool]:
    """A prompt's media file: (its bytes, whether it is an image by its extension); ValueError when missing."""
    from pathlib import Path

    from patchpack.train.data.media_decode import IMAGE_EXTS

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"not found: {p}")
    return p.read_bytes(), p.suffix.lower().lstrip(".") in IMAGE_EXTS


def fit_frames(frames_THWC: np.ndarray, height: int, width: int, *, patch_hw: tuple[int, int],
               what: str = "condition") -> np.ndarray:
    """Resize uint8 frames to height x width keeping their aspect: scale to cover, centre-crop
    less than one patch per side. Unchanged (bitwise) when already that size."""
    t, h, w, _ = frames_THWC.shape
    if (h, w) == (height, width):
        return frames_THWC
    s = max(height / h, width / w)
    sh, sw = max(height, round(h * s)), max(width, round(w * s))
    ph, pw = patch_hw
    if sh - height >= ph or sw - width >= pw:
        want_w = max(pw, round(height * w / h / pw) * pw)
        raise ValueError(f"{what} is {h}x{w}: it cannot fill {height}x{width} keeping its aspect (crop of "
                         f"{sh - height}x{sw - width} px >= one {ph}x{pw} patch); ask for e.g. --size {height}x{want_w}")
    x = torch.from_numpy(np.ascontiguousarray(frames_THWC)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=sh < h or sw < w, align_corners=False)
    top, left = (sh - height) // 2, (sw - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def patch_frames(run, frames: int) -> list[range]:
    """The output frames behind each of the DiT's temporal patches, for a `frames`-long request
    of `run` (a LoadedRun); ValueError when `frames` is not a length the run can make."""
    pt = run.patch[0]
    if run.vae is None:
        dit = [range(f, f + 1) for f in range(frames)]
    else:
        ft = run.vae.config.temporal
        if frames < 1 or (frames - 1) % ft:
            raise ValueError(f"T={frames} frames: the causal VAE needs T = 1 + k*{ft}")
        dit = [range(0, 1)] + [range(1 + (j - 1) * ft, 1 + j * ft) for j in range(1, 1 + (frames - 1) // ft)]
    if len(dit) == 1:
        return dit
    if len(dit) % pt:
        raise ValueError(f"T={frames} frames: {len(dit)} DiT frames are not a multiple of the temporal patch {pt}")
    return [range(dit[p * pt].start, dit[p * pt + pt - 1].stop) for p in range(len(dit) // pt)]


def patch_frames_or_none(run, frames: int) -> list[range] | None:
    """patch_frames, or None when `frames` is not a length the run can make."""
    try:
        return patch_frames(run, frames)
    except ValueError:
        return None


def _boundaries(run, frames: int) -> set[int] | None:
    """Frame indices where a temporal patch starts (and `frames`), or None if `frames` is not makeable."""
    patches = patch_frames_or_none(run, frames)
    return None if patches is None else {r.start for r in patches} | {frames}


def _pixel_patch(run) -> tuple[int, int]:
    """A token's height and width in output pixels."""
    ph, pw = run.patch[1:]
    if run.vae is not None:
        ph, pw = ph * run.vae.config.spatial, pw * run.vae.config.spatial
    return ph, pw


def _fit(run, req, frames_THWC: np.ndarray, what: str) -> np.ndarray:
    return fit_frames(frames_THWC, req.height, req.width, patch_hw=_pixel_patch(run), what=what)


# --------------------------------------------------------------------------- the modes


def image(run, req, first: np.ndarray):
    """Image-to-video: `first` (uint8 [1, H, W, 3] or [H, W, 3]) is frame 0, held across its temporal patch."""
    first = first[None] if first.ndim == 3 else first[:1]
    patches = patch_frames(run, req.frames)
    if len(patches) < 2:
        raise ValueError(f"--frames {req.frames}: one temporal patch; the image would be the whole output "
                         f"(ask for more frames)")
    frames = np.zeros((req.frames, req.height, req.width, 3), np.uint8)
    held = patches[0]
    frames[held] = _fit(run, req, first, "the image")[0]
    given = np.zeros(req.frames, bool)
    given[held] = True
    return replace(req, condition=Given(frames, given, mode="image"))


def extend(run, req, clip: np.ndarray, n: int, *, backward: bool = False):
    """The clip followed (backward: preceded) by n new frames. req.frames, if above n, caps the
    output length (the clip is trimmed at its far end to fit); otherwise the whole clip is kept."""
    if n < 1:
        raise ValueError(f"--extend {n}: must be >= 1 frame")
    c = len(clip) if req.frames <= n else min(len(clip), req.frames - n)
    keep = _extension_keep(run, c, n, backward)
    if keep is None:
        near = [m for m in range(max(1, n - 16), n + 17) if m != n and _extension_keep(run, c, m, backward)]
        why = f"patch {run.patch[0]}" + (f", the VAE makes 1 + {run.vae.config.temporal}k frames" if run.vae else "")
        hint = f"; the nearest that do: --extend {min(near, key=lambda m: (abs(m - n), m))}" if near else ""
        raise ValueError(f"a clip of {len(clip)} frames plus {n} new ones cannot fit whole temporal patches "
                         f"({why}){hint}")
    total = keep + n
    part = clip[:keep] if backward else clip[len(clip) - keep:]  # the frames next to the new ones
    frames = np.zeros((total, req.height, req.width, 3), np.uint8)
    given = np.zeros(total, bool)
    span = slice(n, total) if backward else slice(0, keep)
    frames[span] = _fit(run, req, part, "the video")
    given[span] = True
    mode = "extend backward" if backward else "extend"
    return replace(req, frames=total, condition=Given(frames, given, mode=mode))


def _extension_keep(run, c: int, n: int, backward: bool) -> int | None:
    """How many of the clip's (at most c) frames an extension by n keeps, or None when none fits:
    the given run and the new frames must meet on a temporal-patch boundary."""
    for keep in range(c, 0, -1):
        starts = _boundaries(run, keep + n)
        edge = n if backward else keep  # where the given run meets the generated frames
        if starts is not None and edge in starts and len(starts) > 2:
            return keep
    return None


def connect(run, req, a: np.ndarray, b: np.ndarray):
    """req.frames frames: a's last frames lead into b's first frames, a quarter of the temporal
    patches each (at least one), the transition generated between."""
    patches = patch_frames(run, req.frames)
    if len(patches) < 3:
        raise ValueError(f"--frames {req.frames}: {len(patches)} temporal patches; connecting needs 3 or more")
    k = max(1, len(patches) // 4)
    head, tail = patches[k - 1].stop, patches[len(patches) - k].start  # a fills [0, head), b [tail, T)
    if len(a) < head or len(b) < req.frames - tail:
        raise ValueError(f"connect: needs {head} frames of the first clip and {req.frames - tail} of the second, "
                         f"got {len(a)} and {len(b)}")
    frames = np.zeros((req.frames, req.height, req.width, 3), np.uint8)
    frames[:head] = _fit(run, req, a[len(a) - head:], "the first video")
    frames[tail:] = _fit(run, req, b[: req.frames - tail], "the second video")
    given = np.zeros(req.frames, bool)
    given[:head] = given[tail:] = True
    return replace(req, condition=Given(frames, given, mode="connect"))


def edit(run, req, clip: np.ndarray, strength: float):
    """SDEdit: the clip (its first req.frames frames, fewer if the run cannot make that length)
    noised to t = strength and denoised under the prompt; 0 returns it, 1 ignores it."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"--strength {strength}: must be in [0, 1]")
    for total in range(min(len(clip), req.frames), 0, -1):
        if _boundaries(run, total) is not None:
            break
    frames = _fit(run, req, clip[:total], "the video")
    return replace(req, frames=total, condition=Given(frames, np.zeros(total, bool), strength, mode="edit"))


# --------------------------------------------------------------------------- the command line's modes


def with_condition(run, reqs: list, *, image_path: str | None = None, video_path: str | None = None,
                   extend_by: int | None = None, backward: bool = False, connect_paths: list[str] | None = None,
                   edit_path: str | None = None, strength: float | None = None, frames_given: bool = True) -> list:
    """`patchpack generate`'s prompting flags applied to every request (at most one mode).

    frames_given: False when --frames was not given: an extension then keeps the whole clip
    and an edit covers the whole clip.
    """
    modes = {"--image": image_path, "--video": video_path, "--connect": connect_paths, "--edit": edit_path}
    chosen = [k for k, v in modes.items() if v]
    if len(chosen) > 1:
        raise ValueError(f"give one of --image, --video, --connect, --edit; got {' and '.join(chosen)}")
    if (video_path is None) != (extend_by is None):
        raise ValueError("--video and --extend N go together (N new frames after the clip; --backward: before)")
    if backward and extend_by is None:
        raise ValueError("--backward needs --video CLIP --extend N")
    if (edit_path is None) != (strength is None):
        raise ValueError("--edit CLIP and --strength S go together (S in [0, 1]: 0 returns the clip, 1 ignores it)")
    if not chosen:
        return reqs
    if image_path:
        first = load_frames(image_path, fps=run.fps)
        return [image(run, r, first[:1]) for r in reqs]
    if video_path:
        clip = load_frames(video_path, fps=run.fps)
        return [extend(run, r if frames_given else replace(r, frames=0), clip, extend_by, backward=backward)
                for r in reqs]
    if connect_paths:
        if len(connect_paths) != 2:
            raise ValueError(f"--connect takes two videos, got {len(connect_paths)}")
        a, b = (load_frames(p, fps=run.fps) for p in connect_paths)
        return [connect(run, r, a, b) for r in reqs]
    clip = load_frames(edit_path, fps=run.fps)
    return [edit(run, r if frames_given else replace(r, frames=len(clip)), clip, strength) for r in reqs]
